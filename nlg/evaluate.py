"""Evaluate a checkpoint: decode a split, score it, write predictions and metrics beside the checkpoint.

Usage::

    python -m nlg.evaluate --ckpt stage1_ckpts/e2e_nlg-gpt2 --split test [--num-beams 4] [--limit 50]

Writes ``<ckpt>/predictions-<split>[-beamB].txt`` (one line per distinct source, in data order) and
``<ckpt>/metrics-<split>[-beamB].json``, both atomically, and prints the metrics as one JSON object on the last line
of stdout (BLEU on 0-1). Logs go to stderr.

Checkpoints are recognised by what their directory holds (:data:`LOADERS`): today a Hugging Face teacher from
``nlg.finetune``, or a stage-2 student from ``distill.run`` (decoded greedily the way it decodes privately: ER rollout
for Embedding Resending students, token re-embedding otherwise; encoder-decoders encode the source once and do either
on the decoder side).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpcgen.errors import MpcgenError

logger = logging.getLogger("nlg.evaluate")

TRAINING_ARGS_FILE = "training_args.json"
_HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


@dataclass
class EvalArguments:
    """Command-line arguments of ``python -m nlg.evaluate`` (each field is one ``--flag``)."""

    ckpt: str = field(metadata={"help": "checkpoint directory (stage-1 teacher: HF model + training_args.json)"})
    split: str = field(default="test", metadata={"help": "split to decode: train, validation or test"})
    limit: int | None = field(default=None, metadata={"help": "decode only the first N distinct sources"})
    data_dir: str | None = field(
        default=None, metadata={"help": "staged data folder (default: $MPCGEN_DATA_DIR or ../shared/data)"}
    )
    task: str | None = field(
        default=None, metadata={"help": "task override (default: the task in training_args.json)"}
    )
    num_beams: int = field(default=1, metadata={"help": "1 = greedy search, more = beam search"})
    batch_size: int = field(default=32, metadata={"help": "sources per generate call"})
    max_new_tokens: int = field(default=64, metadata={"help": "most tokens generated per source, eos included"})
    length_penalty: float = field(default=1.0, metadata={"help": "beam search length exponent"})
    no_repeat_ngram_size: int = field(default=0, metadata={"help": "forbid repeated n-grams of this size (0: off)"})
    out_prefix: str | None = field(
        default=None,
        metadata={"help": "label prepended to the output file names: <ckpt>/<NAME>-predictions-<split>....txt"},
    )
    no_progress: bool = field(default=False, metadata={"help": "hide the progress bar"})
    num_threads: int | None = field(default=None, metadata={
        "help": "torch threads (default: torch's); 1 on a machine busy with other jobs, where OpenMP threads that "
                "wait for each other make decoding many times slower"})


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one ``--flag-name`` per :class:`EvalArguments` field."""
    parser = argparse.ArgumentParser(
        prog="python -m nlg.evaluate",
        description="Decode a split with a checkpoint, score it (BLEU, NIST, ROUGE-L, chrF++, SER) and write "
        "predictions-<split>[-beamB].txt and metrics-<split>[-beamB].json into the checkpoint directory.",
    )
    for f in dataclasses.fields(EvalArguments):
        # Dashes as documented, underscores too (nlg.finetune's HfArgumentParser accepts both spellings).
        flags = dict.fromkeys(["--" + f.name.replace("_", "-"), "--" + f.name])
        help_text = f.metadata["help"]
        if f.type in ("bool", bool):
            parser.add_argument(*flags, dest=f.name, action="store_true", help=help_text)
            continue
        # Annotations are strings here (postponed evaluation): "int", "int | None", "float", "str | None".
        kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
        required = f.default is dataclasses.MISSING
        default = None if required else f.default
        suffix = "" if required or default is None else f" (default: {default})"
        parser.add_argument(*flags, dest=f.name, type=kind, required=required, default=default, help=help_text + suffix)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> EvalArguments:
    return EvalArguments(**vars(build_parser().parse_args(argv)))


# --------------------------------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedCheckpoint:
    """What the evaluator needs from any checkpoint kind.

    ``generate(sources, settings)`` returns one text per source, in order; ``settings`` holds the decoding flags
    (num_beams, batch_size, max_new_tokens, length_penalty, no_repeat_ngram_size, progress).
    """

    kind: str
    path: Path
    training_args: dict[str, Any]
    is_encoder_decoder: bool
    generate: Callable[[list[str], dict[str, Any]], list[str]]


