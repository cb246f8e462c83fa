"""Delexicalisation (mpcgen.data.delex): placeholders in sources and targets, values restored on the client, and
the scheme travelling with the tokenizer through training, evaluation and generation."""

from __future__ import annotations

import json
import re

import pytest

from mpcgen.data import delex, load_examples, multiwoz
from mpcgen.errors import MpcgenError

SOURCE = ("Train-Inform ( Id = TR1840 ; Leave = 16:36 ; Leave = 18:36 ; Day = monday ) "
          "Booking-Book ( Ref = NJB87PAP ; Name = Cambridge ) Train-OfferBook ( Id = TR1840 ) general-reqmore ( )")


def placeholders_found(examples, scheme: str) -> tuple[int, int]:
    """(placeholders found in the delexicalised references, placeholders the sources give)."""
    found = total = 0
    for ex in examples:
        _, values = delex.delexicalise_source(ex.source, scheme)
        target = delex.delexicalise_target(ex.target, values)
        found += sum(name in target for name in values)
        total += len(values)
    return found, total


def test_copy_type_values_become_numbered_placeholders_and_come_back():
    src, values = delex.delexicalise_source(SOURCE, "multiwoz")
    assert src == ("Train-Inform ( Id = [train_id] ; Leave = [train_leave] ; Leave = [train_leave_2] ; Day = monday ) "
                   "Booking-Book ( Ref = [booking_ref] ; Name = [booking_name] ) Train-OfferBook ( Id = [train_id] ) "
                   "general-reqmore ( )")  # one value given twice shares its placeholder; categorical Day stays
    assert values == {"[train_id]": "TR1840", "[train_leave]": "16:36", "[train_leave_2]": "18:36",
                      "[booking_ref]": "NJB87PAP", "[booking_name]": "Cambridge"}
    target = "tr1840 leaves cambridge at 16:36 , ref NJB87PAP . Cambridgeshire trains leave at 18:36 too ."
    delexed = delex.delexicalise_target(target, values)
    # Case-insensitive, whole words only ("Cambridgeshire" keeps its letters), longest value first, one pass.
    assert delexed == ("[train_id] leaves [booking_name] at [train_leave] , ref [booking_ref] . Cambridgeshire "
                       "trains leave at [train_leave_2] too .")
    assert delex.relexicalise(delexed, values) == ("TR1840 leaves Cambridge at 16:36 , ref NJB87PAP . Cambridgeshire "
                                                  "trains leave at 18:36 too .")
    # A placeholder the source did not give stays visible (the slot error rate counts what is missing).
    assert delex.relexicalise("call [hotel_phone] for [train_id]", values) == "call [hotel_phone] for TR1840"


def test_the_all_slots_scheme_also_replaces_categorical_values():
    src, values = delex.delexicalise_source(SOURCE, "multiwoz-all")
    assert "Day = [train_day]" in src and values["[train_day]"] == "monday"
    assert delex.delexicalise_target("it leaves on Monday at 16:36", values) == "it leaves on [train_day] at [train_leave]"


def test_every_staged_source_parses_back_to_its_acts():
    examples = load_examples("multiwoz", "test")
    for ex in examples:
        assert multiwoz.linearise_acts(delex.parse_source(ex.source))[0] == ex.source
    # And most copy-type values are found verbatim in their references (placeholders the model learns to write).
    found, total = placeholders_found(examples[:2000], "multiwoz")
    assert total > 500 and found / total > 0.95


@pytest.mark.parametrize("bad", ["name[The Eagle], food[French]", "Train-Inform ( Id = TR1 ", "Train-Inform ( Id )"])
def test_a_source_that_is_not_a_multiwoz_act_set_is_refused(bad):
    with pytest.raises(MpcgenError, match="MultiWOZ act source|not closed|not 'Slot = value'"):
        delex.delexicalise_source(bad, "multiwoz")
    with pytest.raises(MpcgenError, match="unknown delexicalisation scheme"):
        delex.delexicalise_source(SOURCE, "bogus")


def test_e2e_names_become_placeholders():
    src, values = delex.delexicalise_source("name[The Eagle], eatType[pub], near[Burger King]", "e2e")
    assert src == "name[[name]], eatType[pub], near[[near]]"
    assert values == {"[name]": "The Eagle", "[near]": "Burger King"}
    target = delex.delexicalise_target("The Eagle is a pub near burger king.", values)
    assert target == "[name] is a pub near [near]."
    assert delex.relexicalise(target, values) == "The Eagle is a pub near Burger King."
    with pytest.raises(MpcgenError, match="not an E2E meaning representation"):
        delex.delexicalise_source(SOURCE, "e2e")
    # Nearly every E2E reference names its venue verbatim.
    found, total = placeholders_found(load_examples("e2e", "test"), "e2e")
    assert total > 4000 and found / total > 0.95


WEBNLG = ("Twilight (band) | genre | Black metal ; Twilight (band) | activeYearsStartYear | 2005.0 ; "
          "Binali Yıldırım | birthPlace | Erzincan")


