"""What generation starts from on the client: the tokenizer and checked prompt ids.

Models are loaded by :mod:`mpcgen.models.loading` (on the server); the client encodes its prompts with the public
tokenizer and never needs the weights.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from torch import nn

from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import check_fits
from mpcgen.models.loading import load_tokenizer
from mpcgen.tokenization import check_text, encode_prompt

logger = logging.getLogger(__name__)

Prompt = str | Sequence[int]  # text, or ready token ids (benchmarks)


def resolve_tokenizer(model: nn.Module, tokenizer: Any) -> Any:
    """``tokenizer`` if given (an object or a folder), else the one attached to ``model`` (may be None)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        return load_tokenizer(tokenizer)
    return tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)


def encode_prompts(prompts: Sequence[Prompt], tokenizer: Any, config: Any, max_new_tokens: int) -> list[list[int]]:
    """Token ids of each prompt in the training layout, checked against the model (client side).

    Args:
        prompts: texts (encoded with :func:`mpcgen.tokenization.encode_prompt`) or ready id lists.
        tokenizer: needed for texts.
        config: the model's (public) config.
        max_new_tokens: tokens to generate.

    Raises:
        MpcgenError: no prompts; an empty prompt; characters the tokenizer cannot encode; ids outside the
            vocabulary; a prompt that with the generation would not fit the model's positions.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise MpcgenError("prompts must be a list of texts (or of token id lists), e.g. ['name[The Eagle]']")
    if len(prompts) == 0:
        raise MpcgenError("no prompts given")
    out = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, str):
            if tokenizer is None:
                raise MpcgenError("text prompts need a tokenizer: pass tokenizer= (or a model folder that has one)")
            if not prompt.strip():
                raise MpcgenError(f"prompt {i} is empty: give a non-empty source text")
            check_text(prompt, f"prompt {i}")
            ids = encode_prompt(tokenizer, prompt, is_encoder_decoder=config.arch == "encoder-decoder")
            check_encodable(tokenizer, prompt, ids, i)
        else:
            ids = [int(t) for t in prompt]
            if not ids:
                raise MpcgenError(f"prompt {i} is empty: give at least one token id")
        bad = sorted({t for t in ids if not 0 <= t < config.vocab_size})
        if bad:
            raise MpcgenError(f"prompt {i} has token ids {bad[:5]} outside the model's vocabulary [0, "
                              f"{config.vocab_size}): the tokenizer does not belong to this model")
        try:
            check_fits(config, len(ids), max_new_tokens)
        except MpcgenError as err:
            raise MpcgenError(f"prompt {i}: {err}") from None
        out.append(ids)
    return out


def check_encodable(tokenizer: Any, text: str, ids: list[int], index: int) -> None:
    """Refuse text the tokenizer maps to its unknown token, naming the prompt and the text at fault.

    Policy: byte-level BPE (mpcgen's tokenizers, GPT-2's) encodes every valid character, so this never fires for
    them; word-level and word-piece tokenizers (or SentencePiece ones such as T5's) can map a character or word to
    their unknown token, which would silently change the prompt.
    """
    unk_id, unk = getattr(tokenizer, "unk_token_id", None), getattr(tokenizer, "unk_token", None)
    if unk_id is None or unk_id not in ids or (unk and unk in text):
        return
    bad = sorted(set(_unknown_pieces(tokenizer, text, unk_id)))
    shown = ", ".join(repr(piece) for piece in bad[:10]) or "?"
    excerpt = text if len(text) <= 40 else text[:37] + "..."
    raise MpcgenError(f"prompt {index} ({excerpt!r}) has characters the tokenizer cannot encode ({shown}): remove "
                      "or replace them")


def _unknown_pieces(tokenizer: Any, text: str, unk_id: int) -> list[str]:
    """The pieces of ``text`` that became the unknown token: from the token offsets where the tokenizer has them
    (fast tokenizers), else the characters that encode to it on their own."""
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [text[a:b] for t, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if t == unk_id and b > a]
    except (NotImplementedError, ValueError, TypeError, KeyError):  # slow tokenizers have no offsets
        return [ch for ch in text if not ch.isspace() and unk_id in tokenizer.encode(ch, add_special_tokens=False)]


def encode_client_text(tokenizer: Any, text: str, model: nn.Module | None) -> list[int]:
    """A separate-host client's prompt ids, before it knows the server's config (checked against it later).

    The layout depends on the architecture, which a private-weights client learns only from the server: T5/BART
    tokenizers have no separator token, GPT-2 ones (prepared by mpcgen) do.
    """
    if not text.strip():
        raise MpcgenError("a prompt is empty: give a non-empty source text")
    check_text(text, "a prompt")
    is_encoder_decoder = (model.config.arch == "encoder-decoder") if model is not None else \
        getattr(tokenizer, "sep_token_id", None) is None
    ids = encode_prompt(tokenizer, text, is_encoder_decoder=is_encoder_decoder)
    check_encodable(tokenizer, text, ids, 0)
    return ids
