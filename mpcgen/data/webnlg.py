"""WebNLG v3.0 (English) reader.

Files (``webnlg/`` under the data folder): train and validation are folders of XML files
(``train/{1..7}triples/*.xml``, ``dev/{1..7}triples/*.xml``), read in sorted path order; test is the single file
``test/rdf-to-text-generation-test-data-with-refs-en.xml``. Each ``<entry>`` has exactly one
``<modifiedtripleset>`` (the generation input) and one or more ``<lex>`` (the references).

Source linearisation: the modified triples in document order, each written ``subject | property | object``, with
underscores in the entity names (subject, object) replaced by spaces and one enclosing pair of double
quotes stripped, joined with `` ; ``. Example: ``Aarhus Airport | cityServed | Aarhus, Denmark``. Properties keep
their camelCase.
Slots: ``(property, object)`` pairs, the object as it appears in the linearised source (cleaned as above).
Target: each ``<lex>`` text, whitespace-normalised.

Records: :func:`read_records` gives each ``<entry>`` as a row of the Hugging Face Hub's ``web_nlg``
(``release_v3.0_en``) after ``Dataset.flatten()``, restricted to :data:`HUB_COLUMNS` (the Hub's ``test_category``,
``dbpedia_links`` and ``links`` are left out: nothing here reads them). The Hub nests the triple sets and the
``lex`` list (``modified_triple_sets = {"mtriple_set": [[...]]}``, ``lex = {"text": [...], ...}``); flattening
keeps every value and gives one column per leaf, e.g. ``lex.text``. An attribute the XML lacks (``comment`` on test
``<lex>``, ``lang`` on train/dev ``<lex>``) is ``""``, as on the Hub. :func:`to_rows` turns such a record, from
these files or from the Hub, into rows.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mpcgen.data.e2e import Located, Row, normalise_ws
from mpcgen.errors import MpcgenError

MTRIPLES, LEX_TEXT = "modified_triple_sets.mtriple_set", "lex.text"
# The flattened Hub columns kept (see the module docstring); the order is the Hub's.
HUB_COLUMNS = ("category", "size", "eid", "original_triple_sets.otriple_set", MTRIPLES, "shape", "shape_type",
               "lex.comment", "lex.lid", LEX_TEXT, "lex.lang")


def clean_entity(text: str) -> str:
    """``Aarhus_Airport`` -> ``Aarhus Airport``; ``"Aarhus, Denmark"`` -> ``Aarhus, Denmark``.

    Only one enclosing pair of double quotes is removed: quotes inside a literal (``"Squeezed" or "smashed" fried
    chicken``, ``"52.0"(minutes)``) are part of its text and stay.
    """
    text = normalise_ws(text.replace("_", " "))
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1].strip()
    return text


def linearise_triples(triples: list[str], where: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Turn raw ``s | p | o`` strings into the source string and its ``(property, object)`` slots."""
    parts_out: list[str] = []
    slots: list[tuple[str, str]] = []
    for raw in triples:
        parts = raw.split(" | ")
        if len(parts) != 3:
            raise MpcgenError(f"{where}: triple {raw!r} is not 'subject | property | object'")
        subject, prop, obj = clean_entity(parts[0]), normalise_ws(parts[1]), clean_entity(parts[2])
        parts_out.append(f"{subject} | {prop} | {obj}")
        slots.append((prop, obj))
    return " ; ".join(parts_out), tuple(slots)


def _xml_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.xml"))
        if not files:
            raise MpcgenError(f"{path}: no .xml files found; expected WebNLG files such as 1triples/Airport.xml")
        return files
    return [path]


def to_rows(record: Mapping[str, Any], where: str) -> list[Row]:
    """A flattened Hub record (:data:`HUB_COLUMNS`) -> one ``(source, target, slots)`` row per ``lex.text``."""
    triple_sets, texts = record.get(MTRIPLES), record.get(LEX_TEXT)
    if not triple_sets or len(triple_sets) != 1 or not triple_sets[0]:
        raise MpcgenError(f"{where}: field {MTRIPLES!r} must hold exactly one non-empty triple set, "
                          f"got {triple_sets!r}")
    source, slots = linearise_triples(list(triple_sets[0]), where)
    if not texts:
        raise MpcgenError(f"{where}: field {LEX_TEXT!r} holds no reference")
    rows = []
    for lid, raw in zip(record.get("lex.lid") or [None] * len(texts), texts):
        text = normalise_ws(raw or "")
        if not text:
            raise MpcgenError(f"{where}: reference lid={lid!r} is empty")
        rows.append((source, text, slots))
    return rows


def _entry_record(entry: ET.Element, where: str) -> dict[str, Any]:
    """One ``<entry>`` as a flattened Hub record; the XML-level checks name the element to fix."""
    triplesets = entry.findall("modifiedtripleset")
    if len(triplesets) != 1:
        raise MpcgenError(f"{where}: expected exactly one <modifiedtripleset>, found {len(triplesets)}")
    triples = [t.text or "" for t in triplesets[0].findall("mtriple")]
    if not triples:
        raise MpcgenError(f"{where}: <modifiedtripleset> has no <mtriple>")
    lexes = entry.findall("lex")
    if not lexes:
        raise MpcgenError(f"{where}: no <lex> reference")
    size = entry.get("size")
    return {
        "category": entry.get("category", ""),
        "size": int(size) if size and size.isdigit() else len(triples),
        "eid": entry.get("eid", ""),
        "original_triple_sets.otriple_set": [[t.text or "" for t in s.findall("otriple")]
                                             for s in entry.findall("originaltripleset")],
        MTRIPLES: [triples],
        "shape": entry.get("shape", ""),
        "shape_type": entry.get("shape_type", ""),
        "lex.comment": [lex.get("comment", "") for lex in lexes],
        "lex.lid": [lex.get("lid", "") for lex in lexes],
        LEX_TEXT: ["".join(lex.itertext()) for lex in lexes],
        "lex.lang": [lex.get("lang", "") for lex in lexes],
    }


def read_records(path: Path) -> list[Located]:
    """Read a WebNLG XML file or folder of files into located flattened Hub records, one per ``<entry>``."""
    records: list[Located] = []
    for file in _xml_files(path):
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as err:
            line, column = err.position
            raise MpcgenError(f"{file}: line {line}, column {column}: malformed XML ({err.msg})") from None
        for index, entry in enumerate(root.iter("entry"), start=1):
            where = f"{file}: entry {index} (eid={entry.get('eid')!r})"
            records.append((where, _entry_record(entry, where)))
    return records


def read_rows(path: Path) -> list[Row]:
    """Read a WebNLG XML file or folder of files into ``(source, target, slots)`` rows, one per ``<lex>``."""
    return [row for where, record in read_records(path) for row in to_rows(record, where)]