def test_webnlg_entities_are_tagged_in_the_source_and_replaced_in_the_target():
    src, values = delex.delexicalise_source(WEBNLG, "webnlg")
    # Values stay in the source (the model may need to paraphrase them); one entity, one tag wherever it occurs.
    assert src == ("Twilight (band) [entity_1] | genre | Black metal [entity_2] ; Twilight (band) [entity_1] | "
                   "activeYearsStartYear | 2005.0 [entity_3] ; Binali Yıldırım [entity_4] | birthPlace | "
                   "Erzincan [entity_5]")
    # The restored form drops the qualifier and a whole float's ".0".
    assert values == {"[entity_1]": "Twilight", "[entity_2]": "Black metal", "[entity_3]": "2005",
                      "[entity_4]": "Binali Yıldırım", "[entity_5]": "Erzincan"}
    target = "Twilight, a black metal band formed in 2005 (not 20050), shares Binali Yildirim's Erzincan roots."
    delexed = delex.delexicalise_target(target, values)
    # Case folding goes beyond str.lower() ("Yildirim" matches "Yıldırım"); whole words only.
    assert delexed == ("[entity_1], a [entity_2] band formed in [entity_3] (not 20050), shares [entity_4]'s "
                       "[entity_5] roots.")
    assert delex.relexicalise(delexed, values) == ("Twilight, a Black metal band formed in 2005 (not 20050), shares "
                                                  "Binali Yıldırım's Erzincan roots.")


@pytest.mark.parametrize("entity, shown", [("Twilight (band)", "Twilight"), ('"5.57"(days)', "5.57"),
                                           ("88.0", "88"), ("-3.0", "-3"), ("1.05", "1.05"), ("(band)", "(band)"),
                                           ("Austin, Texas", "Austin, Texas"), ("2015-06-27", "2015-06-27")])
def test_webnlg_display_forms(entity, shown):
    assert delex.webnlg_display(entity) == shown


def test_every_staged_webnlg_source_is_tagged_and_most_mentions_are_found():
    examples = load_examples("webnlg", "test")
    for ex in examples:
        src, _ = delex.delexicalise_source(ex.source, "webnlg")
        # Dropping the tags gives the source back.
        assert re.sub(r" \[entity_\d+\]", "", src) == ex.source
    found, total = placeholders_found(examples, "webnlg")
    assert total > 5000 and found / total > 0.8


@pytest.mark.parametrize("bad", ["name[The Eagle], food[French]", "A | b", "A | b | c ; | d | e"])
def test_a_source_that_is_not_a_webnlg_triple_set_is_refused(bad):
    with pytest.raises(MpcgenError, match="not a WebNLG triple source"):
        delex.delexicalise_source(bad, "webnlg")


def test_the_scheme_travels_with_the_tokenizer_into_evaluation(capsys, tmp_path, monkeypatch):
    """nlg.finetune --delex trains on placeholder pairs and marks the saved tokenizer; evaluation then feeds the
    model delexicalised sources and scores texts with the values put back."""
    from mpcgen import evaluation
    from mpcgen.generation import hf
    from mpcgen.models.loading import load_tokenizer
    from nlg.finetune import main

    out = tmp_path / "delex"
    assert main(["--task", "multiwoz", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--limit-train",
                 "200", "--limit-val", "16", "--batch-size", "8", "--vocab-size", "512", "--num-threads", "2",
                 "--max-steps", "2", "--eval-every", "2", "--delex", "multiwoz", "--out", str(out)]) == 0
    capsys.readouterr()
    tokenizer = load_tokenizer(out)
    assert delex.scheme_of(tokenizer) == "multiwoz"
    assert json.loads((out / "training_args.json").read_text())["delex"] == "multiwoz"

    seen = []

    def echo(model, tok, sources, **kwargs):  # the model's side: what it is given, and a text with placeholders
        seen.extend(sources)
        return [" ".join(w for w in s.split() if w.startswith("[")) for s in sources]

    monkeypatch.setattr(hf, "generate_texts", echo)
    sources = [ex.source for ex in load_examples("multiwoz", "test")[:40]]
    texts, _ = evaluation.decode_sources(out, sources, evaluation.EvalSettings())
    assert seen and all("[" in s for s in seen if "=" in s and "Ref" in s)
    for source, text in zip(sources, texts):
        _, values = delex.delexicalise_source(source, "multiwoz")
        assert "[" not in text or any(v.startswith("[") for v in values.values())
        assert sorted(text.split()) == sorted(w for v in values.values() for w in v.split())


def test_delex_is_refused_for_a_task_it_cannot_read(tmp_path):
    from nlg.finetune import main

    assert main(["--task", "e2e", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--max-steps", "1",
                 "--delex", "multiwoz", "--out", str(tmp_path / "x")]) == 2
    assert main(["--task", "multiwoz", "--model", "gpt2", "--init", "scratch", "--size", "tiny", "--max-steps", "1",
                 "--delex", "webnlg", "--out", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_private_results_put_the_client_values_back():
    """The client's side of generate_private / generate_plain / the party CLI: its tokens decode to a text with
    placeholders, which get the values that never left the client."""
    from mpcgen.generation.private import results_for
    from mpcgen.tokenization import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(["your reference is [booking_ref] ."] * 20, 300)
    tokens = tokenizer("your reference is [booking_ref] .", add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    prompt = "Booking-Book ( Ref = NJB87PAP )"
    results = results_for([prompt], [[5]], [tokens + [eos]], [None], tokenizer, eos, [{"[booking_ref]": "NJB87PAP"}])
    assert results[0].text == "your reference is NJB87PAP ."
    assert results[0].prompt == prompt
    plain = results_for([prompt], [[5]], [tokens + [eos]], [None], tokenizer, eos)
    assert plain[0].text == "your reference is [booking_ref] ."
