"""Sequence layouts, label masking, truncation and decoding of mpcgen.tokenization."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from mpcgen.errors import MpcgenError
from mpcgen.tokenization import (
    IGNORE_INDEX,
    SPECIAL_TOKENS,
    decode_output,
    encode_for_training,
    encode_prompt,
    prepare_tokenizer,
    train_bpe_tokenizer,
)

TEXTS = [
    "name[The Vaults], eatType[pub], priceRange[more than £30], near[Café Adriatic]",
    "The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £30.",
    "name[The Eagle], food[English], area[riverside]",
    "The Eagle serves English food by the riverside.",
] * 20


@pytest.fixture(scope="module")
def tok():
    return train_bpe_tokenizer(TEXTS, vocab_size=400, min_frequency=2)


def test_special_tokens_registered(tok):
    for key, token in SPECIAL_TOKENS.items():
        assert getattr(tok, key) == token
        assert getattr(tok, f"{key}_id") is not None


def test_round_trip_and_decoder_only_masking(tok):
    src, tgt = TEXTS[0], TEXTS[1]
    enc = encode_for_training(tok, src, tgt, is_encoder_decoder=False, max_length=128)
    ids, labels = enc["input_ids"], enc["labels"]
    prompt = encode_prompt(tok, src, is_encoder_decoder=False)
    assert ids[: len(prompt)] == prompt and prompt[0] == tok.bos_token_id and prompt[-1] == tok.sep_token_id
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt):] == ids[len(prompt):] and ids[-1] == tok.eos_token_id
    assert decode_output(tok, ids[len(prompt):]) == tgt
    assert decode_output(tok, prompt[1:-1]) == src


def test_encoder_decoder_layout(tok):
    enc = encode_for_training(tok, TEXTS[2], TEXTS[3], is_encoder_decoder=True, max_length=128)
    assert enc["input_ids"] == encode_prompt(tok, TEXTS[2], is_encoder_decoder=True)
    assert enc["input_ids"][-1] == tok.eos_token_id and enc["labels"][-1] == tok.eos_token_id
    # A decoder-start pad/bos in front is skipped; everything after eos is ignored.
    assert decode_output(tok, [tok.pad_token_id] + enc["labels"] + [5, 6]) == TEXTS[3]


def test_truncation_cuts_source_first(tok):
    full = encode_for_training(tok, TEXTS[0], TEXTS[1], is_encoder_decoder=False, max_length=512)
    n_tgt = sum(label != IGNORE_INDEX for label in full["labels"])
    enc = encode_for_training(tok, TEXTS[0] * 5, TEXTS[1], is_encoder_decoder=False, max_length=n_tgt + 6)
    assert len(enc["input_ids"]) <= n_tgt + 6
    assert sum(label != IGNORE_INDEX for label in enc["labels"]) == n_tgt  # whole target kept
    tiny = encode_for_training(tok, TEXTS[0], TEXTS[1] * 5, is_encoder_decoder=False, max_length=16)
    # Target too long even alone: it is cut (without eos), and the source keeps a few tokens.
    assert len(tiny["input_ids"]) == 15 and tiny["input_ids"][-1] != tok.eos_token_id
    assert tiny["labels"][:2] == [IGNORE_INDEX] * 2 and tiny["labels"][-1] != IGNORE_INDEX


def test_empty_source_is_a_user_error(tok):
    with pytest.raises(MpcgenError):
        encode_for_training(tok, "  ", "x", is_encoder_decoder=False, max_length=32)
    with pytest.raises(MpcgenError):
        encode_prompt(tok, "", is_encoder_decoder=True)


def test_prepare_tokenizer_adds_only_missing(tok):
    # A GPT-2-like tokenizer: one <|endoftext|> for bos/eos/unk, no pad, no sep.
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    raw.add_special_tokens(["<|endoftext|>"])
    gpt2_like = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                        unk_token="<|endoftext|>")
    prepared = prepare_tokenizer(gpt2_like)
    assert prepared.eos_token == prepared.bos_token == "<|endoftext|>"
    assert prepared.pad_token == "<pad>" and prepared.sep_token == "<sep>"
    n = len(prepared)
    assert len(prepare_tokenizer(prepared)) == n  # idempotent
