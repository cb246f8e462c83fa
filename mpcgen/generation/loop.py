"""The greedy decoding loop, written once for both backends: plaintext torch (the reference) and CrypTen shares.

Two ways to feed the next position (DESIGN section 4):

* ``tokens`` (vanilla decoding, the baseline): LM head on the last position, argmax (under MPC a tree of secure
  comparisons giving a *secret* one-hot), one-hot x token table as the next input.
* ``er`` (Embedding Resending): the next input is the last final hidden state, resent through
  ``model.resend_embedding`` (its norm, if any, plus the next position's row). No LM head, argmax or table product
  per step: the LM head runs once, at the end, on the stacked final states.

Both keep a K/V cache (secret shares under MPC); encoder-decoders encode the prompt once and cache the
cross-attention K/V at the first decoder step.

The loop always runs ``max_new_tokens`` steps, also past an eos. Stopping early would need a party to learn each
token as it is made and tell the other one to stop, i.e. the server would learn the output length; running every
step leaks nothing beyond ``max_new_tokens``, which the server knows anyway (DESIGN: the server learns lengths).
The client cuts the text at the first eos afterwards (:func:`mpcgen.tokenization.decode_output`).

What the loop reveals (the token ids, or the final logits under ``er``) goes through ``hooks.reveal``: under MPC to
the client only. Everything that differs between the backends is in :class:`Hooks`; the plaintext defaults are
the identity.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager

import torch
from torch import nn

from mpcgen import ops
from mpcgen.errors import MpcgenError

Tensor = Any  # torch.Tensor or MPCTensor
DECODINGS = ("tokens", "er")


class Hooks:
    """What the loop asks of its backend; this base class is the plaintext backend (no cost, no secrecy)."""

    def section(self, name: str) -> ContextManager[None]:
        """Book the work inside to cost group ``name`` (MPC only)."""
        return contextlib.nullcontext()

    def share_public(self, x: torch.Tensor) -> Tensor:
        """Turn a public tensor into the backend's tensor type (MPC: a sharing of a constant, no communication)."""
        return x

    def reveal(self, x: Tensor) -> torch.Tensor | None:
        """The plaintext of ``x`` for the party that may learn it (MPC: the client; None on the server)."""
        return x

    def mark(self, label: str) -> None:
        """Called after the prompt (``"prompt"``), after each token (``"token"``) and at the end (``"finish"``)."""


def check_decoding(decoding: str, config: Any) -> str:
    """Return ``decoding`` if ``config``'s model can run it, else raise :class:`MpcgenError` saying what to change."""
    if decoding not in DECODINGS:
        raise MpcgenError(f"unknown decoding {decoding!r}: use one of {list(DECODINGS)}")
    if decoding == "er" and not config.embedding_resend:
        raise MpcgenError("decoding 'er' (Embedding Resending) needs a model trained for it (config "
                          "embedding_resend=True, e.g. presets 'merge', 'merge-er-only'); this model "
                          f"(preset {config.preset!r}) has none: use decoding 'tokens'")
    return decoding


def default_decoding(config: Any) -> str:
    """``er`` for a model trained with Embedding Resending, else ``tokens``."""
    return "er" if config.embedding_resend else "tokens"


def check_fits(config: Any, prompt_len: int, max_new_tokens: int) -> None:
    """Raise :class:`MpcgenError` when prompt + generation overflow the model's positions (decoder side)."""
    if max_new_tokens < 1:
        raise MpcgenError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if prompt_len < 1:
        raise MpcgenError("the prompt is empty")
    # Decoder-only: prompt and generation share the positions; encoder-decoders: each side has n_positions
    # (T5's relative positions have no table, but its tests and our memory budget still use n_positions).
    if config.arch == "decoder":
        # The last generated token is never fed back, so prompt + max_new_tokens - 1 positions are used.
        need = prompt_len + max_new_tokens - 1
        what = f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens})"
    else:
        need, what = prompt_len, f"prompt ({prompt_len} tokens)"
        if max_new_tokens > config.n_positions:
            raise MpcgenError(f"max_new_tokens ({max_new_tokens}) exceeds the decoder's {config.n_positions} "
                              "positions; lower max_new_tokens")
    if need > config.n_positions:
        raise MpcgenError(f"{what} exceeds the model's {config.n_positions} positions; shorten the prompt or "
                          "lower max_new_tokens")


