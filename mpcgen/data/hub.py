"""The tasks as Hugging Face ``datasets``: staged files and Hub datasets in one schema, through one conversion.

Each task has one flat **Hub schema** (:func:`features`): the columns of its Hub dataset, flattened where the Hub
nests them (``Dataset.flatten()`` names, e.g. ``lex.text``), restricted to what the staged copy holds. What is
kept and how each staged file maps onto it is in the reader modules' docstrings (:mod:`mpcgen.data.e2e`,
:mod:`mpcgen.data.webnlg`, :mod:`mpcgen.data.multiwoz`).

* :func:`dataset_dict` builds a ``DatasetDict`` from records read from the staged files (``read_records``).
* :func:`load_dataset_dict` calls ``datasets.load_dataset(path, name, **kwargs)``: the task's Hub dataset by default,
  or any builder (``"json"``, ``"parquet"`` with ``data_files=...``); :func:`to_schema` then flattens the result.
* :func:`dataset_rows` turns any of these into ``(source, target, slots)`` rows with the reader modules' ``to_rows``,
  the function the offline loaders use too, so a prompt is the same whichever way the data came.

Hub datasets (path, config; the Hub's ``dev`` split is our ``validation``):

* ``e2e_nlg``: ``tuetschek/e2e_nlg``: ``meaning_representation``, ``human_reference``; one row per reference.
* ``web_nlg``: ``webnlg-challenge/web_nlg``, ``release_v3.0_en``: one row per entry; flattened.
* ``multiwoz_nlg``: ``pfb30/multi_woz_v22``: MultiWOZ **2.2**, one row per dialogue with raw (untokenised) wording
  and 2.2's act annotation, not the ConvLab-tokenised 2.1 staged here: figures are not comparable with the offline
  copy. :func:`to_schema` keeps its system turns that have acts, one row each.

The Hub itself is not reached by the test-suite (no network here); the same code runs on local JSON and parquet
files in the Hub's shape (``tests/test_conventions.py``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mpcgen.data import e2e, multiwoz, webnlg
from mpcgen.data.e2e import Row
from mpcgen.errors import MpcgenError

if TYPE_CHECKING:  # an optional dependency: imported where used
    import datasets

# task -> (Hub path, config)
HUB_NAMES: dict[str, tuple[str, str | None]] = {
    "e2e_nlg": ("tuetschek/e2e_nlg", None),
    "web_nlg": ("webnlg-challenge/web_nlg", "release_v3.0_en"),
    "multiwoz_nlg": ("pfb30/multi_woz_v22", None),
}
# Hub split names that differ from ours.
SPLIT_RENAMES = {"dev": "validation"}


def _datasets():
    try:
        import datasets
    except ImportError:
        raise MpcgenError("this needs the 'datasets' package (pip install datasets); the plain loaders "
                          "(mpcgen.data.load_examples) do not") from None
    return datasets


def features(task: str) -> datasets.Features:
    """The flat Hub schema of ``task`` (a canonical name), columns in the reader module's ``HUB_COLUMNS`` order."""
    ds = _datasets()
    text = ds.Value("string")
    texts = ds.List(text)
    by_task: dict[str, dict[str, Any]] = {
        "e2e_nlg": {name: text for name in e2e.HUB_COLUMNS},
        "web_nlg": {"category": text, "size": ds.Value("int32"), "eid": text,
                    "original_triple_sets.otriple_set": ds.List(texts), webnlg.MTRIPLES: ds.List(texts),
                    "shape": text, "shape_type": text, "lex.comment": texts, "lex.lid": texts,
                    webnlg.LEX_TEXT: texts, "lex.lang": texts},
        "multiwoz_nlg": {"dialogue_id": text, "turn_id": text, "utterance": text, multiwoz.ACT_TYPE: texts,
                         multiwoz.SLOT_NAME: ds.List(texts), multiwoz.SLOT_VALUE: ds.List(texts)},
    }
    return ds.Features(by_task[task])


