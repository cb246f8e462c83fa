"""mpcgen.metrics: hand-checked BLEU/ROUGE-L, E2E-convention BLEU/NIST, chrF++ against sacrebleu, NIST ordering, SER.

More slot error rate rules are tested in tests/test_ser.py.
"""

from __future__ import annotations

import math

import pytest
from sacrebleu.metrics import BLEU, CHRF

from mpcgen.errors import MpcgenError
from mpcgen.metrics import (
    bleu,
    bleu_e2e,
    chrf,
    corpus_scores,
    nist,
    nist_e2e,
    rouge_l,
    ser_details,
    slot_error_rate,
    tokenize_mteval,
)

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
    assert set(scores) == {"n", "bleu", "nist", "bleu_e2e", "nist_e2e", "rouge_l", "chrf", "ser"}
    assert scores["n"] == 1 and scores["ser"] == 0.0
    assert all(math.isfinite(v) for v in scores.values())
    assert "ser" not in corpus_scores(preds, refs)
    assert "ser" not in corpus_scores(preds, refs, slots=[(("p", "o"),)], task="webnlg")
    with pytest.raises(MpcgenError, match="task="):
        corpus_scores(preds, refs, slots=slots)


# ---- E2E challenge convention (mteval-v13a) -------------------------------------------------------------------


def test_tokenize_mteval():
    # Punctuation split off; "." and "," kept between digits; "-" split after a digit; apostrophes and other
    # hyphens kept; SGML entities decoded; only ASCII A-Z lower-cased (Perl tr/A-Z/a-z/).
    text = "The Eagle's family-friendly: £20-25, isn't it? It costs £2.50. CAFÉ &amp; bar"
    assert tokenize_mteval(text) == [
        "the", "eagle's", "family-friendly", ":", "£20", "-", "25", ",", "isn't", "it", "?", "it", "costs", "£2.50",
        ".", "cafÉ", "&", "bar",
    ]  # fmt: skip
    assert tokenize_mteval("The Eagle", lowercase=False) == ["The", "Eagle"]


def test_bleu_e2e_hand_computed_closest_reference_length():
    # hyp a b c d e (5 tokens); refs "a b x" (3) and "a b c d x y" (6). Clipped against the larger count in
    # either reference: 1-grams a b c d = 4/5; 2-grams ab bc cd = 3/4; 3-grams abc bcd = 2/3; 4-gram abcd = 1/2.
    # Product 24/120 = 1/5. Closest reference length to 5 is 6 (|5-6| = 1 < |5-3| = 2), so BP = exp(1 - 6/5);
    # the shortest-reference convention would give BP = 1. BLEU = exp(-0.2) * (1/5) ** (1/4) = 0.5475.
    expected = math.exp(-0.2) * 0.2**0.25
    assert bleu_e2e(["a b c d e"], [["a b x", "a b c d x y"]]) == pytest.approx(expected, abs=1e-12)
    assert bleu_e2e(["A B C D E"], [["a B x", "a b C d x Y"]]) == pytest.approx(expected, abs=1e-12)  # case-blind


def test_bleu_e2e_multi_reference_clipping_and_smoothing():
    # hyp "the the the", refs "the cat" / "the the dog": "the" is clipped to 2, its largest count in ONE
    # reference (summing over references would allow 3): p1 = 2/3. "the the" x2, at most 1 in a reference:
    # p2 = 1/2. No trigram matches: mteval's smoothing gives p3 = 1 / (2^1 * 1). No 4-gram in the hypothesis at
    # all: mteval counts p4 = 1. Lengths 3 vs closest 3: BP = 1. BLEU = (2/3 * 1/2 * 1/2 * 1) ** (1/4) = (1/6)^(1/4).
    assert bleu_e2e(["the the the"], [["the cat", "the the dog"]]) == pytest.approx(6**-0.25, abs=1e-12)


