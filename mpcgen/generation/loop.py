"""The decoding loop, written once for both backends: plaintext torch (the reference, and what ``nlg.evaluate``
scores) and CrypTen shares (private generation).

Three ways to feed the next position (DESIGN section 4):

* ``tokens`` (vanilla decoding, the baseline): LM head on the last position, argmax (under MPC a tree of secure
  comparisons giving a *secret* one-hot), one-hot x token table as the next input.
* ``er`` (Embedding Resending): the next input is the last final hidden state, resent through
  ``model.resend_embedding`` (its norm, if any, plus the next position's row). No LM head, argmax or table product
  per step: the LM head runs once, at the end, on the stacked final states.
* ``client`` (client-side token choice): LM head on the last position, its logits revealed to the client alone,
  which picks the token in plaintext (:class:`~mpcgen.generation.sampling.TokenChooser`: greedy or sampling, with a
  seed it keeps) and secret-shares its one-hot; one-hot x token table (a fixed-mask product) is the next input.

All keep a K/V cache (secret shares under MPC); encoder-decoders encode the prompt once and cache the
cross-attention K/V at the first decoder step.

Under MPC the loop always runs ``max_new_tokens`` steps, also past an eos: stopping early would tell the server
the output length, while running every step leaks nothing beyond ``max_new_tokens``, which it knows anyway. The
client cuts the text at the first eos afterwards. In plaintext (:attr:`Hooks.may_stop_early`) the loop stops once
every row has produced ``eos_token_id``, which gives the same text sooner.

What the loop reveals (the token ids, the final logits under ``er``, each step's logits under ``client``) goes
through ``hooks.reveal``: under MPC to the client only. Everything that differs between the backends is in
:class:`Hooks`; the plaintext defaults are the identity.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Sequence

import torch
from torch import nn

from mpcgen import ops
from mpcgen.errors import MpcgenError

Tensor = Any  # torch.Tensor or MPCTensor
DECODINGS = ("tokens", "er", "client")


class Hooks:
    """What the loop asks of its backend; this base class is the plaintext backend (no cost, no secrecy)."""

    may_stop_early = True  # plaintext: nobody learns anything from the loop's length

    def section(self, name: str) -> ContextManager[None]:
        """Book the work inside to cost group ``name`` (MPC only)."""
        return contextlib.nullcontext()

    def share_public(self, x: torch.Tensor) -> Tensor:
        """Turn a public tensor into the backend's tensor type (MPC: a sharing of a constant, no communication)."""
        return x

    def share_client(self, x: torch.Tensor | None, shape: Sequence[int]) -> Tensor:
        """Secret-share a tensor the client holds (``None`` and the public ``shape`` on the other party)."""
        return x

    def reveal(self, x: Tensor) -> torch.Tensor | None:
        """The plaintext of ``x`` for the party that may learn it (MPC: the client; None on the server)."""
        return x

    def mark(self, label: str) -> None:
        """Called at the start (``"start"``), after the prompt (``"prompt"``), after each token (``"token"``) and at
        the end (``"finish"``)."""


def check_decoding(decoding: str, config: Any) -> str:
    """Return ``decoding`` if ``config``'s model can run it, else raise :class:`MpcgenError` saying what to change."""
    if decoding not in DECODINGS:
        raise MpcgenError(f"unknown decoding {decoding!r}: use one of {list(DECODINGS)}")
    if decoding == "er" and not config.embedding_resend:
        raise MpcgenError("decoding 'er' (Embedding Resending) needs a model trained for it (config "
                          "embedding_resend=True, e.g. presets 'merge', 'merge-er-only'); this model "
                          f"(preset {config.preset!r}) has none: use decoding 'client' or 'tokens'")
    return decoding


def default_decoding(config: Any) -> str:
    """The decoding a model is served with by default: ``client``, for every model, ER-trained ones included.

    ``client`` runs the model as it was trained (each step reads the chosen token's embedding), costs at most a
    few rounds per token more than ``er`` and, for an ER student that carries a resend norm (what ``distill.run``
    trains), fewer: the norm is an inverse square root per token (4 layers, d 256, vocab 4,096: 18.5 rounds per
    token against 51.5 for ``merge``). Its text is the student's own, where ER rollouts of the students trained here
    repeat themselves (docs/results.md, "Embedding Resending"). Both reveal logits to the client (``er`` those of
    every generated position at the end); ``tokens`` is the choice for a client that must learn only the tokens.
    ``er`` stays available by name."""
    del config  # one default for every model; kept in the signature for callers that pass the model's config
    return "client"


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


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of equal length (at most ``batch_size`` each), in order of first
    appearance. Equal lengths only: a batch's rows share their positions (constant attention and learned positions
    are absolute), so padding would change what a row attends to."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise MpcgenError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    by_length: dict[int, list[int]] = {}
    for i, length in enumerate(lengths):
        by_length.setdefault(length, []).append(i)
    return [group[k:k + batch_size] for group in by_length.values() for k in range(0, len(group), batch_size)]


