"""Encoder-decoder language model (T5, BART): a shared token table, an encoder :class:`Stack`, a causal decoder
:class:`Stack` with cross-attention, and a (tied) LM head.

Constant attention here: encoder self-attention uses ``A`` over all (unpadded) source positions with no causal mask;
cross-attention uses ``A[t, s]`` (rows: target positions, columns: source positions) with the source padding mask;
both follow the same masked-no-renormalising rule as decoder self-attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.models.config import ModelConfig
from mpcgen.models.decoder import ModelOutput, Stack, freeze_constant_attention, padding_mask, resend_norm_module, \
    resolve_start, token_input
from mpcgen.models.io import PretrainedMixin
from mpcgen.models.layers import Embedding, KVCache, LMHead

Tensor = Any  # torch.Tensor or MPCTensor


class EncoderDecoderLM(PretrainedMixin, nn.Module):
    """T5/BART-style sequence-to-sequence LM; ``config.n_encoder_layer`` encoder and ``config.n_layer`` decoder
    layers."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.arch != "encoder-decoder":
            raise MpcgenError(f"EncoderDecoderLM needs arch='encoder-decoder', got {config.arch!r}")
        self.config = config
        d = config.n_embd
        self.shared = Embedding(config.vocab_size, d)
        self.embed_scale = d ** 0.5 if config.scale_embedding else 1.0
        self.encoder = Stack(config, [config.attention] * config.n_encoder_layer, causal=False, cross=False)
        kinds = [config.layer_attention(i) for i in range(config.n_layer)]
        self.decoder = Stack(config, kinds, causal=True, cross=True)
        self.resend_norm = resend_norm_module(config)
        self.lm_head = LMHead(d, config.vocab_size, self.shared if config.tie_word_embeddings else None,
                              bias=config.final_logits_bias,
                              input_scale=d ** -0.5 if config.scale_decoder_outputs else 1.0)

    def encode(self, input_ids: torch.Tensor | None = None, *, one_hot: Tensor | None = None,
               inputs_embeds: Tensor | None = None, attention_mask: torch.Tensor | None = None) -> Tensor:
        """Source tokens (ids or one-hot rows; ``attention_mask`` B x S, 1 = real) -> encoder states (B, S, d)."""
        tok = token_input(self.shared, self.embed_scale, input_ids, one_hot, inputs_embeds)
        x = self.encoder.prepare(tok, 0)
        hidden, _, _ = self.encoder(x, attention_mask=attention_mask)
        return hidden

    def embed(self, input_ids: torch.Tensor | None = None, *, one_hot: Tensor | None = None,
              inputs_embeds: Tensor | None = None, start_pos: int = 0) -> Tensor:
        """Decoder block-0 input for target positions ``start_pos ..``."""
        tok = token_input(self.shared, self.embed_scale, input_ids, one_hot, inputs_embeds)
        return self.decoder.prepare(tok, start_pos)

    def resend_token(self, hidden_last: Tensor) -> Tensor:
        """The token part of a resent input: the final decoder state (B, T, d) after ``config.resend_norm``."""
        return hidden_last if self.resend_norm is None else self.resend_norm(hidden_last)

    def resend_embedding(self, hidden_last: Tensor, pos: int) -> Tensor:
        """Embedding Resending: the previous final decoder state (B, 1, d) (after ``config.resend_norm``) as the token
        embedding of slot ``pos`` (+ its position row for BART, then BART's embedding norm; T5 has no absolute
        positions)."""
        return self.decoder.prepare(self.resend_token(hidden_last), pos)

    def forward(self, input_ids: torch.Tensor | None = None, *, attention_mask: torch.Tensor | None = None,
                one_hot: Tensor | None = None, inputs_embeds: Tensor | None = None,
                encoder_hidden: Tensor | None = None, decoder_input_ids: torch.Tensor | None = None,
                decoder_one_hot: Tensor | None = None, decoder_inputs_embeds: Tensor | None = None,
                decoder_attention_mask: torch.Tensor | None = None, past: KVCache | None = None,
                start_pos: int = 0, use_cache: bool | None = None, return_hidden: bool = False) -> ModelOutput:
        """Decoder logits (B, T, vocab) for target positions ``start_pos ..``.

        The source is given once as ids / one-hot / embeddings, or as ready ``encoder_hidden`` (reuse it across
        steps; with a cache the cross-attention K/V are computed at the first step only). ``attention_mask`` masks
        padded source positions (public).
        """
        if encoder_hidden is None:
            encoder_hidden = self.encode(input_ids, one_hot=one_hot, inputs_embeds=inputs_embeds,
                                         attention_mask=attention_mask)
        elif any(v is not None for v in (input_ids, one_hot, inputs_embeds)):
            raise MpcgenError("pass the source either as tokens or as encoder_hidden, not both")
        start = resolve_start(past, start_pos)
        x = self.embed(decoder_input_ids, one_hot=decoder_one_hot, inputs_embeds=decoder_inputs_embeds,
                       start_pos=start)
        use_cache = self.config.kv_cache if use_cache is None else use_cache
        hidden, states, cache = self.decoder(x, attention_mask=decoder_attention_mask, source=encoder_hidden,
                                             source_mask=padding_mask(attention_mask), past=past, start=start,
                                             use_cache=use_cache, return_hidden=return_hidden)
        return ModelOutput(logits=self.lm_head(hidden), hidden=hidden, hidden_states=states, past=cache,
                           encoder_hidden=encoder_hidden)

    def freeze_constant_attention(self) -> None:
        """Store ``A = softmax(M)`` instead of ``M`` everywhere (the inference form)."""
        freeze_constant_attention(self)
