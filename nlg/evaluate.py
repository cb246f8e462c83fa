"""Evaluate a checkpoint: decode a split, score it, write predictions and metrics beside the checkpoint.

Usage::

    python -m nlg.evaluate --ckpt stage1_ckpts/e2e_nlg-gpt2 --split test [--num-beams 4] [--limit 50]

Writes ``<ckpt>/predictions-<split>[-beamB].txt`` (one line per distinct source, in data order) and
``<ckpt>/metrics-<split>[-beamB].json``, both atomically, and prints the metrics as one JSON object on the last line
of stdout (BLEU on 0-1). Logs go to stderr.

Checkpoints are recognised by what their directory holds (:func:`mpcgen.models.loading.model_kind`): a Hugging
Face teacher from ``nlg.finetune``, or a stage-2 student from ``distill.run`` (decoded the way it decodes privately:
ER rollout for Embedding Resending students, the greedy token choice otherwise; ``--decoding`` picks another). The
work is :func:`mpcgen.evaluation.evaluate_checkpoint`; this module is its command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mpcgen.errors import MpcgenError

logger = logging.getLogger("nlg.evaluate")


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
    decoding: str | None = field(default=None, metadata={
        "help": "mpcgen models (students): er, client or tokens (default: the model's; client and tokens give the "
                "same greedy text in plaintext)"})
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


# ---------------------------------------------------------------------------------------------------------- main


def evaluate(args: EvalArguments) -> dict[str, Any]:
    """Decode and score ``args.split`` with :func:`mpcgen.evaluation.evaluate_checkpoint`; return the metrics."""
    from mpcgen.evaluation import EvalSettings, evaluate_checkpoint

    if args.num_threads is not None:
        if args.num_threads < 1:
            raise MpcgenError(f"--num-threads must be >= 1, got {args.num_threads}")
        import torch

        torch.set_num_threads(args.num_threads)
    settings = EvalSettings(num_beams=args.num_beams, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                            length_penalty=args.length_penalty, no_repeat_ngram_size=args.no_repeat_ngram_size,
                            decoding=args.decoding)
    return evaluate_checkpoint(args.ckpt, split=args.split, settings=settings, limit=args.limit,
                               data_dir=args.data_dir, task=args.task, out_prefix=args.out_prefix,
                               progress=not args.no_progress)


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