def greedy_choice(logits: torch.Tensor) -> torch.Tensor:
    """The default token choice: argmax over the last dimension."""
    return logits.argmax(dim=-1)


def decode(model: nn.Module, prompt: dict[str, Tensor], *, max_new_tokens: int, decoding: str,
           hooks: Hooks | None = None, eos_token_id: int | None = None, choose: Any = None,
           return_states: bool = False) -> Any:
    """Generate ``max_new_tokens`` tokens for one batch of equal-length prompts.

    Args:
        model: a :class:`~mpcgen.models.DecoderLM` or :class:`~mpcgen.models.EncoderDecoderLM` in its inference
            form (plaintext, or with secret-shared / public weights under MPC).
        prompt: the prompt as model input: ``{"input_ids": (B, T)}`` (plaintext) or ``{"one_hot": (B, T, vocab)}``
            (secret rows under MPC); the encoder input for encoder-decoders.
        max_new_tokens: steps to run (all of them under MPC; see the module docstring).
        decoding: ``"tokens"``, ``"er"`` or ``"client"``.
        hooks: the backend (default: plaintext).
        eos_token_id: with a backend that may stop early, stop once every row has produced it.
        choose: ``client`` decoding: the client's choice, ``(B, vocab) logits -> (B,) ids`` (default greedy).
        return_states: also return the final hidden state each token was read from (plaintext only).

    Returns:
        Token ids (B, steps run) for the party ``hooks.reveal`` gives the plaintext to, None for the others; with
        ``return_states``, ``(ids, states (B, steps run, d))``.
    """
    hooks = hooks or Hooks()
    config = model.config
    check_decoding(decoding, config)
    choose = choose or greedy_choice
    vocab = config.vocab_size
    stop = eos_token_id is not None and hooks.may_stop_early
    source = None
    if config.arch == "encoder-decoder":
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

    fed: list[Tensor] = []  # what feeds the next step: one-hots (B, 1, vocab) or final states (B, 1, d)
    states: list[Tensor] = []
    ids: list[torch.Tensor | None] = []  # tokens known as the loop runs (client, and every plaintext decoding)
    for step in range(max_new_tokens):
        if step > 0:
            if decoding == "er":
                x = model.resend_embedding(h_last, cache.length)  # (B, 1, d)
            else:
                x = model.embed(one_hot=fed[-1], start_pos=cache.length)  # (B, 1, d)
            h_last, cache = _run_stack(model, x, cache, source)
        states.append(h_last)
        if decoding == "er":
            fed.append(h_last)
            if stop:  # plaintext: the token now, only to know when every row is done
                ids.append(model.lm_head(h_last)[:, -1].argmax(-1))
        else:
            logits = model.lm_head(h_last)  # (B, 1, vocab)
            if decoding == "tokens":
                with hooks.section("sampling"):
                    hot = ops.argmax_one_hot(logits, dim=-1)
                if stop:
                    ids.append(hot[:, -1].argmax(-1))
            else:
                with hooks.section("reveal"):
                    plain = hooks.reveal(logits)  # the client's; None on the server
                with hooks.section("sampling"):
                    token = None if plain is None else choose(plain[:, -1]).long()  # (B,)
                    hot = hooks.share_client(None if token is None else ops.one_hot(token[:, None], vocab),
                                             (logits.size(0), 1, vocab))
                ids.append(token)
            fed.append(hot)
        hooks.mark("token")
        if stop and bool(torch.stack([t == eos_token_id for t in ids]).any(dim=0).all()):
            break

    if decoding == "client" or stop:  # the tokens are known already (client-chosen, or plaintext)
        tokens = None if ids[0] is None else torch.stack(ids, dim=1)
    else:
        tokens = _reveal_tokens(model, decoding, fed, hooks, vocab)
    hooks.mark("finish")
    if return_states:
        return tokens, ops.cat(states, dim=1)
    return tokens


def _reveal_tokens(model: nn.Module, decoding: str, fed: list[Tensor], hooks: Hooks, vocab: int
                   ) -> torch.Tensor | None:
    """The tokens for the party that may learn them, from one reveal at the end."""
    if decoding == "tokens":
        # One reveal for all steps, of ids rather than one-hots: hot . (0, 1, .., V-1) is a public product (local).
        with hooks.section("sampling"):
            hots = ops.cat(fed, dim=1)  # (B, n, vocab)
            values = (hots * torch.arange(vocab, dtype=torch.float32)).sum(dim=-1)  # (B, n)
        with hooks.section("reveal"):
            plain = hooks.reveal(values)
        return None if plain is None else plain.round().long()
    # ER: the LM head once over the stacked states; the client learns these logits and takes the argmax.
    logits = model.lm_head(ops.cat(fed, dim=1))  # (B, n, vocab)
    with hooks.section("reveal"):
        plain = hooks.reveal(logits)
    return None if plain is None else plain.argmax(dim=-1)


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
