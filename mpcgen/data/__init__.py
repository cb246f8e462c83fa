"""Datasets: a task registry and loaders for the staged offline copies of E2E, WebNLG v3.0 and MultiWOZ 2.1.

Every loader turns a split into ``(source, target)`` pairs whose ``source`` is a compact, deterministic
linearisation of the structured input (see each reader module's docstring: :mod:`mpcgen.data.e2e`,
:mod:`mpcgen.data.webnlg`, :mod:`mpcgen.data.multiwoz`); later stages feed it to models as the prompt.

Where the data lives (:func:`resolve_data_dir`): an explicit ``data_dir`` argument, else ``$MPCGEN_DATA_DIR``, else
``../shared/data`` beside the repository checkout. The folder holds ``e2e/``, ``webnlg/`` and ``multiwoz/`` as
described in its README.

Example::

    from mpcgen.data import load_grouped
    test = load_grouped("e2e", "test")          # 630 MRs, each with all its references and its slots
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mpcgen.data import e2e, multiwoz, webnlg
from mpcgen.data.e2e import Row
from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
DATA_DIR_ENV = "MPCGEN_DATA_DIR"
# Repository root = the folder holding the mpcgen package; the staged data sits beside the checkout.
_REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = _REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class Example:
    """One training/evaluation pair: a linearised source and one reference."""

    source: str
    target: str


@dataclass(frozen=True)
class GroupedExample:
    """One distinct source with all its references (in file order) and its ``(slot, value)`` pairs for SER."""

    source: str
    references: tuple[str, ...]
    slots: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class TaskSpec:
    """A dataset as the toolkit sees it.

    ``splits`` maps each split to a path relative to the data folder; ``reader`` turns that path into
    ``(source, target, slots)`` rows; ``missing`` holds a specific message for splits a copy may lack.
    """

    name: str
    description: str
    splits: Mapping[str, str]
    reader: Callable[[Path], list[Row]]
    has_slots: bool
    licence: str
    missing: Mapping[str, str] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    "e2e_nlg": TaskSpec(
        name="e2e_nlg",
        description="E2E NLG Challenge: restaurant meaning representations -> descriptions",
        splits={"train": "e2e/trainset.csv", "validation": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
        reader=e2e.read_rows,
        has_slots=True,
        licence="CC BY-SA 4.0",
    ),
    "web_nlg": TaskSpec(
        name="web_nlg",
        description="WebNLG v3.0 (English): DBpedia triple sets -> text",
        splits={
            "train": "webnlg/train",
            "validation": "webnlg/dev",
            "test": "webnlg/test/rdf-to-text-generation-test-data-with-refs-en.xml",
        },
        reader=webnlg.read_rows,
        # Triple objects (dates, quantities, camelCase literals) are rarely realised verbatim, so a
        # string-match SER would mostly measure paraphrase, not errors; slots are still provided.
        has_slots=False,
        licence="CC BY-NC-SA 4.0 (non-commercial)",
    ),
    "multiwoz_nlg": TaskSpec(
        name="multiwoz_nlg",
        description="MultiWOZ 2.1 (ConvLab-2 tokenisation): system dialogue acts -> system utterance",
        splits={
            "train": "multiwoz/train.jsonl",
            "validation": "multiwoz/validation.jsonl",
            "test": "multiwoz/test.jsonl",
        },
        reader=multiwoz.read_rows,
        has_slots=True,
        licence="MIT (MultiWOZ repository) / CC BY 4.0 (ConvLab-2)",
        missing={
            "train": (
                "this copy of MultiWOZ has no train split (only validation.jsonl and test.jsonl); "
                "train on split 'validation' and evaluate on 'test' (and say so when reporting), "
                "or place a train.jsonl of the same schema at {path}"
            )
        },
    ),
}

ALIASES: dict[str, str] = {"e2e": "e2e_nlg", "webnlg": "web_nlg", "multiwoz": "multiwoz_nlg"}


def canonical_task(name: str) -> str:
    """Map a task name or alias (``"e2e"``) to its registry name (``"e2e_nlg"``); MpcgenError if unknown."""
    key = name.strip().lower().replace("-", "_")
    if key in TASKS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    aliases = ", ".join(f"{a}->{c}" for a, c in sorted(ALIASES.items()))
    raise MpcgenError(f"unknown task {name!r}; choose one of {sorted(TASKS)} (aliases: {aliases})")


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the staged data folder: explicit argument > ``$MPCGEN_DATA_DIR`` > ``../shared/data`` beside the repo."""
    if data_dir is not None and str(data_dir) != "":
        path, origin = Path(data_dir), "the data_dir argument (--data-dir)"
    elif os.environ.get(DATA_DIR_ENV):
        path, origin = Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}"
    else:
        path, origin = DEFAULT_DATA_DIR, "the default location beside the repository"
    path = path.expanduser()
    if not path.is_dir():
        raise MpcgenError(
            f"data folder {path} (from {origin}) does not exist; point at the folder holding e2e/, webnlg/ and "
            f"multiwoz/ with --data-dir or {DATA_DIR_ENV}"
        )
    return path


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise MpcgenError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    return split