def test_bleu_e2e_properties():
    refs = [["The Eagle is a pub .", "The Eagle pub is cheap ."], ["Blue Spice serves French food in the city."]]
    assert bleu_e2e(["The Eagle pub is cheap .", "Blue Spice serves French food in the city."], refs) == 1.0
    hyps = ["the eagle is a cheap pub .", "BLUE SPICE serves French food by the river."]
    assert bleu_e2e(hyps, refs) == pytest.approx(bleu_e2e([h.upper() for h in hyps], refs))
    assert 0.0 < bleu_e2e(hyps, refs) < 1.0
    assert bleu_e2e([""], [["a b"]]) == 0.0  # no output words: BP is 0


def test_bleu_e2e_matches_sacrebleu_lowercase_13a_on_ascii():
    # sacrebleu's lower-cased 13a BLEU follows the same mteval definition (closest length, "exp" smoothing);
    # they differ only on upper-case non-ASCII letters and on a corpus without any 4-gram.
    hyps = [HYP, "There is a Dog in the garden today", "the eagle , a pub near the river ."]
    refs = [[REF, "a cat was sitting on the mat"], ["a dog is in the garden today"], ["The Eagle is a riverside pub ."]]
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(2)]
    expected = BLEU(lowercase=True, tokenize="13a").corpus_score(hyps, streams).score / 100
    assert bleu_e2e(hyps, refs) == pytest.approx(expected, abs=1e-12)


def test_nist_e2e_hand_computed():
    # Information weights from all 3 references of both items: a:2, b:2, c:1 of 5 words; "a b":1, "a c":1.
    # info(a) = info(b) = log2(5/2); info("a b") = log2(count(a) / count(a b)) = log2(2/1) = 1.
    # Item 1 "a b" matches a, b and "a b"; item 2 "a" matches nothing ("b" is its only reference).
    # Hypothesis n-grams: 3 unigrams, 1 bigram, none longer (those orders add 0 / max(0, 1)).
    # Sum = 2 log2(2.5) / 3 + 1 / 1. Length: 3 output words; reference length = 5 words / (3 refs / 2 items) = 10/3,
    # ratio 0.9 < 1, so BP = exp(-beta ln(0.9)^2) with beta = ln 2 / ln(1.5)^2.
    beta = math.log(2) / math.log(1.5) ** 2
    expected = (2 * math.log2(2.5) / 3 + 1) * math.exp(-beta * math.log(0.9) ** 2)
    assert nist_e2e(["a b", "a"], [["a b", "a c"], ["b"]]) == pytest.approx(expected, abs=1e-12)


def test_nist_e2e_multi_reference():
    # "a a" against "a b" / "a c": "a" is clipped to 1 (its count in one reference), info(a) = log2(4/2) = 1,
    # so 1-grams give 1/2 and the unmatched bigram 0; output and mean reference length are both 2: NIST = 0.5.
    assert nist_e2e(["a a"], [["a b", "a c"]]) == pytest.approx(0.5, abs=1e-12)
    # "a b" against "a x" / "y b": each word matches a different reference. info(a) = info(b) = log2(4/1) = 2, so
    # NIST = (2 + 2) / 2 = 2 (unigrams; the bigram "a b" is in neither reference). nltk's corpus_nist (the
    # project's `nist`) keeps only the best single reference: 2 / 2 = 1 (compared at n = 1, as nltk divides by
    # zero when no output has n words).
    assert nist_e2e(["a b"], [["a x", "y b"]]) == pytest.approx(2.0, abs=1e-12)
    assert nist_e2e(["a b"], [["a x", "y b"]], n=1) == pytest.approx(2.0, abs=1e-12)
    assert nist(["a b"], [["a x", "y b"]], n=1) == pytest.approx(1.0, abs=1e-12)
    assert nist_e2e(["A B"], [["a X", "Y b"]]) == pytest.approx(2.0, abs=1e-12)  # case-blind


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
