"""mpcgen.metrics: hand-checked BLEU/ROUGE-L, chrF++ against sacrebleu, NIST ordering, slot error rate."""

from __future__ import annotations

import math

import pytest
from sacrebleu.metrics import CHRF

from mpcgen.errors import MpcgenError
from mpcgen.metrics import bleu, chrf, corpus_scores, nist, rouge_l, ser_details, slot_error_rate

HYP = "the cat sat on the mat"
REF = "the cat sat on a mat"


def test_bleu_identical_is_one():
    refs = [["a small pub near the river"], ["The Eagle serves French food ."]]
    assert bleu(["a small pub near the river", "The Eagle serves French food ."], refs) == pytest.approx(1.0)


def test_bleu_hand_computed():
    # Clipped n-gram precisions: 1-gram 5/6, 2-gram 3/5 (the cat, cat sat, sat on), 3-gram 2/4, 4-gram 1/3;
    # equal lengths, so no brevity penalty: BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25.
    assert bleu([HYP], [[REF]]) == pytest.approx(12**-0.25, abs=1e-9)


def test_bleu_ragged_references():
    hyps = [HYP, "there is a dog in the garden today"]
    ragged = [[REF, "a cat was sitting on the mat"], ["a dog is in the garden today"]]
    # Repeating a reference changes neither clipped counts nor the closest length, so padding must not matter.
    padded = [ragged[0], ragged[1] * 2]
    assert bleu(hyps, ragged) == pytest.approx(bleu(hyps, padded))
    assert 0.0 < bleu(hyps, ragged) < 1.0
    # A hypothesis equal to one of several references scores 1.
    assert bleu([REF, "a dog is in the garden today"], ragged) == pytest.approx(1.0)


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat sat on a mat") = the cat sat on mat: 5 of 6 both ways -> F = 5/6.
    # LCS("hello world", "hello there world") = 2: P = 1, R = 2/3, F = 0.8. The unrelated reference is ignored (max).
    score = rouge_l([HYP, "hello world"], [[REF, "a dog barked"], ["hello there world"]])
    assert score == pytest.approx((5 / 6 + 0.8) / 2)


def test_chrf_matches_sacrebleu():
    hyps = [HYP, "The Eagle is a pub ."]
    refs = [[REF, "a cat sat on the mat"], ["The Eagle is a coffee shop .", "The Eagle pub"]]
    expected = CHRF(word_order=2).corpus_score(hyps, [[r[0] for r in refs], [r[1] for r in refs]]).score
    assert chrf(hyps, refs) == pytest.approx(expected)
    assert 0 < chrf(hyps, refs) < 100  # reported on sacrebleu's 0-100 scale


def test_nist_orders_hypotheses():
    refs = [
        [
            "The Eagle is a cheap French pub near Burger King .",
            "Near Burger King , The Eagle pub serves cheap French food .",
        ],
        ["Blue Spice is a coffee shop in the city centre ."],
    ]
    good = nist(
        ["The Eagle is a cheap French pub near Burger King .", "Blue Spice is a coffee shop in the centre ."], refs
    )
    bad = nist(["The Mill is a pub .", "It is a shop ."], refs)
    assert good > bad > 0


def test_corpus_scores_keys_and_ser():
    preds = ["The Eagle is a family friendly Italian pub near Burger King by the riverside ."]
    refs = [["The Eagle is a kid friendly Italian pub near Burger King in the riverside area ."]]
    slots = [E2E_SLOTS]
    scores = corpus_scores(preds, refs, slots=slots, task="e2e")
    assert set(scores) == {"n", "bleu", "nist", "rouge_l", "chrf", "ser"}
    assert scores["n"] == 1 and scores["ser"] == 0.0
    assert all(math.isfinite(v) for v in scores.values())
    assert "ser" not in corpus_scores(preds, refs)
    assert "ser" not in corpus_scores(preds, refs, slots=[(("p", "o"),)], task="webnlg")
    with pytest.raises(MpcgenError, match="task="):
        corpus_scores(preds, refs, slots=slots)


@pytest.mark.parametrize(
    "preds,refs,message",
    [
        ([], [], "no predictions"),
        (["a", "b"], [["a"]], "2 predictions but 1 reference"),
        (["a"], [[]], "item 0"),
        ("a b", [["a b"]], "not a single string"),
    ],
)
def test_bad_inputs(preds, refs, message):
    with pytest.raises(MpcgenError, match=message):
        corpus_scores(preds, refs)