def _system_turns(dialogue: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """A ``multi_woz_v22`` dialogue -> its system turns with acts, as flat records."""
    turns = dialogue["turns"]
    for turn_id, speaker, utterance, acts in zip(turns["turn_id"], turns["speaker"], turns["utterance"],
                                                  turns["dialogue_acts"]):
        if speaker not in (1, "SYSTEM"):  # a ClassLabel on the Hub: 0 = USER, 1 = SYSTEM
            continue
        dialog_act = acts["dialog_act"]
        names = [list(slots["slot_name"]) for slots in dialog_act["act_slots"]]
        if not any(names):  # as the staged copy was made: turns without acts are dropped
            continue
        yield {"dialogue_id": dialogue["dialogue_id"], "turn_id": str(turn_id), "utterance": utterance,
               multiwoz.ACT_TYPE: list(dialog_act["act_type"]), multiwoz.SLOT_NAME: names,
               multiwoz.SLOT_VALUE: [list(slots["slot_value"]) for slots in dialog_act["act_slots"]]}


def to_schema(task: str, dataset: datasets.Dataset) -> datasets.Dataset:
    """Bring a dataset in the Hub's own shape (nested) or already flat to the flat schema of ``task``."""
    ds = _datasets()
    schema = features(task)
    if dataset.features == schema:
        return dataset
    if task == "web_nlg" and "lex" in dataset.column_names:
        dataset = dataset.flatten()
    if task == "multiwoz_nlg" and "turns" in dataset.column_names:
        dataset = ds.Dataset.from_list([turn for dialogue in dataset for turn in _system_turns(dialogue)],
                                       features=schema)
    missing = [name for name in schema if name not in dataset.column_names]
    if missing:
        raise MpcgenError(f"{task}: the dataset lacks column(s) {missing} (it has {dataset.column_names}); "
                          f"expected the Hub's columns {list(schema)} (nested or flattened)")
    return dataset.select_columns(list(schema)).cast(schema)


def dataset_dict(task: str, records: Mapping[str, Sequence[Mapping[str, Any]]]) -> datasets.DatasetDict:
    """``{split: records}`` (flat Hub-schema dicts, e.g. from a reader's ``read_records``) -> a ``DatasetDict``."""
    ds = _datasets()
    schema = features(task)
    return ds.DatasetDict({split: ds.Dataset.from_list(list(rows), features=schema) for split, rows in records.items()})


def load_dataset_dict(task: str, *, path: str | None = None, name: str | None = None,
                      splits: Sequence[str] | None = None, **load_kwargs: Any) -> datasets.DatasetDict:
    """``datasets.load_dataset(path, name, **load_kwargs)`` (the task's Hub dataset by default) in the flat schema.

    Split ``dev`` becomes ``validation``; ``splits`` keeps only those. ``task`` must be canonical.
    """
    ds = _datasets()
    if "split" in load_kwargs:
        raise MpcgenError("pass splits=[...] (our split names), not split=...")
    if path is None:
        path, default_name = HUB_NAMES[task]
        name = name or default_name
    try:
        loaded = ds.load_dataset(path, name, **load_kwargs)
    except Exception as err:  # network, auth, a renamed dataset or bad data_files: all user-fixable
        raise MpcgenError(f"could not load {path} ({name or 'default'}) for {task}: {err}") from err
    renamed = {SPLIT_RENAMES.get(split, split): data for split, data in loaded.items()}
    wanted = list(splits) if splits is not None else list(renamed)
    absent = [split for split in wanted if split not in renamed]
    if absent:
        raise MpcgenError(f"{path} has no split(s) {absent}; it has {sorted(renamed)}")
    return ds.DatasetDict({split: to_schema(task, renamed[split]) for split in wanted})


def dataset_rows(task: str, dataset: datasets.Dataset) -> list[Row]:
    """``(source, target, slots)`` rows of a dataset in the Hub's shape, nested or flat, in row order."""
    from mpcgen.data import TASKS  # the registry holds each task's to_rows

    convert = TASKS[task].to_rows
    return [row for index, record in enumerate(to_schema(task, dataset))
            for row in convert(record, f"{task} row {index}")]
