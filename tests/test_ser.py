"""Slot error rate rules (mpcgen.metrics.ser): one test per family of phrasings the E2E and MultiWOZ rules judge.

Each family comes from human test references the earlier rules misjudged (see docs/metrics.md); the last tests score
the human references themselves, so a rule change that brings false errors back shows up as a higher rate.
"""

from __future__ import annotations

import random

import pytest

from mpcgen.data import load_grouped
from mpcgen.metrics import ser_details, slot_error_rate


def realised(slot: tuple[str, str], text: str, task: str = "e2e") -> bool:
    (detail,) = ser_details([text], [(slot,)], task)
    return detail.missing == ()


def judged(slot: tuple[str, str], text: str) -> tuple[bool, bool]:
    """Is ``slot`` realised, and is its opposite family value realised?"""
    attr, value = slot
    opposite = {"yes": "no", "no": "yes"}[value]
    return realised(slot, text), realised((attr, opposite), text)


# ---- familyFriendly ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Children are not welcome.",
        "Kids not welcome.",
        "Kids are not allowed at The Eagle.",
        "Families are prohibited.",
        "Bringing children is not recommended.",
        "Children should not visit.",
        "It is the family-unfriendly pub Blue Spice.",
        "Near Café Brazil, family friendly no.",  # a yes/no list read aloud
    ],
)
def test_family_negated_after_the_family_word(text):
    assert judged(("familyFriendly", "no"), text) == (True, False)


@pytest.mark.parametrize(
    "text",
    [
        "It is not family-friendly.",
        "It isn't kid friendly.",
        "No children.",
        "A non - kid friendly coffee shop.",
        "It is not intended for the whole family.",
        "It is not a good place to take children.",
        "It is unsuitable for children.",
        "Leave the kids at home.",
        "It offers a child-free atmosphere.",
        "It has a bad kids friendly atmosphere.",
        "It is not so child friendly.",
    ],
)
def test_family_negated_before_the_family_word(text):
    assert judged(("familyFriendly", "no"), text) == (True, False)


@pytest.mark.parametrize(
    "text",
    [
        "No smoking, family friendly.",  # the "no" belongs to its own clause
        "It welcomes adults and children alike.",
        "It is suitable for kids as well as adults.",
        "It is not far from the river and kid friendly.",
        "It is not expensive and is family friendly.",
        "Look no further than this family friendly pub.",
        "It welcomes customers of all ages.",
    ],
)
def test_family_positive_despite_a_nearby_negation_or_adults(text):
    assert judged(("familyFriendly", "yes"), text) == (True, False)


def test_family_adults_only_is_negative():
    assert judged(("familyFriendly", "no"), "The Eagle is for adults only.") == (True, False)
    assert judged(("familyFriendly", "no"), "It has an adult clientele.") == (True, False)


def test_family_polarity_counts_as_added_without_the_slot():
    slots = (("name", "The Eagle"),)
    (detail,) = ser_details(["The Eagle is a pub. Children are not welcome."], [slots], "e2e")
    assert detail.added == (("eatType", "pub"), ("familyFriendly", "no"))


# ---- customer rating ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "It has low prices, customer rating 5 out of 5.",
        "low prices customer rating 5 out of 5",  # no comma: "low" still belongs to the prices
        "The price range is low and the customer rating is 5 out of 5.",
    ],
)
def test_rating_not_read_across_a_price_phrase(text):
    assert not realised(("customer rating", "low"), text)
    assert realised(("customer rating", "5 out of 5"), text)
    assert realised(("priceRange", "cheap"), text)


def test_rating_and_price_adjectives_go_to_their_own_noun():
    text = "The price range is high and the customer rating is average."
    assert realised(("customer rating", "average"), text)
    assert not realised(("customer rating", "high"), text)
    assert realised(("priceRange", "high"), text)
    # Predicative adjective: it describes the noun before the copula, not the price after it.
    text = "The customer rating is low the price range is reasonable."
    assert realised(("customer rating", "low"), text)
    assert not realised(("priceRange", "cheap"), "The customer rating is low.")


@pytest.mark.parametrize(
    "value,text",
    [
        ("3 out of 5", "It is rated 3/5."),
        ("average", "It is rated 3/5."),
        ("1 out of 5", "It is rated 1 out of 5."),
        ("1 out of 5", "It received 1 out 5 on customer reviews."),
        ("3 out of 5", "It has 3 of 5 customer ratings."),
        ("5 out of 5", "It has 5 stars."),
        ("5 out of 5", "A five-star restaurant."),
        ("low", "A 1 star French-style pub."),
        ("high", "It has a customer rating of 5."),
        ("average", "It has a 3 customer rating."),
        ("average", "It serves moderately-rated Indian dishes."),
        ("low", "It has bad customer ratings."),
        ("high", "It has great reviews."),
        ("1 out of 5", "It is not highly rated."),
        ("1 out of 5", "It doesn't have a very good rating."),
        ("high", "Rating is high with a range of £20-25."),
    ],
)
def test_rating_written_forms(value, text):
    assert realised(("customer rating", value), text)


@pytest.mark.parametrize(
    "value,text",
    [
        ("5 out of 5", "It has a rating of 1 out of 5 stars."),  # the 5 of "out of 5 stars" is the scale
        ("1 out of 5", "It has a 1 out of 4 customer rating."),  # another scale says nothing
        ("high", "It is not highly rated."),
        ("1 out of 5", "It is near All Bar One."),  # a name, not a rating of one
        ("low", "It has high prices."),
        ("low", "The rating is not low."),
    ],
)
def test_rating_not_realised(value, text):
    assert not realised(("customer rating", value), text)


