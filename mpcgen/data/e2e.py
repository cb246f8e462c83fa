"""E2E NLG Challenge (restaurant domain) reader.

Files (``e2e/`` under the data folder, UTF-8 CSV with header ``mr,ref``): ``trainset.csv`` (train),
``devset.csv`` (validation), ``testset_w_refs.csv`` (test). One row per human reference; several rows share an MR.

Source linearisation: the MR string as given, whitespace-normalised, for example
``name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]``.
The MR is already compact and every attribute name is a readable word, so prompts stay in the dataset's own form.
Slots: the MR's ``(attribute, value)`` pairs in order, e.g. ``("customer rating", "5 out of 5")``.
Target: the reference text, whitespace-normalised.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from mpcgen.errors import MpcgenError

Slots = tuple[tuple[str, str], ...]
Row = tuple[str, str, Slots]

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


def read_rows(path: Path) -> list[Row]:
    """Read one E2E CSV file into ``(source, target, slots)`` rows, one per reference, in file order."""
    rows: list[Row] = []
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
                for field in ("mr", "ref"):
                    if record.get(field) is None or not record[field].strip():
                        raise MpcgenError(f"{where}: field '{field}' is missing or empty")
                try:
                    slots = parse_mr(record["mr"])
                except ValueError as err:
                    raise MpcgenError(f"{where}: field 'mr' is not an E2E meaning representation: {err}") from None
                rows.append((normalise_ws(record["mr"]), normalise_ws(record["ref"]), slots))
    except csv.Error as err:
        raise MpcgenError(f"{path}: line {reader.line_num}: malformed CSV: {err}") from None
    except UnicodeDecodeError as err:
        raise MpcgenError(f"{path}: not UTF-8 text ({err}); re-save the file as UTF-8") from None
    return rows
