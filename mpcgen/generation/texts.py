"""Sources to texts in plaintext, many at once: what evaluation scores and what the frontier reports.

mpcgen models (students, and teachers imported into a preset) decode with :func:`mpcgen.generation.loop.decode`,
the loop private generation runs, with the decoding they are served with (``er`` rollout for ER students, else the
greedy token choice that ``client`` and ``tokens`` decoding both make privately); it stops once every row of a
batch has produced eos, which gives the same texts as running every step. Hugging Face models (stage-1 teachers
with beam search) go through :func:`mpcgen.generation.hf.generate_texts`. Both build prompts with
:func:`mpcgen.tokenization.encode_sources` (the same truncation budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import check_decoding, check_fits, decode, default_decoding, plan_batches
from mpcgen.tokenization import decode_output, encode_sources


def decode_texts(model: nn.Module, tokenizer: Any, sources: Sequence[str], *, max_new_tokens: int = 64,
                 batch_size: int = 32, decoding: str | None = None, num_beams: int = 1,
                 no_repeat_ngram_size: int = 0, length_penalty: float = 1.0, progress: bool = True) -> list[str]:
    """One greedy text per source with an mpcgen model, in the order of ``sources``.

    Args:
        model: a :class:`mpcgen.models.DecoderLM` or :class:`mpcgen.models.EncoderDecoderLM` (its inference form
            is computed here, as the server would).
        tokenizer: the model's tokenizer.
        sources: linearised inputs (meaning representations).
        max_new_tokens: generated tokens per source, eos included.
        batch_size: most sources per batch (sources of one prompt length share a batch: no padding).
        decoding: as :func:`mpcgen.generation.generate_private` takes it (default: the model's).
        num_beams, no_repeat_ngram_size, length_penalty: accepted for the settings ``nlg.evaluate`` passes to every
            model kind; private generation has no beam search or n-gram blocking, so only the neutral values pass.
        progress: a tqdm bar over batches.
    """
    from mpcgen.models.inference import prepare_for_inference

    if num_beams != 1:
        raise MpcgenError("mpcgen models decode as private generation does, without beam search: use --num-beams 1")
    if no_repeat_ngram_size:
        raise MpcgenError("n-gram blocking is not part of private generation: use --no-repeat-ngram-size 0")
    if max_new_tokens < 1 or batch_size < 1:
        raise MpcgenError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    config = model.config
    decoding = check_decoding(decoding or default_decoding(config), config)
    encoder_decoder = config.arch == "encoder-decoder"
    prompts = encode_sources(tokenizer, sources, is_encoder_decoder=encoder_decoder, n_positions=config.n_positions,
                             max_new_tokens=max_new_tokens)
    runnable = prepare_for_inference(model.eval())
    texts = [""] * len(prompts)
    with torch.no_grad():
        for batch in tqdm(plan_batches([len(p) for p in prompts], batch_size), desc="decoding", unit="batch",
                          disable=not progress):
            check_fits(config, len(prompts[batch[0]]), max_new_tokens)
            tokens = decode(runnable, {"input_ids": torch.tensor([prompts[i] for i in batch])},
                            max_new_tokens=max_new_tokens, decoding=decoding, eos_token_id=tokenizer.eos_token_id)
            for row, index in enumerate(batch):
                texts[index] = decode_output(tokenizer, tokens[row].tolist())
    return texts


__all__ = ["decode_texts"]
