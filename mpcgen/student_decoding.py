"""Plaintext greedy decoding of mpcgen students, with the decoding each will use privately.

* Token re-embedding (every student without ER): the argmax token of each step is looked up in the token table and
  fed back, with the K/V cache, as the vanilla private decoding does with a one-hot product.
* ER rollout (students with ``config.embedding_resend``): the next input is ``model.resend_embedding(h, pos)`` of
  the last final hidden state ``h``; tokens are only read off the logits (by the client, under MPC). The rollout
  never feeds a token back, so what it measures is what private generation produces.

Decoder-only students continue ``encode_prompt`` ids, as in training. Encoder-decoder students encode the source
once (``S </s>``) and decode from ``decoder_start_token_id``; both feeds above apply to the decoder side, and the
cross-attention K/V are cached at the first step, as in :mod:`mpcgen.generation.loop` (the loop private generation
runs; this one stops once every row has produced eos, and returns the states). Batches hold prompts of one length
only: constant attention and learned positions are absolute, so padding would shift what a row attends to.
Decoding is greedy (private generation takes argmaxes); beam search and n-gram blocking are refused.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import check_fits
from mpcgen.tokenization import TRUNCATIONS, decode_output, encode_prompt

logger = logging.getLogger(__name__)

__all__ = ["decoder_forward", "generate_student_texts", "greedy_student"]


def decoder_forward(model: nn.Module, *, input_ids: torch.Tensor | None = None, inputs_embeds: Any = None,
                    mask: torch.Tensor | None = None, source: Any = None, source_mask: torch.Tensor | None = None,
                    past: Any = None, use_cache: bool = False, return_hidden: bool = False) -> Any:
    """The decoder side of a student on token ids or token embeddings (positions are added here).

    A decoder-only student runs whole; an encoder-decoder runs its decoder on the encoder states ``source``
    (B, S, d) with their padding mask ``source_mask`` (B, S). ``mask`` (B, past + T) marks real decoder positions.
    Returns the model's :class:`~mpcgen.models.ModelOutput`.
    """
    if model.config.arch == "decoder":
        return model(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=mask, past=past,
                     use_cache=use_cache, return_hidden=return_hidden)
    return model(encoder_hidden=source, attention_mask=source_mask, decoder_input_ids=input_ids,
                 decoder_inputs_embeds=inputs_embeds, decoder_attention_mask=mask, past=past, use_cache=use_cache,
                 return_hidden=return_hidden)


@torch.no_grad()
def greedy_student(model: nn.Module, input_ids: torch.Tensor, *, max_new_tokens: int, eos_token_id: int | None,
                   resend: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of equal-length prompts ``input_ids`` (B, L) with a student.

    Args:
        model: a :class:`mpcgen.models.DecoderLM` (``input_ids``: the prompts) or
            :class:`mpcgen.models.EncoderDecoderLM` (``input_ids``: the encoder inputs).
        input_ids: the prompts, one length (no padding).
        max_new_tokens: steps to run (fewer when every row has produced ``eos_token_id``).
        eos_token_id: stops a row (later tokens of a finished row are still computed, then cut by the caller).
        resend: ER rollout (True) or token re-embedding (False); default ``model.config.embedding_resend``.

    Returns:
        ``(tokens (B, N), hidden (B, N, d))``: the generated ids and the final hidden state each was read from.
    """
    config = model.config
    resend = config.embedding_resend if resend is None else resend
    b, length = input_ids.shape
    check_fits(config, length, max_new_tokens)
    model.eval()
    source, first = None, input_ids
    if config.arch == "encoder-decoder":
        if config.decoder_start_token_id is None:
            raise MpcgenError("the encoder-decoder student's config has no decoder_start_token_id; cannot decode")
        source = model.encode(input_ids=input_ids)  # (B, S, d), once
        first = torch.full((b, 1), config.decoder_start_token_id, dtype=torch.long)
    out = decoder_forward(model, input_ids=first, source=source, use_cache=True)
    cache, h = out.past, out.hidden[:, -1:]  # (B, 1, d)
    tokens, states = [out.logits[:, -1].argmax(-1)], [h]
    done = tokens[0] == eos_token_id if eos_token_id is not None else torch.zeros(b, dtype=torch.bool)
    for _ in range(1, max_new_tokens):
        if bool(done.all()):
            break
        # ER: the resent state in the next slot (= model.resend_embedding(h, cache.length), what private ER feeds);
        # else the argmax token's row of the token table.
        feed = {"inputs_embeds": model.resend_token(h)} if resend else {"input_ids": tokens[-1][:, None]}
        out = decoder_forward(model, source=source, past=cache, use_cache=True, **feed)
        cache, h = out.past, out.hidden[:, -1:]
        tokens.append(out.logits[:, -1].argmax(-1))
        states.append(h)
        if eos_token_id is not None:
            done = done | (tokens[-1] == eos_token_id)
    return torch.stack(tokens, dim=1), torch.cat(states, dim=1)


def generate_student_texts(model: nn.Module, tokenizer: Any, sources: Sequence[str], *, max_new_tokens: int = 64,
                           batch_size: int = 32, num_beams: int = 1, no_repeat_ngram_size: int = 0,
                           length_penalty: float = 1.0, progress: bool = True, resend: bool | None = None
                           ) -> list[str]:
    """One greedy text per source (see the module docstring); the signature mirrors
    :func:`mpcgen.decoding.generate_texts` so ``nlg.evaluate`` passes the same settings (``length_penalty`` only
    matters for beam search and is ignored)."""
    if num_beams != 1:
        raise MpcgenError("students decode greedily (as private generation does): use --num-beams 1")
    if no_repeat_ngram_size:
        raise MpcgenError("n-gram blocking is not part of private generation: use --no-repeat-ngram-size 0")
    if max_new_tokens < 1 or batch_size < 1:
        raise MpcgenError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    # Prompts too long for the positions left have their source truncated, as mpcgen.decoding does for teachers.
    # Encoder-decoders generate on the decoder side: the encoder has all its positions.
    encoder_decoder = model.config.arch == "encoder-decoder"
    room = model.config.n_positions - (0 if encoder_decoder else max_new_tokens)
    if room < 3:
        raise MpcgenError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's "
                          f"{model.config.n_positions} positions; lower --max-new-tokens")
    before = TRUNCATIONS["prompt"]
    prompts = [encode_prompt(tokenizer, s, is_encoder_decoder=encoder_decoder, max_length=room) for s in sources]
    if TRUNCATIONS["prompt"] > before:
        logger.warning("%d of %d prompts truncated to %d tokens (the model has %d positions)",
                       TRUNCATIONS["prompt"] - before, len(sources), room, model.config.n_positions)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        by_length[len(p)].append(i)
    batches = [idx[k:k + batch_size] for _, idx in sorted(by_length.items()) for k in range(0, len(idx), batch_size)]
    texts = [""] * len(prompts)
    for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress):
        ids = torch.tensor([prompts[i] for i in batch], dtype=torch.long)
        tokens, _ = greedy_student(model, ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id,
                                   resend=resend)
        for row, index in enumerate(batch):
            texts[index] = decode_output(tokenizer, tokens[row].tolist())
    return texts
