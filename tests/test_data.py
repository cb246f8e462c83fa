"""mpcgen.data: exact counts on the staged files, linearisation, missing/malformed files, registry, data folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpcgen.data import (
    ALIASES,
    DEFAULT_DATA_DIR,
    TASKS,
    Example,
    GroupedExample,
    canonical_task,
    load_examples,
    load_grouped,
    resolve_data_dir,
)
from mpcgen.errors import MpcgenError

REPO_ROOT = Path(__file__).resolve().parents[1]

# (task, split, references, distinct sources). Reference counts are the data README's; WebNLG has 88 (train) and
# 2 (validation) entries whose triple set repeats another entry's, so 13211 / 1667 entries give 13123 / 1665 sources.
COUNTS = [
    ("e2e_nlg", "train", 42061, 4862),
    ("e2e_nlg", "validation", 4672, 547),
    ("e2e_nlg", "test", 4693, 630),
    ("web_nlg", "train", 35426, 13123),
    ("web_nlg", "validation", 4464, 1665),
    ("web_nlg", "test", 5150, 1779),
    ("multiwoz_nlg", "validation", 7286, 4842),
    ("multiwoz_nlg", "test", 7293, 4871),
]


@pytest.mark.parametrize("task,split,n_refs,n_sources", COUNTS)
def test_counts(data_dir, task, split, n_refs, n_sources):
    examples = load_examples(task, split, data_dir)
    grouped = load_grouped(task, split, data_dir)
    assert len(examples) == n_refs
    assert len(grouped) == n_sources
    assert sum(len(g.references) for g in grouped) == n_refs
    # Grouping keeps first-appearance order and every reference in file order.
    assert grouped[0].source == examples[0].source and grouped[0].references[0] == examples[0].target
    assert len({g.source for g in grouped}) == n_sources


def test_e2e_first_example(data_dir):
    first = load_grouped("e2e", "train", data_dir)[0]
    assert first.source == (
        "name[The Vaults], eatType[pub], priceRange[more than £30], customer rating[5 out of 5], near[Café Adriatic]"
    )
    assert first.slots == (
        ("name", "The Vaults"),
        ("eatType", "pub"),
        ("priceRange", "more than £30"),
        ("customer rating", "5 out of 5"),
        ("near", "Café Adriatic"),
    )
    # The file has two spaces after "rating."; targets are whitespace-normalised.
    assert first.references[0] == "The Vaults pub near Café Adriatic has a 5 star rating. Prices start at £30."
    assert load_examples("e2e", "test", data_dir)[0] == Example(
        "name[Blue Spice], eatType[coffee shop], area[city centre]",
        "A coffee shop in the city centre area called Blue Spice.",
    )


def test_webnlg_linearisation(data_dir):
    train = load_grouped("webnlg", "train", data_dir)
    # Quotes of the literal stripped, underscores of the entity replaced.
    assert train[0] == GroupedExample(
        "Aarhus Airport | cityServed | Aarhus, Denmark",
        ("The Aarhus is the airport of Aarhus, Denmark.", "Aarhus Airport serves the city of Aarhus, Denmark."),
        (("cityServed", "Aarhus, Denmark"),),
    )
    two = next(g for g in train if g.source.startswith("Aarhus | leader | Jacob Bundsgaard ;"))
    assert two.source == "Aarhus | leader | Jacob Bundsgaard ; Aarhus Airport | cityServed | Aarhus"
    assert two.slots == (("leader", "Jacob Bundsgaard"), ("cityServed", "Aarhus"))
    assert len(two.references) == 3
    test = load_examples("webnlg", "test", data_dir)
    assert Example("MotorSport Vision | city | Fawkham", "MotorSport Vision is located in Fawkham.") in test


def test_multiwoz_linearisation(data_dir):
    examples = load_examples("multiwoz", "validation", data_dir)
    assert examples[0].source == "Restaurant-Request ( Price = ? ) Restaurant-Inform ( Price = all price ranges )"
    assert examples[1].source == (
        "Restaurant-Recommend ( Name = Charlie Chan ; Addr = Regent Street City Centre ; Price = cheap ; "
        "Post = cb21db ) general-reqmore ( )"
    )
    assert examples[1].target.startswith("Ok how about Charlie Chan , located at")
    grouped = load_grouped("multiwoz", "validation", data_dir)
    assert grouped[0].slots == (("Restaurant-Inform-Price", "all price ranges"),)  # "?" is not a value


def _small_multiwoz(data_dir: Path, tmp_path: Path) -> Path:
    (tmp_path / "multiwoz").mkdir()
    with open(data_dir / "multiwoz" / "validation.jsonl", encoding="utf-8") as handle:
        head = [next(handle) for _ in range(3)]
    (tmp_path / "multiwoz" / "validation.jsonl").write_text("".join(head), encoding="utf-8")
    return tmp_path / "multiwoz"


def test_multiwoz_train_missing_then_present(data_dir, tmp_path):
    folder = _small_multiwoz(data_dir, tmp_path)
    with pytest.raises(MpcgenError, match="no train split.*'validation'"):
        load_examples("multiwoz", "train", tmp_path)
    (folder / "train.jsonl").write_text((folder / "validation.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    assert load_examples("multiwoz", "train", tmp_path) == load_examples("multiwoz", "validation", tmp_path)
    assert len(load_examples("multiwoz", "train", tmp_path)) == 3


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


GOOD_MR = '"name[The Eagle], food[French]",The Eagle serves French food.\n'


@pytest.mark.parametrize(
    "body,expected",
    [
        ("mr,ref\n" + GOOD_MR + '"name[The Mill]",\n', r"row 2 \(line 3\).*'ref'"),
        ("mr,ref\n" + GOOD_MR + '"name The Mill",The Mill.\n', r"row 2 \(line 3\).*meaning representation"),
        ("meaning,ref\n" + GOOD_MR, r"line 1.*lacks column.*'mr'"),
    ],
)
def test_malformed_csv(tmp_path, body, expected):
    path = _write(tmp_path / "e2e" / "devset.csv", body)
    with pytest.raises(MpcgenError, match=expected) as info:
        load_examples("e2e", "validation", tmp_path)
    assert str(path) in str(info.value)


def test_malformed_jsonl(tmp_path):
    good = json.dumps({"dialogue_id": "X.json", "turn": 1, "acts": [["general-bye", "none", "none"]], "text": "Bye ."})
    path = _write(tmp_path / "multiwoz" / "test.jsonl", good + "\n" + '{"acts": [["general-bye", "none"\n')
    with pytest.raises(MpcgenError, match=rf"{path}: line 2: malformed JSON"):
        load_examples("multiwoz", "test", tmp_path)
    _write(path, good + "\n\n" + json.dumps({"acts": [["general-bye", "none", "none"]]}) + "\n")
    with pytest.raises(MpcgenError, match=r"line 3: field 'text' is missing"):
        load_examples("multiwoz", "test", tmp_path)
    _write(path, json.dumps({"acts": [["general-bye", "none"]], "text": "Bye ."}) + "\n")
    with pytest.raises(MpcgenError, match=r"line 1: act 1 .*\[domain-intent, slot, value\]"):
        load_examples("multiwoz", "test", tmp_path)


ENTRY = (
    '<entry eid="Id1"><modifiedtripleset><mtriple>A_b | p | "C d"</mtriple></modifiedtripleset>'
    "<lex>A b p C d.</lex></entry>"
)


def test_malformed_xml(tmp_path):
    test_file = tmp_path / "webnlg" / "test" / "rdf-to-text-generation-test-data-with-refs-en.xml"
    _write(test_file, f"<benchmark><entries>{ENTRY}</entries></benchmark>")
    expected = GroupedExample("A b | p | C d", ("A b p C d.",), (("p", "C d"),))
    assert load_grouped("webnlg", "test", tmp_path) == [expected]
    _write(test_file, f"<benchmark><entries>\n{ENTRY}\n<entry eid='Id2'>\n</entries></benchmark>")
    with pytest.raises(MpcgenError, match=r"rdf-to-text-generation-test-data-with-refs-en.xml: line 4, column \d+"):
        load_grouped("webnlg", "test", tmp_path)
    no_lex = ENTRY.replace("<lex>A b p C d.</lex>", "")
    _write(test_file, f"<benchmark><entries>{ENTRY}{no_lex.replace('Id1', 'Id2')}</entries></benchmark>")
    with pytest.raises(MpcgenError, match=r"entry 2 \(eid='Id2'\): no <lex>"):
        load_grouped("webnlg", "test", tmp_path)
    _write(test_file, f"<benchmark><entries>{ENTRY.replace(' | p | ', ' | ')}</entries></benchmark>")
    with pytest.raises(MpcgenError, match=r"triple 'A_b \| \"C d\"' is not"):
        load_grouped("webnlg", "test", tmp_path)


def test_missing_split_file(tmp_path):
    (tmp_path / "e2e").mkdir()
    with pytest.raises(MpcgenError, match=r"e2e_nlg test split not found: .*testset_w_refs.csv"):
        load_examples("e2e", "test", tmp_path)
    with pytest.raises(MpcgenError, match=r"unknown split 'dev'.*'validation'"):
        load_examples("e2e", "dev", tmp_path)


def test_registry_and_aliases():
    assert sorted(TASKS) == ["e2e_nlg", "multiwoz_nlg", "web_nlg"]
    assert all(TASKS[name].name == name for name in TASKS)
    assert {alias: canonical_task(alias) for alias in ALIASES} == ALIASES
    assert canonical_task("E2E-NLG") == "e2e_nlg"
    assert [TASKS[n].has_slots for n in sorted(TASKS)] == [True, True, False]
    with pytest.raises(MpcgenError) as info:
        canonical_task("dart")
    message = str(info.value)
    assert "'dart'" in message and str(sorted(TASKS)) in message
    assert all(alias in message for alias in ALIASES)


def test_resolve_data_dir(tmp_path, monkeypatch):
    here, there = tmp_path / "arg", tmp_path / "env"
    here.mkdir()
    there.mkdir()
    monkeypatch.setenv("MPCGEN_DATA_DIR", str(there))
    assert resolve_data_dir(here) == here  # argument beats the environment
    assert resolve_data_dir(str(here)) == here
    assert resolve_data_dir() == there
    monkeypatch.delenv("MPCGEN_DATA_DIR")
    # The default is found from the package location, beside the checkout.
    assert DEFAULT_DATA_DIR == REPO_ROOT.parent / "shared" / "data"
    if DEFAULT_DATA_DIR.is_dir():
        assert resolve_data_dir() == DEFAULT_DATA_DIR
    missing = tmp_path / "nowhere"
    monkeypatch.setenv("MPCGEN_DATA_DIR", str(missing))
    with pytest.raises(MpcgenError, match=rf"{missing} \(from \$MPCGEN_DATA_DIR\).*--data-dir or MPCGEN_DATA_DIR"):
        resolve_data_dir()
    with pytest.raises(MpcgenError, match="from the data_dir argument"):
        resolve_data_dir(missing)
