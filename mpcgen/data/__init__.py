"""Datasets: a task registry and loaders for the staged offline copies of E2E, WebNLG v3.0 and MultiWOZ 2.1.

Every loader turns a split into ``(source, target)`` pairs whose ``source`` is a compact, deterministic
linearisation of the structured input (see each reader module's docstring: :mod:`mpcgen.data.e2e`,
:mod:`mpcgen.data.webnlg`, :mod:`mpcgen.data.multiwoz`); later stages feed it to models as the prompt.

Where the data lives (:func:`resolve_data_dir`): an explicit ``data_dir`` argument, else ``$MPCGEN_DATA_DIR``, else
``../shared/data`` beside the repository checkout. The folder holds ``e2e/``, ``webnlg/`` and ``multiwoz/`` as
described in its README.

As Hugging Face ``datasets`` (optional dependency; :mod:`mpcgen.data.hub`): :func:`load_dataset_dict` gives the staged
files in the Hub datasets' column names, :func:`load_hub_dataset_dict` loads the Hub (or local JSON/parquet files in
its shape), and :func:`examples_from_dataset` / :func:`grouped_from_dataset` convert either with the same code as
:func:`load_examples`.

Example::

    from mpcgen.data import load_grouped
    test = load_grouped("e2e", "test")          # 630 MRs, each with all its references and its slots
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mpcgen.data import e2e, multiwoz, webnlg
from mpcgen.data.e2e import Located, Row
from mpcgen.errors import MpcgenError

if TYPE_CHECKING:  # an optional dependency, imported by mpcgen.data.hub where used
    import datasets

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

    ``splits`` maps each split to a path relative to the data folder; ``records`` reads that path into located
    records in the Hub's (flattened) column names; ``to_rows(record, where)`` turns one record, from the files or
    the Hub, into ``(source, target, slots)`` rows; ``missing`` holds a specific message for splits a copy may lack.
    """

    name: str
    description: str
    splits: Mapping[str, str]
    records: Callable[[Path], list[Located]]
    to_rows: Callable[[Mapping[str, Any], str], list[Row]]
    has_slots: bool
    licence: str
    missing: Mapping[str, str] = field(default_factory=dict)


