"""Training data: train/validation splits, encoding for training, and batching with dynamic padding."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from mpcgen.data import load_examples
from mpcgen.errors import MpcgenError
from mpcgen.tokenization import IGNORE_INDEX, encode_for_training

logger = logging.getLogger(__name__)


def load_splits(task: str, data_dir: str | None, holdout_percent: float) -> tuple[list, list, str]:
    """(train, validation, train split name). Tasks without a train split train on validation minus a holdout."""
    try:
        return load_examples(task, "train", data_dir), load_examples(task, "validation", data_dir), "train"
    except MpcgenError as exc:
        if "no train split" not in str(exc):
            raise
    rows = load_examples(task, "validation", data_dir)
    train, val = hold_out(rows, holdout_percent)
    logger.warning("%s has no train split: TRAINING ON 'validation' (%d examples), holding out %d (%.1f%% of sources) "
                   "for the validation loss; evaluate on 'test' only", task, len(train), len(val), holdout_percent)
    return train, val, "validation"


def hold_out(rows: Sequence[Any], percent: float) -> tuple[list, list]:
    """(kept, held out): by a hash of the source, so all references of one source fall on the same side."""
    def held(ex) -> bool:
        return int(hashlib.md5(ex.source.encode()).hexdigest(), 16) % 10000 < percent * 100

    return [ex for ex in rows if not held(ex)], [ex for ex in rows if held(ex)]


def load_pairs_file(path: str | Path, holdout_percent: float) -> tuple[list, list]:
    """(train, validation) :class:`mpcgen.data.Example` pairs from a JSON Lines file of ``{"source", "target"}``
    objects (e.g. a teacher's texts on public inputs, ``scripts/public_distill_data.py``), split by
    :func:`hold_out`. A malformed line is an error naming it."""
    from mpcgen.data import Example

    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MpcgenError(f"{path}: {err}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise MpcgenError(f"{path}: line {number}: malformed JSON ({err.msg})") from None
        if not (isinstance(record, dict) and all(isinstance(record.get(k), str) and record[k].strip()
                                                  for k in ("source", "target"))):
            raise MpcgenError(f"{path}: line {number}: expected {{\"source\": text, \"target\": text}}")
        rows.append(Example(record["source"], record["target"]))
    if not rows:
        raise MpcgenError(f"{path}: no examples")
    train, val = hold_out(rows, holdout_percent)
    if not train or not val:
        raise MpcgenError(f"{path}: {len(rows)} examples leave an empty train or validation side at "
                          f"{holdout_percent}% held out")
    return train, val


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, examples: Iterable[Any], *, is_encoder_decoder: bool, max_length: int
) -> list[dict[str, list[int]]]:
    """Encode ``Example(source, target)`` objects for training."""
    return [encode_for_training(tokenizer, ex.source, ex.target, is_encoder_decoder=is_encoder_decoder,
                                max_length=max_length) for ex in examples]


def length_grouped(indices: Sequence[int], lengths: Sequence[int], batch_size: int, *, seed: int,
                   megabatch: int = 50) -> list[int]:
    """``indices`` (an epoch's shuffled order) regrouped so that each batch of ``batch_size`` holds examples of
    similar ``lengths``: megabatches of ``megabatch`` batches are sorted by length and cut into batches, and the full
    batches are put in a random order (``seed``); a last, partial batch stays last, so that batch ``k`` is always
    ``[k * batch_size, (k + 1) * batch_size)`` (what resuming mid-epoch relies on). With dynamic padding this is what
    a step costs: WebNLG's random batches of 32 are 57% padding, grouped ones 5% (HF's ``group_by_length``)."""
    if batch_size < 1 or megabatch < 1:
        raise MpcgenError(f"batch_size and megabatch must be positive, got {batch_size} and {megabatch}")
    size = batch_size * megabatch
    full: list[list[int]] = []
    partial: list[int] = []
    for start in range(0, len(indices), size):
        chunk = sorted(indices[start : start + size], key=lambda i: lengths[i], reverse=True)
        for b in range(0, len(chunk), batch_size):
            batch = list(chunk[b : b + batch_size])
            if len(batch) == batch_size:
                full.append(batch)
            else:
                partial = batch  # only the last megabatch can end short
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    return [i for b in order for i in full[b]] + partial


@dataclass
class Collator:
    """Dynamic padding: pad to the longest sequence of the batch; labels get -100 on padding."""

    pad_token_id: int

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n_in = max(len(r["input_ids"]) for r in rows)
        n_lab = max(len(r["labels"]) for r in rows)
        input_ids = torch.full((len(rows), n_in), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), n_in), dtype=torch.long)
        labels = torch.full((len(rows), n_lab), IGNORE_INDEX, dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
            attention[i, : len(r["input_ids"])] = 1
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


__all__ = ["Collator", "encode_examples", "hold_out", "length_grouped", "load_pairs_file", "load_splits"]
