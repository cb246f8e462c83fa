"""Decoder-only language model (GPT-2 family), and the layer stack the encoder-decoder reuses.

Generation lives elsewhere; this module gives it what it needs: :meth:`DecoderLM.embed` (ids, public or secret
one-hot rows), :meth:`DecoderLM.resend_embedding` (Embedding Resending), a :class:`KVCache` that works on both
backends, and ``model.lm_head(hidden)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.config import ModelConfig
from mpcgen.models.io import PretrainedMixin
from mpcgen.models.layers import AttentionCore, Block, Embedding, KVCache, LMHead, Norm, PositionEmbedding, \
    RelativeBias

Tensor = Any  # torch.Tensor or MPCTensor


@dataclass
class ModelOutput:
    """What a forward returns.

    ``hidden`` is the final hidden state after the final norm (what ER resends); ``hidden_states`` (if asked) holds
    the input of every block followed by the last block's output (before the final norm); ``past`` is the updated
    cache (None when caching is off); ``encoder_hidden`` is set by encoder-decoders.
    """

    logits: Tensor
    hidden: Tensor
    hidden_states: list[Tensor] | None = None
    past: KVCache | None = None
    encoder_hidden: Tensor | None = None


def causal_mask(start: int, q_len: int) -> torch.Tensor:
    """Public 0/1 mask (1, 1, T, S): query ``start + t`` sees keys ``0 .. start + t``."""
    rows = torch.arange(start, start + q_len)[:, None]
    cols = torch.arange(start + q_len)[None, :]
    return (cols <= rows).float().view(1, 1, q_len, start + q_len)  # (1, 1, T, S)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) 0/1 key mask -> (B, 1, 1, S) float, or None."""
    if attention_mask is None:
        return None
    return attention_mask.float().view(attention_mask.size(0), 1, 1, attention_mask.size(1))  # (B, 1, 1, S)


class Stack(nn.Module):
    """Positions (+ embedding norm) -> blocks -> final norm. The token table is owned by the enclosing model."""

    def __init__(self, config: ModelConfig, kinds: list[str], *, causal: bool, cross: bool) -> None:
        super().__init__()
        self.config, self.causal = config, causal
        d, eps = config.n_embd, config.norm_eps
        relative = config.relative_attention_num_buckets > 0
        self.wpe = None if relative else PositionEmbedding(config.n_positions, d, config.position_offset)
        self.emb_norm = Norm(config.norm, d, eps) if config.layernorm_embedding else None
        # T5: one bias table in the first layer's position, shared by every layer of the stack.
        self.rel_bias = RelativeBias(config.relative_attention_num_buckets, config.relative_attention_max_distance,
                                     config.n_head, bidirectional=not causal) if relative else None
        self.blocks = nn.ModuleList(Block(config, kind, cross=cross) for kind in kinds)
        self.final_norm = Norm(config.norm, d, eps) if config.final_norm else None

    def check_length(self, start: int, length: int) -> None:
        if start + length > self.config.n_positions:
            raise MpcgenError(f"sequence reaches position {start + length} but n_positions="
                              f"{self.config.n_positions}; shorten the input (or max new tokens)")

    def prepare(self, tok: Tensor, start: int) -> Tensor:
        """Token embeddings (B, T, d) -> block-0 input: + positions (public rows), then the embedding norm."""
        self.check_length(start, tok.size(1))
        x = tok
        if self.wpe is not None:
            x = x + self.wpe(start, tok.size(1))
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return x

    def forward(self, x: Tensor, *, attention_mask: torch.Tensor | None = None, source: Tensor | None = None,
                source_mask: torch.Tensor | None = None, past: KVCache | None = None, start: int = 0,
                use_cache: bool = False, return_hidden: bool = False
                ) -> tuple[Tensor, list[Tensor] | None, KVCache | None]:
        """Block-0 input (B, T, d) -> (final hidden, per-block hidden states or None, cache or None)."""
        t = x.size(1)
        mask = causal_mask(start, t) if self.causal else None
        pad = padding_mask(attention_mask)
        if pad is not None:
            if pad.size(-1) != start + t:
                raise MpcgenError(f"attention_mask covers {pad.size(-1)} positions; it must cover past + current "
                                  f"= {start + t}")
            mask = pad if mask is None else mask * pad  # (B, 1, T, S)
        bias = self.rel_bias(start, t, start + t) if self.rel_bias is not None else None  # (1, nh, T, S)
        cache = past if past is not None else (KVCache(len(self.blocks)) if use_cache else None)
        hidden_states = [x] if return_hidden else None
        for i, block in enumerate(self.blocks):
            x, kv, cross_kv = block(x, mask, bias=bias, source=source, source_mask=source_mask,
                                    cache=cache.self_kv[i] if cache is not None else None,
                                    cross_cache=cache.cross_kv[i] if cache is not None else None, start=start)
            if cache is not None:
                cache.self_kv[i], cache.cross_kv[i] = kv, cross_kv
            if hidden_states is not None:
                hidden_states.append(x)
        if cache is not None:
            cache.length = start + t
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x, hidden_states, cache


