"""Tokenization shared by every stage: one sequence layout for training, prompting and decoding.

Layouts (``S`` = source ids, ``T`` = target ids):

* decoder-only (GPT-2): ``input_ids = [bos] + S + [sep] + T + [eos]``; the loss covers ``T + [eos]`` only
  (``labels`` is ``-100`` on ``[bos] + S + [sep]``). Generation starts from ``[bos] + S + [sep]``.
* encoder-decoder (T5, BART): ``input_ids = S + [eos]``, ``labels = T + [eos]``; the model shifts the labels right
  behind its ``decoder_start_token_id``. Generation feeds ``S + [eos]`` to the encoder.

Truncation cuts the source first; the target is cut only when it would leave the source less than an eighth of the
budget. A cut target gets no ``eos`` (the model should not learn to stop mid-sentence). Cuts are counted in
:data:`TRUNCATIONS` and logged at DEBUG level.
"""

from __future__ import annotations

import collections
import logging
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "<sep>", "unk_token": "<unk>"}
IGNORE_INDEX = -100

# How many sources / targets encode_for_training has cut since import (callers log and reset it per dataset).
TRUNCATIONS: collections.Counter[str] = collections.Counter()


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` with every :data:`SPECIAL_TOKENS` entry registered.

    Byte level, so no text is ever out of vocabulary; a space is prefixed to each text so a word is tokenized the same
    at the start of a source or target as in the middle of a sentence.
    """
    if vocab_size < 300:
        # 256 byte symbols + specials is the floor of a byte-level vocabulary.
        raise MpcgenError(f"--vocab-size {vocab_size} is too small for byte-level BPE: use at least 300")
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    # Specials first so their ids are small and stable: <pad>=0, <s>=1, </s>=2, <sep>=3, <unk>=4.
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase, *, is_encoder_decoder: bool | None = None) -> PreTrainedTokenizerBase:
    """Add the special tokens our layouts need and the tokenizer lacks; keep the ones it has.

    GPT-2 has only ``<|endoftext|>`` (its bos, eos and unk): ``<pad>`` and ``<sep>`` are added. T5 and BART keep their
    own eos/pad/unk and need no separator. ``is_encoder_decoder=None`` guesses from the tokenizer: one without a pad
    token is treated as decoder-only (true of GPT-2 family tokenizers). The caller must resize the model's embeddings
    to ``len(tokenizer)`` afterwards.
    """
    if is_encoder_decoder is None:
        is_encoder_decoder = tokenizer.pad_token is not None
    needed = ["pad_token", "eos_token", "unk_token"]
    if not is_encoder_decoder:
        needed += ["bos_token", "sep_token"]
    missing = {key: SPECIAL_TOKENS[key] for key in needed if getattr(tokenizer, key, None) is None}
    if missing:
        tokenizer.add_special_tokens(missing)
        logger.info("added special tokens %s to the tokenizer (vocabulary now %d)", missing, len(tokenizer))
    return tokenizer


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def _check_source(source: str) -> None:
    if not source or not source.strip():
        raise MpcgenError("empty source text: every example needs a non-empty source (meaning representation)")
    check_text(source, "a source text")


def check_text(text: str, what: str) -> None:
    """Refuse text that is not valid Unicode: lone surrogates, which is what bytes that are not UTF-8 become in a
    command-line argument (Python's ``surrogateescape``). Every valid character is left to the tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = text[err.start]
        byte = f", i.e. the byte 0x{ord(bad) - 0xDC00:02x} that is not UTF-8" if 0xDC80 <= ord(bad) <= 0xDCFF else ""
        raise MpcgenError(f"{what} has a character that is not valid Unicode ({bad!r} at position {err.start}{byte}): "
                          "pass UTF-8 text") from None


def _special_id(tokenizer: PreTrainedTokenizerBase, key: str) -> int:
    token_id = getattr(tokenizer, f"{key}_id", None)
    if token_id is None:
        raise MpcgenError(f"the tokenizer has no {key}: call mpcgen.tokenization.prepare_tokenizer on it first")
    return int(token_id)


def _fit(src: list[int], tgt: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Cut ``src`` then ``tgt`` so that ``len(src) + len(tgt) <= budget``; return whether the target was cut."""
    if len(src) + len(tgt) <= budget:
        return src, tgt, False
    # The source gives way first, down to an eighth of the budget (a target with no source teaches nothing).
    keep_src = max(budget - len(tgt), min(len(src), max(1, budget // 8)))
    if keep_src < len(src):
        TRUNCATIONS["source"] += 1
        logger.debug("source truncated from %d to %d tokens", len(src), keep_src)
    src = src[:keep_src]
    keep_tgt = budget - len(src)
    cut = keep_tgt < len(tgt)
    if cut:
        TRUNCATIONS["target"] += 1
        logger.debug("target truncated from %d to %d tokens", len(tgt), keep_tgt)
    return src, tgt[:keep_tgt], cut


def encode_for_training(
    tokenizer: PreTrainedTokenizerBase, source: str, target: str, *, is_encoder_decoder: bool, max_length: int
) -> dict[str, list[int]]:
    """Encode one (source, target) pair as ``{"input_ids", "labels"}`` (see the module docstring for the layout).

    ``max_length`` bounds ``input_ids`` (decoder-only: the whole sequence; encoder-decoder: source and labels each).
    """
    _check_source(source)
    eos = _special_id(tokenizer, "eos_token")
    src, tgt = _ids(tokenizer, source), _ids(tokenizer, target)
    if is_encoder_decoder:
        if max_length < 2:
            raise MpcgenError(f"--max-length {max_length} is too small: an encoder-decoder needs at least 2")
        if len(src) > max_length - 1:
            TRUNCATIONS["source"] += 1
            src = src[: max_length - 1]
        cut = len(tgt) + 1 > max_length
        if cut:
            TRUNCATIONS["target"] += 1
            tgt = tgt[:max_length]
        return {"input_ids": src + [eos], "labels": tgt + ([] if cut else [eos])}
    bos, sep = _special_id(tokenizer, "bos_token"), _special_id(tokenizer, "sep_token")
    if max_length < 5:
        raise MpcgenError(f"--max-length {max_length} is too small: a decoder-only layout needs at least 5")
    src, tgt, cut = _fit(src, tgt, max_length - 3)
    prompt = [bos] + src + [sep]
    completion = tgt + ([] if cut else [eos])
    return {"input_ids": prompt + completion, "labels": [IGNORE_INDEX] * len(prompt) + completion}


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, source: str, *, is_encoder_decoder: bool, max_length: int | None = None
) -> list[int]:
    """The ids generation starts from: ``[bos] + S + [sep]`` (decoder-only) or ``S + [eos]`` (encoder input).

    ``max_length`` caps the prompt (special tokens included) by truncating the source, as training truncates
    sources first; truncations are counted in ``TRUNCATIONS["prompt"]``.
    """
    _check_source(source)
    src = _ids(tokenizer, source)
    if max_length is not None:
        room = max_length - (1 if is_encoder_decoder else 2)
        if room < 1:
            raise MpcgenError(f"max_length {max_length} leaves no room for the source")
        if len(src) > room:
            src = src[:room]
            TRUNCATIONS["prompt"] += 1
    if is_encoder_decoder:
        return src + [_special_id(tokenizer, "eos_token")]
    return [_special_id(tokenizer, "bos_token")] + src + [_special_id(tokenizer, "sep_token")]


def encode_sources(tokenizer: PreTrainedTokenizerBase, sources: Sequence[str], *, is_encoder_decoder: bool,
                   n_positions: int | None, max_new_tokens: int) -> list[list[int]]:
    """Prompts for evaluation-style decoding of many sources, truncated to what the model's positions leave.

    Decoder-only prompts share the positions with the ``max_new_tokens`` generated tokens; encoder inputs have all
    ``n_positions`` (None: no learned position table, e.g. T5, so nothing is cut). Sources are cut as in training
    (source first); how many were cut is logged as a warning.
    """
    room = None if n_positions is None else (n_positions if is_encoder_decoder else n_positions - max_new_tokens)
    if room is not None and room < 3:
        raise MpcgenError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's "
                          f"{n_positions} positions; lower --max-new-tokens")
    before = TRUNCATIONS["prompt"]
    prompts = [encode_prompt(tokenizer, s, is_encoder_decoder=is_encoder_decoder, max_length=room) for s in sources]
    if TRUNCATIONS["prompt"] > before:
        logger.warning("%d of %d prompts truncated to %d tokens (the model has %d positions)",
                       TRUNCATIONS["prompt"] - before, len(sources), room, n_positions)
    return prompts


def decode_output(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    """Text of generated ids: stop at the first eos, drop special tokens, strip whitespace.

    Pass the continuation only (decoder-only: the ids after the prompt). Leading pad/bos tokens are skipped, which
    covers T5's decoder start (pad) and our scratch BART's (bos). Pretrained BART starts decoding from ``</s>``: drop
    the decoder start token (``sequences[:, 1:]``) before calling this, or the text comes out empty.
    """
    ids = [int(i) for i in ids]
    skip = {tokenizer.pad_token_id, tokenizer.bos_token_id} - {None, tokenizer.eos_token_id}
    start = 0
    while start < len(ids) and ids[start] in skip:
        start += 1
    ids = ids[start:]
    eos = tokenizer.eos_token_id
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()
