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
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from mpcgen.data.e2e import Row, normalise_ws
from mpcgen.errors import MpcgenError


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


def read_rows(path: Path) -> list[Row]:
    """Read a WebNLG XML file or folder of files into ``(source, target, slots)`` rows, one per ``<lex>``."""
    rows: list[Row] = []
    for file in _xml_files(path):
        try:
            root = ET.parse(file).getroot()
        except ET.ParseError as err:
            line, column = err.position
            raise MpcgenError(f"{file}: line {line}, column {column}: malformed XML ({err.msg})") from None
        for index, entry in enumerate(root.iter("entry"), start=1):
            where = f"{file}: entry {index} (eid={entry.get('eid')!r})"
            triplesets = entry.findall("modifiedtripleset")
            if len(triplesets) != 1:
                raise MpcgenError(f"{where}: expected exactly one <modifiedtripleset>, found {len(triplesets)}")
            triples = [t.text or "" for t in triplesets[0].findall("mtriple")]
            if not triples:
                raise MpcgenError(f"{where}: <modifiedtripleset> has no <mtriple>")
            source, slots = linearise_triples(triples, where)
            lexes = entry.findall("lex")
            if not lexes:
                raise MpcgenError(f"{where}: no <lex> reference")
            for lex in lexes:
                text = normalise_ws("".join(lex.itertext()))
                if not text:
                    raise MpcgenError(f"{where}: <lex lid={lex.get('lid')!r}> is empty")
                rows.append((source, text, slots))
    return rows