# ---- priceRange --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value,text",
    [
        ("more than £30", "Meals cost £30+."),
        ("more than £30", "Meals cost more than £30."),
        ("high", "Prices start at 30 pounds."),
        ("high", "Meals cost £30 or more."),
        ("more than £30", "It is high-priced."),
        ("high", "It serves highly priced Chinese food."),
        ("high", "It serves higher end Chinese food."),
        ("high", "It is a high class restaurant."),
        ("high", "The price range of the restaurant is high."),
        ("high", "It is an upmarket French restaurant."),
        ("moderate", "It is averagely priced."),
        ("£20-25", "It is moderately priced."),
        ("moderate", "Meals cost £20 - £25."),
        ("moderate", "It is in the mid price range."),
        ("moderate", "Their prices and customer ratings are moderate."),
        ("cheap", "It is cheap."),
        ("less than £20", "It is cheap."),
        ("less than £20", "Meals cost £20 or less."),
        ("cheap", "It has below average prices."),
        ("cheap", "It is reasonably priced."),
        ("moderate", "It is reasonably priced."),
        ("cheap", "It is not expensive."),
    ],
)
def test_price_written_forms(value, text):
    assert realised(("priceRange", value), text)


@pytest.mark.parametrize(
    "value,text",
    [
        ("high", "It is highly rated."),  # the old verbatim "high" took this as a price
        ("moderate", "It has a moderate customer rating."),
        ("high", "It is not expensive."),
        ("moderate", "It has below average prices."),
        ("high", "Expect to spend no more than £30."),
        ("cheap", "It is expensive."),
        ("high", "It serves high quality food."),
    ],
)
def test_price_not_realised(value, text):
    assert not realised(("priceRange", value), text)


# ---- food and area -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slot,text",
    [
        (("food", "English"), "It serves British food."),
        (("food", "Japanese"), "It serves sushi."),
        (("food", "Italian"), "It serves pasta."),
        (("area", "city centre"), "It is centrally located."),
        (("area", "city centre"), "It is in the heart of the city."),
        (("area", "riverside"), "It is on the waterfront."),
    ],
)
def test_food_and_area_paraphrases(slot, text):
    assert realised(slot, text)


# ---- MultiWOZ ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "slot,text",
    [
        (("Hotel-Inform-Type", "guesthouse"), "There are 3 guesthouses in the north ."),
        (("Hotel-Inform-Type", "guest house"), "We have 11 guesthouses ."),
        (("Hotel-Inform-Type", "guesthouse"), "We have 11 guest houses ."),
        (("Attraction-Inform-Type", "museum"), "There are 23 museums listed ."),
        (("Train-Inform-Leave", "5:40"), "It departs at 05:40 ."),
        (("Train-Inform-Leave", "8:11"), "It leaves at 8:11pm ."),
        (("Attraction-Inform-Name", "Cambridge Arts Theater"), "How about the Cambridge Arts Theatre ?"),
        (("Train-OfferBooked-Ticket", "13.20 pound"), "It comes to 13.20 pounds ."),
    ],
)
def test_multiwoz_plural_spelling_and_time(slot, text):
    assert realised(slot, text, "multiwoz")


@pytest.mark.parametrize(
    "slot,text",
    [
        (("Attraction-Inform-Type", "park"), "It has free parking ."),  # a plural, not any longer word
        (("Train-Inform-Leave", "5:15"), "You will arrive at 15:15 ."),
        (("Hotel-Inform-Name", "The Lensfield Hote"), "The Lensfield Road ."),
    ],
)
def test_multiwoz_not_realised(slot, text):
    assert not realised(slot, text, "multiwoz")


# ---- the human references ----------------------------------------------------------------------------------------


def _references(task: str, data_dir) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    texts, slots = [], []
    for group in load_grouped(task, "test", data_dir):
        texts += group.references
        slots += [group.slots] * len(group.references)
    return texts, slots


@pytest.mark.parametrize("task,ceiling", [("e2e", 0.088), ("multiwoz", 0.003)])
def test_human_references_score_low_and_mismatched_ones_high(task, ceiling, data_dir):
    # docs/metrics.md: E2E 8.6% (was 9.9%), MultiWOZ 0.20% (was 0.69%). What E2E keeps is mostly the references'
    # own omissions; a reference of another source must still look wrong.
    texts, slots = _references(task, data_dir)
    assert slot_error_rate(texts, slots, task) < ceiling
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    assert slot_error_rate(shuffled, slots, task) > 0.9


def test_ser_script_scores_a_predictions_file_by_slot(tmp_path, caplog, data_dir):
    """``scripts/ser_references.py --predictions``: a model's errors by slot; a file of the wrong length or two tasks
    at once are refused."""
    import logging

    from model_helpers import load_script

    script = load_script("ser_references")
    groups = load_grouped("e2e", "test", data_dir)
    texts = [g.references[0] for g in groups]
    texts[0] = "A place."  # drops every slot of the first MR
    path = tmp_path / "predictions-test.txt"
    path.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="ser_references"):
        assert script.main(["--data-dir", str(data_dir), "--tasks", "e2e", "--predictions", str(path)]) == 0
    expected = slot_error_rate(texts, [g.slots for g in groups], "e2e_nlg")
    assert f"SER {100 * expected:.2f}%" in caplog.text and "missing name" in caplog.text
    path.write_text("one line\n", encoding="utf-8")
    assert script.main(["--data-dir", str(data_dir), "--tasks", "e2e", "--predictions", str(path)]) == 2
    assert "has 1 lines for the 630 distinct sources" in caplog.text
    assert script.main(["--data-dir", str(data_dir), "--predictions", str(path)]) == 2
