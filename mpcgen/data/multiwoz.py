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
"""

from __future__ import annotations

import json
from pathlib import Path

from mpcgen.data.e2e import Row, normalise_ws
from mpcgen.errors import MpcgenError

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


def read_rows(path: Path) -> list[Row]:
    """Read one MultiWOZ JSONL file into ``(source, target, slots)`` rows, one per system turn, in file order."""
    rows: list[Row] = []
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
                source, slots = linearise_acts(_parse_acts(record["acts"], where))
                rows.append((source, normalise_ws(record["text"]), slots))
    except UnicodeDecodeError as err:
        raise MpcgenError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from None
    return rows