def _read(task: str, split: str, data_dir: str | os.PathLike | None) -> list[Row]:
    spec = TASKS[canonical_task(task)]
    split = _check_split(split)
    path = resolve_data_dir(data_dir) / spec.splits[split]
    if not path.exists():
        if split in spec.missing:
            raise MpcgenError(f"{spec.name}: " + spec.missing[split].format(path=path))
        raise MpcgenError(
            f"{spec.name} {split} split not found: {path} does not exist; check --data-dir or {DATA_DIR_ENV}"
        )
    rows = spec.reader(path)
    if not rows:
        raise MpcgenError(f"{path}: no examples found in the {spec.name} {split} split")
    logger.debug("read %d %s %s rows from %s", len(rows), spec.name, split, path)
    return rows


def load_examples(task: str, split: str, data_dir: str | os.PathLike | None = None) -> list[Example]:
    """Load a split as one :class:`Example` per reference, in file order.

    Args:
        task: a name from :data:`TASKS` or :data:`ALIASES`.
        split: ``"train"``, ``"validation"`` or ``"test"``.
        data_dir: the staged data folder; see :func:`resolve_data_dir`.

    Returns:
        ``[Example(source, target), ...]``.
    """
    return [Example(source, target) for source, target, _ in _read(task, split, data_dir)]


def load_grouped(task: str, split: str, data_dir: str | os.PathLike | None = None) -> list[GroupedExample]:
    """Load a split as one :class:`GroupedExample` per distinct source, in order of first appearance.

    References of rows with the same linearised source are merged (in file order); this is what multi-reference
    BLEU expects. WebNLG has a few duplicate triple sets in separate entries (train 13211 entries -> 13123
    sources, validation 1667 -> 1665; test has none), whose references are merged too.
    """
    grouped: dict[str, tuple[list[str], tuple[tuple[str, str], ...]]] = {}
    for source, target, slots in _read(task, split, data_dir):
        grouped.setdefault(source, ([], slots))[0].append(target)
    return [GroupedExample(source, tuple(refs), slots) for source, (refs, slots) in grouped.items()]


def load_hub(task: str, split: str) -> list[Example]:
    """Load a split from the Hugging Face Hub (needs ``datasets`` and network), linearised like the offline copy.

    The Hub names used, and how MultiWOZ there (2.2) differs from the staged 2.1, are in :mod:`mpcgen.data.hub`.
    """
    from mpcgen.data import hub  # lazy: keeps `datasets` optional

    return [Example(source, target) for source, target in hub.load_hub(canonical_task(task), _check_split(split))]


__all__ = [
    "ALIASES",
    "DATA_DIR_ENV",
    "DEFAULT_DATA_DIR",
    "SPLITS",
    "TASKS",
    "Example",
    "GroupedExample",
    "TaskSpec",
    "canonical_task",
    "load_examples",
    "load_grouped",
    "load_hub",
    "resolve_data_dir",
]
