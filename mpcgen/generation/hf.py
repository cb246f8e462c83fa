"""Plaintext decoding with Hugging Face models (stage-1 teachers): the quality reference for private generation.

:func:`generate_texts` turns sources into texts with greedy or beam search. Stage 1 evaluates teachers with it;
stage 2 and the private generator compare their outputs against it, so it pins everything that could make two runs
of the same model disagree:

- prompts are built by :func:`mpcgen.tokenization.encode_sources`, exactly as in training and as mpcgen models'
  evaluation builds them (:mod:`mpcgen.generation.texts`), truncated to the same budget;
- decoder-only batches are left-padded with an attention mask *and* explicit position ids, so a padded prompt
  generates what it generates alone (positions count real tokens only);
- special token ids (eos, pad, decoder start) come from the tokenizer and the model config, and every other
  generation setting from a neutral ``GenerationConfig``: a ``generation_config.json`` saved beside the weights
  (``forced_bos_token_id``, ``no_repeat_ngram_size``, ``min_length``, ...) never leaks in.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Iterator

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from mpcgen.errors import MpcgenError
from mpcgen.tokenization import decode_output, encode_sources

logger = logging.getLogger(__name__)

__all__ = ["generate_texts", "left_pad", "special_token_ids"]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad token id lists into one batch.

    Returns:
        ``(input_ids, attention_mask, position_ids)``, each ``(B, T)`` long tensors. Position ids count real tokens
        only (0 at each prompt's first token); padded slots get 0, they are masked anyway.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("left_pad needs at least one prompt and no empty prompt")
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, width - len(prompt) :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    return input_ids, attention_mask, position_ids


def special_token_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, is_encoder_decoder: bool
) -> dict[str, int]:
    """The eos, pad and (encoder-decoder only) decoder-start ids ``generate`` is given explicitly.

    The tokenizer is the authority for eos and pad (it built the training targets); the decoder start id comes from
    the model config because that is what ``labels`` were shifted with in training.
    """
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.config.eos_token_id
    if eos is None:
        raise MpcgenError("neither the tokenizer nor the model config defines an eos token; cannot decode")
    # A decoder-only model may have no pad token: any id works because padded slots are masked.
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids = {"eos_token_id": int(eos), "pad_token_id": int(pad)}
    if is_encoder_decoder:
        start = model.config.decoder_start_token_id
        if start is None:
            raise MpcgenError("the encoder-decoder model config has no decoder_start_token_id; cannot decode")
        ids["decoder_start_token_id"] = int(start)
    return ids


@contextmanager
def _neutral_generation_defaults(model: PreTrainedModel) -> Iterator[None]:
    """Swap the model's saved generation config for library defaults while generating, and restore it.

    ``generate`` fills every setting left unset in the config it is given from ``model.generation_config``; with a
    neutral one there, only what :func:`generate_texts` sets explicitly counts.
    """
    saved, was_training = model.generation_config, model.training
    model.generation_config = GenerationConfig()
    model.eval()
    try:
        yield
    finally:
        model.generation_config = saved
        model.train(was_training)


def _check_settings(max_new_tokens: int, num_beams: int, batch_size: int, no_repeat_ngram_size: int) -> None:
    for name, value, low in (
        ("max_new_tokens", max_new_tokens, 1),
        ("num_beams", num_beams, 1),
        ("batch_size", batch_size, 1),
        ("no_repeat_ngram_size", no_repeat_ngram_size, 0),
    ):
        if value < low:
            raise MpcgenError(f"{name} must be >= {low}, got {value}")


def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    sources: Sequence[str],
    *,
    is_encoder_decoder: bool,
    max_new_tokens: int = 64,
    num_beams: int = 1,
    batch_size: int = 32,
    length_penalty: float = 1.0,
    no_repeat_ngram_size: int = 0,
    progress: bool = True,
) -> list[str]:
    """Decode one text per source with greedy search (``num_beams=1``) or beam search.

    Args:
        model: a Hugging Face causal LM or seq2seq LM.
        tokenizer: the tokenizer saved with it.
        sources: linearised inputs (meaning representations), in any order.
        is_encoder_decoder: selects the prompt format and how outputs are sliced.
        max_new_tokens: generated tokens per source, eos included.
        num_beams: 1 for greedy search, more for beam search.
        batch_size: sources per ``generate`` call.
        length_penalty: beam search's length exponent (ignored by greedy search).
        no_repeat_ngram_size: forbid repeating n-grams of this size; 0 turns it off.
        progress: show a tqdm bar over batches (on stderr).

    Returns:
        The decoded texts, one per source, in the order of ``sources``.
    """
    _check_settings(max_new_tokens, num_beams, batch_size, no_repeat_ngram_size)
    if not sources:
        return []
    ids = special_token_ids(model, tokenizer, is_encoder_decoder=is_encoder_decoder)
    prompts = encode_sources(tokenizer, sources, is_encoder_decoder=is_encoder_decoder,
                             n_positions=_position_limit(model), max_new_tokens=max_new_tokens)

    beam_settings = {"length_penalty": length_penalty, "early_stopping": True} if num_beams > 1 else {}
    config = GenerationConfig(
        do_sample=False,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        no_repeat_ngram_size=no_repeat_ngram_size,
        **beam_settings,  # set only for beam search: GenerationConfig warns about beam flags under greedy search
        **ids,
    )
    # Batch prompts of similar length together so little compute goes to padding; outputs go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    device = next(model.parameters()).device
    texts: list[str] = [""] * len(prompts)
    with _neutral_generation_defaults(model), torch.inference_mode():
        for batch in tqdm(batches, desc="decoding", unit="batch", disable=not progress):
            input_ids, attention_mask, position_ids = left_pad([prompts[i] for i in batch], ids["pad_token_id"])
            kwargs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
            if not is_encoder_decoder:
                kwargs["position_ids"] = position_ids.to(device)
            out = model.generate(**kwargs, generation_config=config)  # (B, T_out)
            # Decoder-only outputs repeat the (padded) prompt; encoder-decoder outputs start with the decoder-start
            # token, which may be eos (BART) and would end decode_output's text at once.
            new_tokens = out[:, input_ids.shape[1] :] if not is_encoder_decoder else out[:, 1:]
            for row, index in enumerate(batch):
                texts[index] = decode_output(tokenizer, new_tokens[row].tolist())
    return texts


def _position_limit(model: PreTrainedModel) -> int | None:
    """The model's learned position table size (None for relative positions, e.g. T5)."""
    return getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
