"""E2E NLG Challenge (restaurant domain) reader.

Files (``e2e/`` under the data folder, UTF-8 CSV with header ``mr,ref``): ``trainset.csv`` (train),
``devset.csv`` (validation), ``testset_w_refs.csv`` (test). One row per human reference; several rows share an MR.

Source linearisation: the MR string as given, whitespace-normalised, for example
``name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]``.
The MR is already compact and every attribute name is a readable word, so prompts stay in the dataset's own form.
Slots: the MR's ``(attribute, value)`` pairs in order, e.g. ``("customer rating", "5 out of 5")``.
Target: the reference text, whitespace-normalised.

Records: :func:`read_records` gives each CSV row as the Hugging Face Hub's ``e2e_nlg`` row
(:data:`HUB_COLUMNS`); :func:`to_rows` turns such a record, from this file or from the Hub, into a row.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcgen.errors import MpcgenError

Slots = tuple[tuple[str, str], ...]
Row = tuple[str, str, Slots]
# A record located for error messages: ("<file>: row 3 (line 4)", {column: value}).
Located = tuple[str, dict[str, Any]]

# The Hub's e2e_nlg columns: one row per reference, as in the CSV files ("mr", "ref").
HUB_COLUMNS = ("meaning_representation", "human_reference")

# attr[value]; attribute names may contain spaces ("customer rating"), values may not contain brackets.
_PAIR = re.compile(r"\s*([^\[\],]+?)\s*\[([^\[\]]*)\]\s*(?:,|$)")


def normalise_ws(text: str) -> str:
    """Collapse runs of whitespace to one space and strip both ends."""
    return " ".join(text.split())


def parse_mr(mr: str) -> Slots:
    """Parse ``attr[value], attr[value], ...`` into ``(attr, value)`` pairs; ValueError if it is not that shape."""
    pairs: list[tuple[str, str]] = []
    pos = 0
    text = mr.strip()
    while pos < len(text):
        match = _PAIR.match(text, pos)
        if match is None:
            raise ValueError(f"expected 'attribute[value]' at character {pos} of {mr!r}")
        pairs.append((normalise_ws(match.group(1)), normalise_ws(match.group(2))))
        pos = match.end()
    if not pairs:
        raise ValueError(f"no 'attribute[value]' pairs in {mr!r}")
    return tuple(pairs)


def to_rows(record: Mapping[str, Any], where: str) -> list[Row]:
    """A :data:`HUB_COLUMNS` record -> its one ``(source, target, slots)`` row; ``where`` prefixes errors."""
    mr, ref = (record.get(name) for name in HUB_COLUMNS)
    for name, value in zip(HUB_COLUMNS, (mr, ref)):
        if not isinstance(value, str) or not value.strip():
            raise MpcgenError(f"{where}: field {name!r} is missing or empty")
    try:
        slots = parse_mr(mr)
    except ValueError as err:
        raise MpcgenError(f"{where}: the meaning representation is not 'attribute[value], ...': {err}") from None
    return [(normalise_ws(mr), normalise_ws(ref), slots)]


def read_records(path: Path) -> list[Located]:
    """Read one E2E CSV file into located :data:`HUB_COLUMNS` records, one per reference, in file order."""
    records: list[Located] = []
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            missing = [name for name in ("mr", "ref") if name not in header]
            if missing:
                raise MpcgenError(
                    f"{path}: line 1: header {header} lacks column(s) {missing}; an E2E file needs columns 'mr,ref'"
                )
            for row_number, record in enumerate(reader, start=1):
                where = f"{path}: row {row_number} (line {reader.line_num})"
                # The file's own column names in these messages: they point at what to fix in the CSV.
                for field in ("mr", "ref"):
                    if record.get(field) is None or not record[field].strip():
                        raise MpcgenError(f"{where}: field '{field}' is missing or empty")
                records.append((where, dict(zip(HUB_COLUMNS, (record["mr"], record["ref"])))))
    except csv.Error as err:
        raise MpcgenError(f"{path}: line {reader.line_num}: malformed CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise MpcgenError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from None
    return records


def read_rows(path: Path) -> list[Row]:
    """Read one E2E CSV file into ``(source, target, slots)`` rows, one per reference, in file order."""
    return [row for where, record in read_records(path) for row in to_rows(record, where)]
