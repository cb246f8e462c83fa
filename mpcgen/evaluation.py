"""Evaluation of a checkpoint: decode a split, score it, write predictions and metrics beside the checkpoint.

The kind of checkpoint comes from :func:`mpcgen.models.loading.model_kind`. A stage-1 Hugging Face teacher is
decoded with Hugging Face ``generate`` (greedy or beam search, :func:`mpcgen.generation.hf.generate_texts`); an
mpcgen model (a stage-2 student) with the decoding loop that private generation runs
(:func:`mpcgen.generation.texts.decode_texts`: ER rollout for Embedding Resending students, the greedy token choice
otherwise; ``decoding`` picks another). A model trained on delexicalised data (:mod:`mpcgen.data.delex`) decodes
the delexicalised sources and its texts get their values back before scoring. ``python -m nlg.evaluate`` is the
command line.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpcgen.data import delex
from mpcgen.errors import MpcgenError
from mpcgen.models.loading import model_kind, read_training_args

logger = logging.getLogger(__name__)


@dataclass
class EvalSettings:
    """How to decode: the flags of ``nlg.evaluate`` that every checkpoint kind receives."""

    num_beams: int = 1
    batch_size: int = 32
    max_new_tokens: int = 64
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    decoding: str | None = None  # mpcgen models only: as generate_private takes it (default: the model's)

    def check(self) -> None:
        for name, low in (("num_beams", 1), ("batch_size", 1), ("max_new_tokens", 1), ("no_repeat_ngram_size", 0)):
            if getattr(self, name) < low:
                raise MpcgenError(f"--{name.replace('_', '-')} must be >= {low}, got {getattr(self, name)}")


def decode_sources(ckpt: str | os.PathLike, sources: list[str], settings: EvalSettings, *, progress: bool = True
                   ) -> tuple[list[str], dict[str, Any]]:
    """One text per source with the checkpoint in ``ckpt``; ``(texts, {"kind", "is_encoder_decoder", "decoding"})``,
    ``decoding`` being the one that ran (a student's default resolved; ``None`` for a teacher's ``generate()``)."""
    path = Path(ckpt)
    kind = model_kind(path)
    if kind == "teacher":
        from mpcgen.generation.hf import generate_texts

        if settings.decoding is not None:
            raise MpcgenError("--decoding is for mpcgen models; a Hugging Face teacher decodes with generate()")
        model, tokenizer, is_ed = _load_hf(path)
        sources, values = delex.prepare(tokenizer, sources)
        texts = generate_texts(model, tokenizer, sources, is_encoder_decoder=is_ed,
                               max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, batch_size=settings.batch_size,
                               length_penalty=settings.length_penalty,
                               no_repeat_ngram_size=settings.no_repeat_ngram_size, progress=progress)
        texts = [delex.relexicalise(t, v) for t, v in zip(texts, values)]
        return texts, {"kind": kind, "is_encoder_decoder": is_ed, "decoding": None}
    from mpcgen.generation.loop import default_decoding
    from mpcgen.generation.texts import decode_texts
    from mpcgen.models.loading import load_model

    model = load_model(path)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise MpcgenError(f"{path}: the student checkpoint has no tokenizer files")
    sources, values = delex.prepare(tokenizer, sources)
    texts = decode_texts(model, tokenizer, sources, max_new_tokens=settings.max_new_tokens,
                         batch_size=settings.batch_size, decoding=settings.decoding, num_beams=settings.num_beams,
                         no_repeat_ngram_size=settings.no_repeat_ngram_size, progress=progress)
    texts = [delex.relexicalise(t, v) for t, v in zip(texts, values)]
    return texts, {"kind": kind, "is_encoder_decoder": model.config.arch == "encoder-decoder",
                   "decoding": settings.decoding or default_decoding(model.config)}


def _load_hf(ckpt: Path) -> tuple[Any, Any, bool]:
    """A Hugging Face causal or seq2seq LM with its tokenizer (the stage-1 teacher layout)."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from mpcgen.models.loading import load_hf_model, read_tokenizer

    tokenizer = read_tokenizer(ckpt, required=True)
    model, config = load_hf_model(
        ckpt, lambda c: AutoModelForSeq2SeqLM if c.is_encoder_decoder else AutoModelForCausalLM)
    is_encoder_decoder = bool(config.is_encoder_decoder)
    training_args = read_training_args(ckpt)
    if "is_encoder_decoder" in training_args and bool(training_args["is_encoder_decoder"]) != is_encoder_decoder:
        raise MpcgenError(f"{ckpt}: training_args.json says is_encoder_decoder="
                          f"{training_args['is_encoder_decoder']} but config.json says {is_encoder_decoder}")
    return model, tokenizer, is_encoder_decoder