def read_training_args(ckpt: Path) -> dict[str, Any]:
    """``training_args.json`` of a checkpoint, or ``{}`` if it has none (then ``--task`` is required)."""
    path = ckpt / TRAINING_ARGS_FILE
    if not path.is_file():
        return {}
    try:
        args = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MpcgenError(f"{path}: cannot read training arguments ({err})") from err
    if not isinstance(args, dict):
        raise MpcgenError(f"{path}: expected a JSON object, got {type(args).__name__}")
    return args


def _is_hf_model(ckpt: Path) -> bool:
    return (ckpt / "config.json").is_file() and any((ckpt / name).is_file() for name in _HF_WEIGHT_FILES)


def _load_hf(ckpt: Path) -> LoadedCheckpoint:
    """A Hugging Face causal or seq2seq LM with its tokenizer (the stage-1 teacher layout)."""
    # Imported here so `--help` and input errors stay fast.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from mpcgen.decoding import generate_texts

    try:
        config = AutoConfig.from_pretrained(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(ckpt)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(ckpt)
    except (OSError, ValueError, KeyError) as err:
        raise MpcgenError(f"{ckpt}: cannot load the Hugging Face model or tokenizer ({err})") from err
    is_encoder_decoder = bool(config.is_encoder_decoder)
    training_args = read_training_args(ckpt)
    if "is_encoder_decoder" in training_args and bool(training_args["is_encoder_decoder"]) != is_encoder_decoder:
        raise MpcgenError(
            f"{ckpt}: training_args.json says is_encoder_decoder={training_args['is_encoder_decoder']} but "
            f"config.json says {is_encoder_decoder}"
        )

    def generate(sources: list[str], settings: dict[str, Any]) -> list[str]:
        return generate_texts(model, tokenizer, sources, is_encoder_decoder=is_encoder_decoder, **settings)

    return LoadedCheckpoint("hf", ckpt, training_args, is_encoder_decoder, generate)


def _is_student(ckpt: Path) -> bool:
    """An mpcgen student (``distill.run`` / ``save_pretrained``): our config.json has ``arch`` and ``preset``."""
    if not ((ckpt / "config.json").is_file() and (ckpt / "model.safetensors").is_file()):
        return False
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(config, dict) and "arch" in config and "preset" in config and "model_type" not in config


def _load_student(ckpt: Path) -> LoadedCheckpoint:
    """A distilled student, decoded as it will be privately (ER rollout for ER students, else token re-embedding)."""
    from mpcgen.distill import load_student
    from mpcgen.student_decoding import generate_student_texts

    model = load_student(ckpt)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise MpcgenError(f"{ckpt}: the student checkpoint has no tokenizer files")
    is_encoder_decoder = model.config.arch == "encoder-decoder"

    def generate(sources: list[str], settings: dict[str, Any]) -> list[str]:
        return generate_student_texts(model, tokenizer, sources, **settings)

    return LoadedCheckpoint("student", ckpt, read_training_args(ckpt), is_encoder_decoder, generate)


# kind -> (does this directory hold it?, loader); checked in order, so the student (whose folder also has a
# config.json and model.safetensors) comes before the Hugging Face layout.
LOADERS: dict[str, tuple[Callable[[Path], bool], Callable[[Path], LoadedCheckpoint]]] = {
    "student": (_is_student, _load_student),
    "hf": (_is_hf_model, _load_hf),
}


def checkpoint_kind(ckpt: str | os.PathLike) -> str:
    """The :data:`LOADERS` kind a directory holds; MpcgenError if it is missing or holds none of them."""
    path = Path(ckpt)
    if not path.is_dir():
        what = "is not a directory" if path.exists() else "does not exist"
        raise MpcgenError(f"checkpoint directory {path} {what}")
    for kind, (detect, _) in LOADERS.items():
        if detect(path):
            return kind
    raise MpcgenError(
        f"{path} holds no checkpoint this evaluator knows (kinds: {sorted(LOADERS)}; an 'hf' checkpoint has "
        f"config.json and model.safetensors, a 'student' one the same with an mpcgen config: arch and preset)"
    )


def load_checkpoint(ckpt: str | os.PathLike) -> LoadedCheckpoint:
    """Load whatever checkpoint ``ckpt`` holds (see :data:`LOADERS`)."""
    return LOADERS[checkpoint_kind(ckpt)][1](Path(ckpt))


# ------------------------------------------------------------------------------------------------------- outputs


def output_paths(ckpt: Path, split: str, num_beams: int, prefix: str | None) -> tuple[Path, Path]:
    """``(predictions .txt, metrics .json)`` paths inside the checkpoint directory."""
    if prefix is not None and (not prefix or os.sep in prefix or prefix.startswith(".")):
        raise MpcgenError(f"--out-prefix must be a plain file-name label, got {prefix!r}")
    stem = split + (f"-beam{num_beams}" if num_beams > 1 else "")
    lead = f"{prefix}-" if prefix else ""
    return ckpt / f"{lead}predictions-{stem}.txt", ckpt / f"{lead}metrics-{stem}.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _train_split_note(task: str, split: str, training_args: dict[str, Any]) -> str | None:
    train_split = training_args.get("train_split")
    if task == "multiwoz_nlg" and train_split == "validation":
        return (
            "trained on the MultiWOZ validation split (this data copy has no train split); "
            + ("these scores are not held-out" if split == "validation" else "test scores are held-out")
        )
    if train_split is not None and train_split == split:
        return f"evaluated on the split the model was trained on ({split}); scores are not held-out"
    return None


# ---------------------------------------------------------------------------------------------------------- main


def evaluate(args: EvalArguments) -> dict[str, Any]:
    """Decode and score ``args.split``; write the two output files; return the metrics record."""
    from mpcgen.data import canonical_task, load_grouped
    from mpcgen.metrics import corpus_scores

    ckpt = Path(args.ckpt)
    if args.num_threads is not None:
        if args.num_threads < 1:
            raise MpcgenError(f"--num-threads must be >= 1, got {args.num_threads}")
        import torch

        torch.set_num_threads(args.num_threads)
    kind = checkpoint_kind(ckpt)  # fail on a bad directory before reading data or loading weights
    pred_path, metrics_path = output_paths(ckpt, args.split, args.num_beams, args.out_prefix)
    if args.limit is not None and args.limit < 1:
        raise MpcgenError(f"--limit must be >= 1, got {args.limit}")
    training_args = read_training_args(ckpt)
    task_name = args.task or training_args.get("task")
    if not task_name:
        raise MpcgenError(f"{ckpt} has no {TRAINING_ARGS_FILE} with a 'task'; pass --task")
    task = canonical_task(task_name)
    examples = load_grouped(task, args.split, args.data_dir)
    if args.limit is not None:
        examples = examples[: args.limit]
    logger.info("%s %s: %d sources; loading %s checkpoint %s", task, args.split, len(examples), kind, ckpt)

    loaded = LOADERS[kind][1](ckpt)
    settings = {
        "num_beams": args.num_beams,
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "length_penalty": args.length_penalty,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
    }
    start = time.perf_counter()
    predictions = loaded.generate([ex.source for ex in examples], {**settings, "progress": not args.no_progress})
    decode_s = time.perf_counter() - start
    # One line per source, whatever the model produced.
    predictions = [" ".join(text.split()) for text in predictions]

    scores = corpus_scores(
        predictions, [list(ex.references) for ex in examples], slots=[list(ex.slots) for ex in examples], task=task
    )
    record: dict[str, Any] = {
        "bleu": scores.get("bleu"),
        "nist": scores.get("nist"),
        "rouge_l": scores.get("rouge_l"),
        "chrf": scores.get("chrf"),
        "ser": scores.get("ser"),  # None where the task has no slot error rate
        **scores,
        "n": len(predictions),
        "task": task,
        "split": args.split,
        "limit": args.limit,
        "decoding": {"strategy": "beam" if args.num_beams > 1 else "greedy", **settings},
        "checkpoint": str(ckpt),
        "checkpoint_kind": kind,
        "model": loaded.training_args.get("model"),
        "time_s": round(decode_s, 3),  # decoding wall time (model loading and scoring excluded)
        "predictions_file": pred_path.name,
    }
    note = _train_split_note(task, args.split, loaded.training_args)
    if note:
        record["note"] = note
        logger.warning("%s", note)
    write_atomic(pred_path, "".join(text + "\n" for text in predictions))
    write_atomic(metrics_path, json.dumps(record, indent=2) + "\n")
    logger.info("wrote %s and %s (%.1f s decoding)", pred_path, metrics_path, decode_s)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for user errors)."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        record = evaluate(args)
    except MpcgenError as err:
        logger.error("%s", err)
        return 2
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
