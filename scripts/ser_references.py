"""Slot error rate of the human test references, each scored against its own source's slots (or of a model's
predictions, to see which slots it gets wrong).

    .venv/bin/python scripts/ser_references.py                       # E2E and MultiWOZ, the rules in mpcgen
    .venv/bin/python scripts/ser_references.py --sample 40 --seed 0  # and 40 flagged references to read
    .venv/bin/python scripts/ser_references.py --tasks multiwoz \
        --predictions stage1_ckpts/multiwoz_nlg-gpt2/predictions-test.txt --sample 5   # a model's errors by slot
    git show 7637607:mpcgen/metrics/ser.py > /tmp/ser_before.py
    .venv/bin/python scripts/ser_references.py --ser-module /tmp/ser_before.py   # the same, with older rules

A faithful reference should score near 0, so what the rate counts is either a reference's own error (E2E's
crowd-sourced references drop and contradict slots) or a rule that misreads a correct phrasing. The figures go to
the log (stderr): per task the references, checked slots, missing and added values, the rate and how many
references have at least one error, then the errors by attribute; with ``--shuffled``, also the rate of every
reference scored against another source's slots (what an output that ignores its input would get).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from mpcgen.data import DATA_DIR_ENV, canonical_task, load_grouped  # noqa: E402
from mpcgen.errors import MpcgenError  # noqa: E402

logger = logging.getLogger("ser_references")

TASKS = ("e2e", "multiwoz")


def default_data_dir() -> Path:
    """``$MPCGEN_DATA_DIR``, else ``../shared/data`` beside this checkout."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data-dir", type=Path, default=default_data_dir(),
        help=f"staged datasets folder (default: ${DATA_DIR_ENV} or ../shared/data beside the repository)",
    )  # fmt: skip
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="tasks with slot rules (default: %(default)s)")
    parser.add_argument("--split", default="test", help="split to score (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=0, help="log this many flagged references with their errors")
    parser.add_argument("--seed", type=int, default=0, help="seed for --sample and --shuffled (default: 0)")
    parser.add_argument("--shuffled", action="store_true", help="also score references against another source")
    parser.add_argument(
        "--predictions", type=Path,
        help="score this file instead (one text per distinct source of the split, in order: nlg.evaluate's "
             "predictions-<split>.txt); needs a single task in --tasks",
    )  # fmt: skip
    parser.add_argument(
        "--ser-module", type=Path,
        help="score with the slot rules in this file (a copy of mpcgen/metrics/ser.py, e.g. from an older commit)",
    )  # fmt: skip
    return parser.parse_args(argv)


def load_rules(path: Path | None) -> ModuleType:
    """The SER module to score with: mpcgen's own, or the file at ``path``."""
    if path is None:
        from mpcgen.metrics import ser

        return ser
    if not path.is_file():
        raise MpcgenError(f"--ser-module {path} is not a file")
    spec = importlib.util.spec_from_file_location("ser_under_test", path)
    if spec is None or spec.loader is None:
        raise MpcgenError(f"--ser-module {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


def references(task: str, split: str, data_dir: Path) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    """Every reference of the split, paired with its own source's slots."""
    texts: list[str] = []
    slots: list[tuple[tuple[str, str], ...]] = []
    for group in load_grouped(task, split, data_dir):
        texts.extend(group.references)
        slots.extend([group.slots] * len(group.references))
    return texts, slots


def predictions(task: str, split: str, data_dir: Path, path: Path) -> tuple[list[str], list]:
    """The texts of a predictions file, each paired with its source's slots (one line per distinct source)."""
    if not path.is_file():
        raise MpcgenError(f"--predictions {path} is not a file")
    groups = load_grouped(task, split, data_dir)
    texts = path.read_text(encoding="utf-8").splitlines()
    if len(texts) != len(groups):
        raise MpcgenError(f"--predictions {path} has {len(texts)} lines for the {len(groups)} distinct sources of "
                          f"{task} {split} (a run with --limit scores only the first sources)")
    return texts, [g.slots for g in groups]


def _attribute(task: str, slot: str) -> str:
    # MultiWOZ slots are "Domain-Intent-Slot"; group them by the slot name.
    return slot.rsplit("-", 1)[-1] if task == "multiwoz_nlg" else slot


def report(rules: ModuleType, task: str, texts: list[str], slots: list, args: argparse.Namespace) -> float:
    """Log the figures for one task; return its SER."""
    details = rules.ser_details(texts, slots, task)
    total = sum(d.total for d in details)
    missing = sum(len(d.missing) for d in details)
    added = sum(len(d.added) for d in details)
    flagged = [i for i, d in enumerate(details) if d.errors]
    rate = (missing + added) / total if total else float(missing + added)
    logger.info(
        "%s %s: %d references, %d slots checked, %d missing, %d added -> SER %.2f%% "
        "(%.2f%% missing, %.2f%% added); %d references (%.1f%%) have an error",
        task, args.split, len(texts), total, missing, added, 100 * rate, 100 * missing / total, 100 * added / total,
        len(flagged), 100 * len(flagged) / len(texts),
    )  # fmt: skip
    by_attribute: Counter = Counter()
    for d in details:
        by_attribute.update(("missing", _attribute(task, a)) for a, _ in d.missing)
        by_attribute.update(("added", _attribute(task, a)) for a, _ in d.added)
    for (kind, attribute), count in by_attribute.most_common():
        logger.info("  %-7s %-16s %5d  (%.2f%% of checked slots)", kind, attribute, count, 100 * count / total)
    if args.sample and flagged:
        rng = random.Random(args.seed)
        for n, i in enumerate(sorted(rng.sample(flagged, min(args.sample, len(flagged))))):
            d = details[i]
            logger.info("  [%d] slots: %s", n, "; ".join(f"{a}={v}" for a, v in slots[i]))
            logger.info("      ref:   %s", texts[i])
            logger.info("      missing: %s  added: %s", list(d.missing), list(d.added))
    if args.shuffled:
        shuffled = texts[:]
        random.Random(args.seed).shuffle(shuffled)
        logger.info("%s %s: references scored against another source's slots -> SER %.2f%%",
                    task, args.split, 100 * rules.slot_error_rate(shuffled, slots, task))  # fmt: skip
    return rate


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for user errors)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rules = load_rules(args.ser_module)
        logger.info("slot rules: %s; data: %s", rules.__file__, args.data_dir)
        if args.predictions is not None and len(args.tasks) != 1:
            raise MpcgenError("--predictions scores one task's file: name that task alone in --tasks")
        for name in args.tasks:
            task = canonical_task(name)
            if args.predictions is not None:
                texts, slots = predictions(task, args.split, args.data_dir, args.predictions)
            else:
                texts, slots = references(task, args.split, args.data_dir)
            report(rules, task, texts, slots, args)
    except MpcgenError as err:
        logger.error("error: %s", err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