E2E_SLOTS = (
    ("name", "The Eagle"),
    ("eatType", "pub"),
    ("food", "Italian"),
    ("area", "riverside"),
    ("familyFriendly", "yes"),
    ("near", "Burger King"),
)


def test_ser_e2e_hand_counted():
    outputs = [
        "The Eagle is a family friendly Italian pub by the riverside near Burger King.",  # 0 errors
        "The Eagle is a family-friendly Italian pub in the riverside area.",  # near missing: 1
        "The Mill is a family friendly Italian pub in riverside near Burger King.",  # wrong name: missing + added
        "The Eagle is an Italian pub in riverside near Burger King. It is not kid friendly.",  # polarity: 1
        "The Eagle is a kid friendly pub near Burger King by the river serving Italian and French food.",  # added: 1
    ]
    details = ser_details(outputs, [E2E_SLOTS] * 5, "e2e")
    assert [d.errors for d in details] == [0, 1, 2, 1, 1]
    assert details[1].missing == (("near", "Burger King"),) and details[1].added == ()
    assert details[2].missing == (("name", "The Eagle"),) and details[2].added == (("name/near", "The Mill"),)
    assert details[3].missing == (("familyFriendly", "yes"),)
    assert details[4].added == (("food", "French"),)
    assert all(d.total == 6 for d in details)
    assert slot_error_rate(outputs, [E2E_SLOTS] * 5, "e2e_nlg") == pytest.approx(5 / 30)


@pytest.mark.parametrize(
    "slot,text,realised",
    [
        (("customer rating", "5 out of 5"), "It has 5 stars.", True),
        (("customer rating", "5 out of 5"), "It is highly rated by customers.", True),
        (("customer rating", "5 out of 5"), "It has high prices.", False),  # "high" without a rating word
        (("customer rating", "low"), "It has a one-star rating.", True),
        (("customer rating", "average"), "Customers rate it 3 out of 5.", True),
        (("priceRange", "£20-25"), "Meals cost £20-£25.", True),
        (("priceRange", "less than £20"), "Meals are under £20.", True),
        (("priceRange", "more than £30"), "It is expensive.", True),
        (("priceRange", "cheap"), "It is expensive.", False),
        (("familyFriendly", "no"), "It isn't family-friendly.", True),
        (("familyFriendly", "no"), "It is for adults.", True),
        (("familyFriendly", "yes"), "It is not suitable for children.", False),
        (("area", "city centre"), "It is in the centre of town.", True),
        (("near", "Café Rouge"), "It is near Cafe Rouge.", True),  # accents are ignored
    ],
)
def test_ser_e2e_patterns(slot, text, realised):
    (detail,) = ser_details([text], [(slot,)], "e2e")
    assert (detail.missing == ()) is realised


def test_ser_e2e_near_name_is_not_added_food():
    slots = (("name", "The Wrestlers"), ("food", "Japanese"), ("near", "Raja Indian Cuisine"))
    (detail,) = ser_details(["The Wrestlers serves Japanese food near Raja Indian Cuisine."], [slots], "e2e")
    assert detail.errors == 0


def test_ser_multiwoz():
    slots = (
        ("Restaurant-Recommend-Name", "Charlie Chan"),
        ("Restaurant-Recommend-Addr", "Regent Street City Centre"),
        ("Restaurant-Recommend-Price", "cheap"),
        ("Restaurant-Recommend-Post", "cb21db"),
        ("Hotel-Inform-Choice", "2"),
        ("Hotel-Inform-Parking", "yes"),  # not checkable verbatim: skipped
    )
    text = "Ok how about Charlie Chan , located at Regent Street City Centre with a cheap price ? I have two hotels ."
    (detail,) = ser_details([text], [slots], "multiwoz")
    assert detail.total == 5
    assert detail.missing == (("Restaurant-Recommend-Post", "cb21db"),) and detail.added == ()
    assert slot_error_rate([text], [slots], "multiwoz") == pytest.approx(1 / 5)


def test_ser_errors():
    with pytest.raises(MpcgenError, match="one slot list per prediction"):
        slot_error_rate(["a", "b"], [E2E_SLOTS], "e2e")
    with pytest.raises(MpcgenError, match="unknown task"):
        slot_error_rate(["a"], [E2E_SLOTS], "dart")