def token_input(embedding: Embedding, scale: float, input_ids: torch.Tensor | None, one_hot: Tensor | None,
                inputs_embeds: Tensor | None) -> Tensor:
    """Token embeddings (B, T, d) from exactly one of: ids, one-hot rows (B, T, vocab), or ready embeddings."""
    given = [name for name, v in (("input_ids", input_ids), ("one_hot", one_hot), ("inputs_embeds", inputs_embeds))
             if v is not None]
    if len(given) != 1:
        raise MpcgenError(f"pass exactly one of input_ids, one_hot, inputs_embeds (got {given or 'none'})")
    if inputs_embeds is not None:
        return inputs_embeds
    tok = embedding(input_ids if input_ids is not None else one_hot)  # (B, T, d)
    return tok * scale if scale != 1.0 else tok


def resolve_start(past: KVCache | None, start_pos: int) -> int:
    """The first position of this call: the cache length when a cache is given."""
    if past is None:
        if start_pos:
            raise MpcgenError(f"start_pos={start_pos} needs past: the cache holding positions 0..{start_pos - 1}")
        return 0
    if start_pos not in (0, past.length):
        raise MpcgenError(f"start_pos={start_pos} disagrees with the cache, which holds {past.length} positions")
    return past.length


def resend_norm_module(config: ModelConfig) -> Norm | None:
    """The norm ER applies to a resent state (None for ``resend_norm="none"``)."""
    return None if config.resend_norm == "none" else Norm(config.resend_norm, config.n_embd, config.norm_eps)


def freeze_constant_attention(model: nn.Module) -> None:
    """Store ``A = softmax(M)`` instead of ``M`` in every constant attention (the inference form); idempotent."""
    for module in model.modules():
        if isinstance(module, AttentionCore):
            module.freeze()
    model.config.constant_frozen = True


class DecoderLM(PretrainedMixin, nn.Module):
    """GPT-2-style decoder-only LM: token table -> :class:`Stack` (causal) -> LM head (tied by default)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "decoder":
            raise MpcgenError(f"DecoderLM needs arch='decoder', got {config.arch!r}")
        self.config = config
        d = config.n_embd
        self.wte = Embedding(config.vocab_size, d)
        self.embed_scale = d ** 0.5 if config.scale_embedding else 1.0
        kinds = [config.layer_attention(i) for i in range(config.n_layer)]
        self.stack = Stack(config, kinds, causal=True, cross=False)
        self.resend_norm = resend_norm_module(config)
        self.lm_head = LMHead(d, config.vocab_size, self.wte if config.tie_word_embeddings else None,
                              bias=config.final_logits_bias,
                              input_scale=d ** -0.5 if config.scale_decoder_outputs else 1.0)

    def embed(self, input_ids: torch.Tensor | None = None, *, one_hot: Tensor | None = None,
              inputs_embeds: Tensor | None = None, start_pos: int = 0) -> Tensor:
        """Block-0 input for positions ``start_pos ..``: token rows (ids or one-hot) + position rows."""
        tok = token_input(self.wte, self.embed_scale, input_ids, one_hot, inputs_embeds)
        return self.stack.prepare(tok, start_pos)

    def resend_token(self, hidden_last: Tensor) -> Tensor:
        """The token part of a resent input: the final hidden state (B, T, d) after ``config.resend_norm``."""
        return hidden_last if self.resend_norm is None else self.resend_norm(hidden_last)

    def resend_embedding(self, hidden_last: Tensor, pos: int) -> Tensor:
        """Embedding Resending: the previous position's final hidden state (B, 1, d) (after ``config.resend_norm``)
        + position ``pos``'s row.

        Equivalent to ``forward(inputs_embeds=resend_token(hidden_last), start_pos=pos)`` for the embedding part.
        """
        return self.stack.prepare(self.resend_token(hidden_last), pos)

    def forward(self, input_ids: torch.Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                one_hot: Tensor | None = None, attention_mask: torch.Tensor | None = None,
                past: KVCache | None = None, start_pos: int = 0, use_cache: bool | None = None,
                return_hidden: bool = False) -> ModelOutput:
        """Logits (B, T, vocab) for positions ``start_pos ..`` (the cache length when ``past`` is given).

        ``attention_mask`` (public, B x (past + T), 1 = real token) masks padded keys. ``use_cache`` defaults to
        ``config.kv_cache``.
        """
        start = resolve_start(past, start_pos)
        x = self.embed(input_ids, one_hot=one_hot, inputs_embeds=inputs_embeds, start_pos=start)
        use_cache = self.config.kv_cache if use_cache is None else use_cache
        hidden, states, cache = self.stack(x, attention_mask=attention_mask, past=past, start=start,
                                           use_cache=use_cache, return_hidden=return_hidden)
        return ModelOutput(logits=self.lm_head(hidden), hidden=hidden, hidden_states=states, past=cache)

    def freeze_constant_attention(self) -> None:
        """See :func:`freeze_constant_attention`."""
        freeze_constant_attention(self)
