"""Plaintext greedy decoding of mpcgen students, with the decoding each will use privately.

* Token re-embedding (every student without ER): the argmax token of each step is looked up in the token table and
  fed back, with the K/V cache, as the vanilla private decoding does with a one-hot product.
* ER rollout (students with ``config.embedding_resend``): the next input is ``model.resend_embedding(h, pos)`` of
  the last final hidden state ``h``; tokens are only read off the logits (by the client, under MPC). The rollout
  never feeds a token back, so what it measures is what private generation produces.

Prompts are ``encode_prompt`` ids, as in training. Batches hold prompts of one length only: constant attention and
learned positions are absolute, so padding would shift what a row attends to. Decoding is greedy (private
generation takes argmaxes); beam search and n-gram blocking are refused.
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
from mpcgen.tokenization import TRUNCATIONS, decode_output, encode_prompt

logger = logging.getLogger(__name__)

__all__ = ["generate_student_texts", "greedy_student"]


@torch.no_grad()
def greedy_student(model: nn.Module, input_ids: torch.Tensor, *, max_new_tokens: int, eos_token_id: int | None,
                   resend: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy continuation of equal-length prompts ``input_ids`` (B, L) with a decoder-only student.

    Args:
        model: a :class:`mpcgen.models.DecoderLM`.
        input_ids: the prompts, one length (no padding).
        max_new_tokens: steps to run (fewer when every row has produced ``eos_token_id``).
        eos_token_id: stops a row (later tokens of a finished row are still computed, then cut by the caller).
        resend: ER rollout (True) or token re-embedding (False); default ``model.config.embedding_resend``.

    Returns:
        ``(tokens (B, N), hidden (B, N, d))``: the generated ids and the final hidden state each was read from.
    """
    if model.config.arch != "decoder":
        raise MpcgenError("student decoding supports decoder-only students so far")
    resend = model.config.embedding_resend if resend is None else resend
    b, length = input_ids.shape
    if length + max_new_tokens - 1 > model.config.n_positions:
        raise MpcgenError(f"prompt ({length} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                          f"{model.config.n_positions} positions; lower --max-new-tokens")
    model.eval()
    out = model(input_ids=input_ids, use_cache=True)
    cache, h = out.past, out.hidden[:, -1:]  # (B, 1, d)
    tokens, states = [out.logits[:, -1].argmax(-1)], [h]
    done = tokens[0] == eos_token_id if eos_token_id is not None else torch.zeros(b, dtype=torch.bool)
    for step in range(1, max_new_tokens):
        if bool(done.all()):
            break
        pos = length + step - 1  # the slot this step's input occupies
        if resend:
            x = model.resend_embedding(h, pos)  # exactly what private ER generation feeds
        else:
            x = model.embed(tokens[-1][:, None], start_pos=pos)
        hidden, _, cache = model.stack(x, past=cache, start=pos, use_cache=True)
        h = hidden[:, -1:]
        tokens.append(model.lm_head(h)[:, -1].argmax(-1))
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
    room = model.config.n_positions - max_new_tokens
    if room < 3:
        raise MpcgenError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's "
                          f"{model.config.n_positions} positions; lower --max-new-tokens")
    before = TRUNCATIONS["prompt"]
    prompts = [encode_prompt(tokenizer, s, is_encoder_decoder=False, max_length=room) for s in sources]
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