def output_paths(ckpt: Path, split: str, num_beams: int, prefix: str | None) -> tuple[Path, Path]:
    """``(predictions .txt, metrics .json)`` paths inside the checkpoint directory."""
    if prefix is not None and (not prefix or os.sep in prefix or prefix.startswith(".")):
        raise MpcgenError(f"--out-prefix must be a plain file-name label, got {prefix!r}")
    stem = split + (f"-beam{num_beams}" if num_beams > 1 else "")
    lead = f"{prefix}-" if prefix else ""
    return ckpt / f"{lead}predictions-{stem}.txt", ckpt / f"{lead}metrics-{stem}.json"


def _train_split_note(task: str, split: str, training_args: dict[str, Any]) -> str | None:
    train_split = training_args.get("train_split")
    if task == "multiwoz_nlg" and train_split == "validation":
        return ("trained on the MultiWOZ validation split (this data copy has no train split); "
                + ("these scores are not held-out" if split == "validation" else "test scores are held-out"))
    if train_split is not None and train_split == split:
        return f"evaluated on the split the model was trained on ({split}); scores are not held-out"
    return None


def evaluate_checkpoint(ckpt: str | os.PathLike, *, split: str = "test", settings: EvalSettings | None = None,
                        limit: int | None = None, data_dir: str | None = None, task: str | None = None,
                        out_prefix: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Decode and score ``split`` with the checkpoint; write predictions and metrics into it; return the metrics.

    Args:
        ckpt: a stage-1 teacher or stage-2 student folder.
        split: ``train``, ``validation`` or ``test``.
        settings: how to decode (:class:`EvalSettings`).
        limit: score only the first N distinct sources.
        data_dir: the staged data folder (default: ``$MPCGEN_DATA_DIR`` or ``../shared/data``).
        task: the task (default: the one in the checkpoint's ``training_args.json``).
        out_prefix: a label prepended to the output file names.
        progress: a progress bar while decoding.

    Returns:
        The metrics record also written to ``<ckpt>/[PREFIX-]metrics-<split>[-beamB].json``.
    """
    from mpcgen.data import canonical_task, load_grouped
    from mpcgen.io import write_json, write_text
    from mpcgen.metrics import corpus_scores

    settings = settings or EvalSettings()
    settings.check()
    path = Path(ckpt)
    kind = model_kind(path)  # fail on a bad directory before reading data or loading weights
    pred_path, metrics_path = output_paths(path, split, settings.num_beams, out_prefix)
    if limit is not None and limit < 1:
        raise MpcgenError(f"--limit must be >= 1, got {limit}")
    training_args = read_training_args(path)
    task_name = task or training_args.get("task")
    if not task_name:
        raise MpcgenError(f"{path} has no training_args.json with a 'task'; pass --task")
    task = canonical_task(task_name)
    examples = load_grouped(task, split, data_dir)[:limit]
    logger.info("%s %s: %d sources; decoding with %s checkpoint %s", task, split, len(examples), kind, path)

    start = time.perf_counter()
    predictions, info = decode_sources(path, [ex.source for ex in examples], settings, progress=progress)
    decode_s = time.perf_counter() - start
    predictions = [" ".join(text.split()) for text in predictions]  # one line per source, whatever was generated
    scores = corpus_scores(predictions, [list(ex.references) for ex in examples],
                           slots=[list(ex.slots) for ex in examples], task=task)
    record: dict[str, Any] = {
        "bleu": scores.get("bleu"), "nist": scores.get("nist"), "rouge_l": scores.get("rouge_l"),
        "chrf": scores.get("chrf"), "ser": scores.get("ser"),  # None where the task has no slot error rate
        **scores, "n": len(predictions), "task": task, "split": split, "limit": limit,
        "decoding": {"strategy": "beam" if settings.num_beams > 1 else "greedy", **vars(settings),
                     "decoding": info["decoding"]},
        "checkpoint": str(path), "checkpoint_kind": info["kind"], "model": training_args.get("model"),
        "time_s": round(decode_s, 3),  # decoding wall time (model loading and scoring excluded)
        "predictions_file": pred_path.name,
    }
    note = _train_split_note(task, split, training_args)
    if note:
        record["note"] = note
        logger.warning("%s", note)
    write_text(pred_path, "".join(text + "\n" for text in predictions))
    write_json(metrics_path, record)
    logger.info("wrote %s and %s (%.1f s decoding)", pred_path, metrics_path, decode_s)
    return record


__all__ = ["EvalSettings", "decode_sources", "evaluate_checkpoint", "output_paths"]