TASKS: dict[str, TaskSpec] = {
    "e2e_nlg": TaskSpec(
        name="e2e_nlg",
        description="E2E NLG Challenge: restaurant meaning representations -> descriptions",
        splits={"train": "e2e/trainset.csv", "validation": "e2e/devset.csv", "test": "e2e/testset_w_refs.csv"},
        records=e2e.read_records,
        to_rows=e2e.to_rows,
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
        records=webnlg.read_records,
        to_rows=webnlg.to_rows,
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
        records=multiwoz.read_records,
        to_rows=multiwoz.to_rows,
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


def _split_path(spec: TaskSpec, split: str, data_dir: str | os.PathLike | None) -> Path:
    """The staged file or folder of ``split``; MpcgenError (with the task's own hint) when it is absent."""
    path = resolve_data_dir(data_dir) / spec.splits[_check_split(split)]
    if not path.exists():
        if split in spec.missing:
            raise MpcgenError(f"{spec.name}: " + spec.missing[split].format(path=path))
        raise MpcgenError(
            f"{spec.name} {split} split not found: {path} does not exist; check --data-dir or {DATA_DIR_ENV}"
        )
    return path


def _read(task: str, split: str, data_dir: str | os.PathLike | None) -> list[Row]:
    spec = TASKS[canonical_task(task)]
    path = _split_path(spec, split, data_dir)
    rows = [row for where, record in spec.records(path) for row in spec.to_rows(record, where)]
    if not rows:
        raise MpcgenError(f"{path}: no examples found in the {spec.name} {split} split")
    logger.debug("read %d %s %s rows from %s", len(rows), spec.name, split, path)
    return rows


def _group(rows: Iterable[Row]) -> list[GroupedExample]:
    grouped: dict[str, tuple[list[str], tuple[tuple[str, str], ...]]] = {}
    for source, target, slots in rows:
        grouped.setdefault(source, ([], slots))[0].append(target)
    return [GroupedExample(source, tuple(refs), slots) for source, (refs, slots) in grouped.items()]


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
    return _group(_read(task, split, data_dir))


def load_dataset_dict(task: str, data_dir: str | os.PathLike | None = None, *,
                      splits: Sequence[str] | None = None) -> datasets.DatasetDict:
    """The staged files as a ``datasets.DatasetDict`` with the Hub datasets' (flattened) column names.

    Args:
        task: a name from :data:`TASKS` or :data:`ALIASES`.
        data_dir: the staged data folder; see :func:`resolve_data_dir`.
        splits: the splits to load; ``None``: every split whose file exists (MultiWOZ here: no ``train``).

    Returns:
        ``DatasetDict`` of raw records (one per file row / entry / system turn; text not normalised):
        :func:`examples_from_dataset` converts a split exactly as :func:`load_examples` would.
    """
    from mpcgen.data import hub  # lazy: keeps `datasets` optional

    spec = TASKS[canonical_task(task)]
    if splits is None:
        root = resolve_data_dir(data_dir)
        splits = [split for split in SPLITS if (root / spec.splits[split]).exists()]
    paths = {split: _split_path(spec, split, data_dir) for split in splits}
    return hub.dataset_dict(spec.name, {split: [record for _, record in spec.records(path)]
                                        for split, path in paths.items()})


def load_hub_dataset_dict(task: str, *, path: str | None = None, name: str | None = None,
                          splits: Sequence[str] | None = None, **load_kwargs: Any) -> datasets.DatasetDict:
    """``datasets.load_dataset`` of the task's Hub dataset (needs network), in the schema of :func:`load_dataset_dict`.

    ``path``/``name``/``load_kwargs`` go to ``datasets.load_dataset`` instead, e.g. ``path="json",
    data_files={"test": "test.jsonl"}`` for local files in the Hub's shape (nested, or flattened). The Hub's ``dev``
    split is returned as ``validation``. Hub names, and how MultiWOZ there (2.2) differs from the staged 2.1:
    :mod:`mpcgen.data.hub`.
    """
    from mpcgen.data import hub

    return hub.load_dataset_dict(canonical_task(task), path=path, name=name,
                                 splits=[_check_split(s) for s in splits] if splits is not None else None,
                                 **load_kwargs)


def examples_from_dataset(task: str, dataset: datasets.Dataset) -> list[Example]:
    """One :class:`Example` per reference of a split from :func:`load_dataset_dict` or :func:`load_hub_dataset_dict`
    (or any dataset in the Hub's shape), converted by the code behind :func:`load_examples`."""
    from mpcgen.data import hub

    return [Example(source, target) for source, target, _ in hub.dataset_rows(canonical_task(task), dataset)]


def grouped_from_dataset(task: str, dataset: datasets.Dataset) -> list[GroupedExample]:
    """:func:`load_grouped`'s view (one item per distinct source, all its references and slots) of a dataset."""
    from mpcgen.data import hub

    return _group(hub.dataset_rows(canonical_task(task), dataset))


def load_hub(task: str, split: str, **load_kwargs: Any) -> list[Example]:
    """Load a split from the Hugging Face Hub (needs ``datasets`` and network), linearised like the offline copy.

    Shorthand for ``examples_from_dataset(task, load_hub_dataset_dict(task, splits=[split], ...)[split])``.
    """
    data = load_hub_dataset_dict(task, splits=[split], **load_kwargs)
    return examples_from_dataset(task, data[split])


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
    "examples_from_dataset",
    "grouped_from_dataset",
    "load_dataset_dict",
    "load_examples",
    "load_grouped",
    "load_hub",
    "load_hub_dataset_dict",
    "resolve_data_dir",
]
