"""MultiWOZ 2.1 system-turn NLG reader (ConvLab-2 tokenisation).

Files (``multiwoz/`` under the data folder, JSON Lines): ``validation.jsonl``, ``test.jsonl`` and, only when a user
has placed one there, ``train.jsonl``. The staged copy has **no train split**; this module never substitutes
another split for it (the fine-tuning script decides what to train on and says so). Each line is
``{"dialogue_id": str, "turn": int, "acts": [[domain-intent, slot, value], ...], "text": str}``.

Source linearisation: acts grouped by domain-intent in order of first appearance, each group written
``Domain-Intent ( Slot = value ; Slot = value )``; the placeholder slot ``none`` (``general-reqmore``,
``general-bye``, ...) is left out, so such a group reads ``general-reqmore ( )``. Values are kept as annotated,
including ``?`` for requested slots. Example::

    Restaurant-Request ( Price = ? ) Restaurant-Inform ( Price = all price ranges )

Slots: ``("Domain-Intent-Slot", value)`` for every act whose value is not ``none`` or ``?`` (the values a
faithful output must contain). Target: the system utterance, whitespace-normalised.

Records: :func:`read_records` gives each line as one system turn of the Hugging Face Hub's ``multi_woz_v22``,
flattened (:data:`HUB_COLUMNS`). The Hub has one row per dialogue, its turns nested in ``turns``; here a row is one
system turn, its fields named by their path inside a turn: ``turn_id`` (``str(turn)``), ``utterance`` (``text``),
``dialogue_acts.dialog_act.act_type`` (one entry per run of acts with the same domain-intent) and, per entry, its
``...act_slots.slot_name`` and ``...act_slots.slot_value`` lists. Grouping consecutive acts keeps the file's order,
so the triples come back exactly. The Hub's ``services``, ``frames`` and ``span_info`` have no counterpart in the
staged copy and are left out. :func:`to_rows` turns such a record, from these files or from the Hub, into a row.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcgen.data.e2e import Located, Row, normalise_ws
from mpcgen.errors import MpcgenError

ACT_TYPE = "dialogue_acts.dialog_act.act_type"
SLOT_NAME = "dialogue_acts.dialog_act.act_slots.slot_name"
SLOT_VALUE = "dialogue_acts.dialog_act.act_slots.slot_value"
HUB_COLUMNS = ("dialogue_id", "turn_id", "utterance", ACT_TYPE, SLOT_NAME, SLOT_VALUE)

# Values that annotate an act without being text the utterance must contain.
NON_VALUES = frozenset({"none", "?"})


def linearise_acts(acts: list[tuple[str, str, str]]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Turn ``[domain-intent, slot, value]`` triples into the source string and its checkable slots."""
    groups: dict[str, list[str]] = {}
    slots: list[tuple[str, str]] = []
    for intent, slot, value in acts:
        parts = groups.setdefault(intent, [])
        if slot.lower() != "none":
            parts.append(f"{slot} = {value}")
        if value.lower() not in NON_VALUES:
            slots.append((f"{intent}-{slot}", value))
    source = " ".join(
        f"{intent} ( {' ; '.join(parts)} )" if parts else f"{intent} ( )" for intent, parts in groups.items()
    )
    return source, tuple(slots)


def _parse_acts(value: object, where: str) -> list[tuple[str, str, str]]:
    if not isinstance(value, list) or not value:
        raise MpcgenError(f"{where}: field 'acts' must be a non-empty list of [domain-intent, slot, value]")
    acts = []
    for number, act in enumerate(value, start=1):
        if not (isinstance(act, list) and len(act) == 3 and all(isinstance(x, str) for x in act)):
            raise MpcgenError(f"{where}: act {number} is {act!r}, expected [domain-intent, slot, value] strings")
        acts.append((normalise_ws(act[0]), normalise_ws(act[1]), normalise_ws(act[2])))
    return acts


def group_acts(acts: list[tuple[str, str, str]]) -> dict[str, list]:
    """``[domain-intent, slot, value]`` triples -> the Hub's act columns (one entry per run of one domain-intent)."""
    types: list[str] = []
    names: list[list[str]] = []
    values: list[list[str]] = []
    for intent, slot, value in acts:
        if not types or types[-1] != intent:
            types.append(intent)
            names.append([])
            values.append([])
        names[-1].append(slot)
        values[-1].append(value)
    return {ACT_TYPE: types, SLOT_NAME: names, SLOT_VALUE: values}


def to_rows(record: Mapping[str, Any], where: str) -> list[Row]:
    """A flattened Hub system turn (:data:`HUB_COLUMNS`) -> its ``(source, target, slots)`` row; none without acts."""
    types, names, values = (record.get(key) or [] for key in (ACT_TYPE, SLOT_NAME, SLOT_VALUE))
    if not len(types) == len(names) == len(values):
        raise MpcgenError(f"{where}: {ACT_TYPE!r}, {SLOT_NAME!r} and {SLOT_VALUE!r} differ in length")
    acts = []
    for intent, slot_names, slot_values in zip(types, names, values):
        if len(slot_names) != len(slot_values):
            raise MpcgenError(f"{where}: act {intent!r} has {len(slot_names)} slot names but {len(slot_values)} values")
        acts += [(normalise_ws(intent), normalise_ws(n), normalise_ws(v)) for n, v in zip(slot_names, slot_values)]
    if not acts:  # turns without acts are dropped, as the staged copy was made
        return []
    utterance = record.get("utterance")
    if not isinstance(utterance, str) or not utterance.strip():
        raise MpcgenError(f"{where}: field 'utterance' must be a non-empty string")
    source, slots = linearise_acts(acts)
    return [(source, normalise_ws(utterance), slots)]


def read_records(path: Path) -> list[Located]:
    """Read one MultiWOZ JSONL file into located flattened Hub records, one per system turn, in file order."""
    records: list[Located] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}: line {line_number}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise MpcgenError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
                if not isinstance(record, dict):
                    raise MpcgenError(f"{where}: expected a JSON object, found {type(record).__name__}")
                for field in ("acts", "text"):
                    if field not in record:
                        raise MpcgenError(f"{where}: field '{field}' is missing")
                if not isinstance(record["text"], str) or not record["text"].strip():
                    raise MpcgenError(f"{where}: field 'text' must be a non-empty string")
                _parse_acts(record["acts"], where)  # validates; the record keeps the strings as written
                records.append((where, {"dialogue_id": str(record.get("dialogue_id", "")),
                                        "turn_id": str(record.get("turn", "")), "utterance": record["text"],
                                        **group_acts([tuple(act) for act in record["acts"]])}))
    except UnicodeDecodeError as err:
        raise MpcgenError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from None
    return records


def read_rows(path: Path) -> list[Row]:
    """Read one MultiWOZ JSONL file into ``(source, target, slots)`` rows, one per system turn, in file order."""
    return [row for where, record in read_records(path) for row in to_rows(record, where)]