def greedy_decode(model: nn.Module, prompt: dict[str, Tensor], *, max_new_tokens: int, decoding: str,
                  hooks: Hooks | None = None) -> torch.Tensor | None:
    """Greedy generation of ``max_new_tokens`` tokens for one batch of equal-length prompts.

    Args:
        model: a :class:`~mpcgen.models.DecoderLM` or :class:`~mpcgen.models.EncoderDecoderLM` in its inference
            form (plaintext, or with secret-shared / public weights under MPC).
        prompt: the prompt as model input: ``{"input_ids": (B, T)}`` (plaintext) or ``{"one_hot": (B, T, vocab)}``
            (secret rows under MPC); the encoder input for encoder-decoders.
        max_new_tokens: steps to run (always all of them; see the module docstring).
        decoding: ``"tokens"`` or ``"er"``.
        hooks: the backend (default: plaintext).

    Returns:
        Token ids (B, max_new_tokens) for the party ``hooks.reveal`` gives the plaintext to, None for the others.
    """
    hooks = hooks or Hooks()
    config = model.config
    check_decoding(decoding, config)
    vocab = config.vocab_size
    encoder_decoder = config.arch == "encoder-decoder"
    source = None
    if encoder_decoder:
        source = model.encode(**prompt)  # (B, S, d), computed once; its K/V are cached at the first decoder step
        batch = source.size(0)
        if config.decoder_start_token_id is None:
            raise MpcgenError("the encoder-decoder config has no decoder_start_token_id; cannot decode")
        start = ops.one_hot(torch.full((batch, 1), config.decoder_start_token_id), vocab)  # public (B, 1, vocab)
        x = model.embed(one_hot=hooks.share_public(start), start_pos=0)  # (B, 1, d)
    else:
        x = model.embed(**prompt, start_pos=0)  # (B, T, d)
    hidden, cache = _run_stack(model, x, None, source)
    h_last = hidden[:, -1:]  # (B, 1, d)
    hooks.mark("prompt")

    chosen: list[Tensor] = []  # tokens: secret one-hots (B, 1, vocab); er: final states (B, 1, d)
    for step in range(max_new_tokens):
        if step > 0:
            if decoding == "tokens":
                x = model.embed(one_hot=chosen[-1], start_pos=cache.length)  # (B, 1, d)
            else:
                x = model.resend_embedding(h_last, cache.length)  # (B, 1, d)
            h_last, cache = _run_stack(model, x, cache, source)
        if decoding == "tokens":
            logits = model.lm_head(h_last)  # (B, 1, vocab)
            with hooks.section("sampling"):
                chosen.append(ops.argmax_one_hot(logits, dim=-1))
        else:
            chosen.append(h_last)
        hooks.mark("token")

    if decoding == "tokens":
        # One reveal for all steps, of ids rather than one-hots: hot . (0, 1, .., V-1) is a public product (local).
        with hooks.section("sampling"):
            hots = ops.cat(chosen, dim=1)  # (B, n, vocab)
            ids = (hots * torch.arange(vocab, dtype=torch.float32)).sum(dim=-1)  # (B, n)
        with hooks.section("reveal"):
            plain = hooks.reveal(ids)
        tokens = None if plain is None else plain.round().long()
    else:
        # ER: the LM head once over the stacked states; the client learns these logits and takes the argmax.
        states = ops.cat(chosen, dim=1)  # (B, n, d)
        logits = model.lm_head(states)  # (B, n, vocab)
        with hooks.section("reveal"):
            plain = hooks.reveal(logits)
        tokens = None if plain is None else plain.argmax(dim=-1)
    hooks.mark("finish")
    return tokens


def _run_stack(model: nn.Module, x: Tensor, cache: Any, source: Tensor | None) -> tuple[Tensor, Any]:
    """Block-0 input (B, T, d) at the cache's next positions -> (final hidden states (B, T, d), updated cache)."""
    start = 0 if cache is None else cache.length
    if source is None:
        hidden, _, cache = model.stack(x, past=cache, start=start, use_cache=True)
    else:
        hidden, _, cache = model.decoder(x, source=source, past=cache, start=start, use_cache=True)
    return hidden, cache


def truncate_at_eos(tokens: list[int], eos: int | None) -> list[int]:
    """``tokens`` up to and including the first ``eos`` (all of them when there is none)."""
    if eos is not None and eos in tokens:
        return tokens[: tokens.index(eos) + 1]
    return tokens
