"""Slot error rate (SER): how many input slot values an output drops or invents.

``SER = (missing + added) / total_slots`` over a corpus, where ``total_slots`` counts the source slots that are
checked. Deterministic string matching, no model. Text and values are compared after *normalisation*: Unicode
accents removed (``Café`` -> ``cafe``), lower-cased, every run of characters other than letters, digits and ``£``
turned into one space (``family-friendly`` -> ``family friendly``, ``isn't`` -> ``isn t``), matched as whole words.

**E2E** (``e2e_nlg``), per attribute:

* verbatim (normalised value must occur): ``name``, ``near``, ``food``, ``eatType`` (plus ``coffee house`` for
  ``coffee shop``), and any attribute or value not in the tables below;
* ``area``: ``riverside`` also by the word ``river``; ``city centre`` also by ``centre``/``center``/``downtown``;
* ``familyFriendly``: the output's polarity must equal the value. A mention is a word among family(ies), kid(s),
  child(ren); it is *negated* when one of not, no, non, never, without, n't (``t``) occurs up to three words before
  it; the word ``adult(s)`` ("for adults", "adult clientele") also counts as a negated mention. Any negated
  mention -> ``no``; else any mention -> ``yes``; else not realised (missing);
* ``priceRange``: ``cheap`` ~ cheap(er/est/ly), inexpensive, affordable, low price(d)/cost; ``moderate`` ~
  moderate(ly), mid price/range, average price(d); ``high`` ~ expensive, pricey, costly, high price(d)/cost/end;
  ``less than £20`` ~ less than/under/below/up to + 20; ``£20-25`` ~ 20 (to/-) 25; ``more than £30`` ~ more
  than/over/above/at least/from/start(s/ing) at + 30, or 30 plus/or more (amounts with or without ``£``).
  Values come in three classes whose patterns are shared, as for ratings: cheap = less than £20,
  moderate = £20-25, high = more than £30;
* ``customer rating``: ``1/3/5 out of 5`` are the same classes as ``low``/``average``/``high``. A class is realised
  by ``N out of 5`` / ``N star(s)`` (N in digits or words: 1 low, 3 average, 5 high), or by a class word (low/poor;
  average/mediocre; high/highly/excellent) with a rating word (rating, rated, review, star, score, customer) at most
  three words away, so that ``low prices`` does not count as a low rating.

*Added* (E2E only): values from the closed E2E vocabulary that the output mentions although the source does not
hold them: another restaurant/landmark (the 52 ``name`` and ``near`` values count as one entity type, so naming
the ``near`` place is never "added"), another ``food``, another ``area`` (verbatim), ``pub``/``coffee shop``
(``restaurant`` is skipped: outputs use it generically), and a family-friendliness mention when the source has no
``familyFriendly``. Entity names are matched first and blanked out, so ``Raja Indian Cuisine`` does not add
``Indian`` food. ``priceRange`` and ``customer rating`` are never counted as added: their paraphrases (high,
average, moderate, low) are too ambiguous.

**MultiWOZ** (``multiwoz_nlg``): every slot value except ``none``, ``?``, ``yes``, ``no``, ``dontcare`` must occur
verbatim (normalised); numbers 0-20 also match their English word (``2`` ~ ``two``), times match as ``19 29``.
``Choice`` and ``Ref`` are kept: ConvLab's text realises them verbatim (>99% of validation turns). Nothing is
counted as added: there is no closed value vocabulary offline.

**WebNLG** (``web_nlg``): verbatim objects, missing only. Available on request, but not reported by
``corpus_scores``: triple objects (dates, quantities, literals) are usually paraphrased, so it would mostly measure
wording, not errors.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from mpcgen.errors import MpcgenError

Slots = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class SlotErrors:
    """Per-output SER detail: the source slots checked, those not realised, and invented values."""

    total: int
    missing: tuple[tuple[str, str], ...]
    added: tuple[tuple[str, str], ...]

    @property
    def errors(self) -> int:
        """``len(missing) + len(added)``."""
        return len(self.missing) + len(self.added)


def normalise(text: str) -> str:
    """Accent-free, lower-case, punctuation-free text padded with spaces (for whole-word ``in`` tests)."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    return " " + " ".join(re.sub(r"[^\w£]+|_", " ", text).split()) + " "


def _contains(text: str, value: str) -> bool:
    value = normalise(value)
    return value.strip() != "" and value in text


# ---- E2E tables -------------------------------------------------------------------------------------------------

E2E_ENTITIES = (
    "Alimentum", "Aromi", "Bibimbap House", "Blue Spice", "Browns Cambridge", "Clowns", "Cocum", "Cotto",
    "Fitzbillies", "Giraffe", "Green Man", "Loch Fyne", "Midsummer House", "Strada", "Taste of Cambridge",
    "The Cambridge Blue", "The Cricketers", "The Dumpling Tree", "The Eagle", "The Golden Curry", "The Golden Palace",
    "The Mill", "The Olive Grove", "The Phoenix", "The Plough", "The Punter", "The Rice Boat", "The Twenty Two",
    "The Vaults", "The Waterman", "The Wrestlers", "Travellers Rest Beefeater", "Wildwood", "Zizzi",
    # near values (The Rice Boat is both)
    "All Bar One", "Avalon", "Burger King", "Café Adriatic", "Café Brazil", "Café Rouge", "Café Sicilia",
    "Clare Hall", "Crowne Plaza Hotel", "Express by Holiday Inn", "Rainbow Vegetarian Café", "Raja Indian Cuisine",
    "Ranch", "The Bakers", "The Portland Arms", "The Six Bells", "The Sorrento", "Yippee Noodle Bar",
)  # fmt: skip
# The closed value sets checked for "added" values, by slot type (name and near share one type).
E2E_ADDED_VOCAB: dict[str, tuple[str, ...]] = {
    "food": ("English", "Japanese", "French", "Fast food", "Italian", "Indian", "Chinese"),
    "area": ("riverside", "city centre"),
    "eatType": ("pub", "coffee shop"),
}
_ENTITY_SLOTS = ("name", "near")

_NUM = r"(?<!\w)£? ?{n}(?: pounds?)?(?!\w)"
_E2E_PATTERNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("area", "riverside"): (r" river",),
    ("area", "city centre"): (r" (?:centre|center|downtown) ",),
    ("eatType", "coffee shop"): (r" coffee (?:shop|house) ",),
    ("priceRange", "cheap"): (
        r" (?:cheap|cheaper|cheapest|cheaply|inexpensive|inexpensively|affordable|affordably) ",
        r" low (?:price|prices|priced|cost) ",
    ),
    ("priceRange", "moderate"): (r" moderate(?:ly)? ", r" mid (?:price|prices|priced|range) ", r" average pric"),
    ("priceRange", "high"): (r" (?:expensive|pricey|costly) ", r" high (?:price|prices|priced|cost|end) "),
    ("priceRange", "less than £20"): (r" (?:less than|under|below|up to|lower than) " + _NUM.format(n="20"),),
    ("priceRange", "£20-25"): (_NUM.format(n="20") + r" (?:to |and )?" + _NUM.format(n="25"),),
    ("priceRange", "more than £30"): (
        r" (?:more than|over|above|at least|from|start at|starts at|starting at|upwards of|greater than) "
        + _NUM.format(n="30"),
        _NUM.format(n="30") + r" (?:plus|or more|and (?:over|above|up))",
    ),
}
_RATING_CLASS = {"1 out of 5": "low", "low": "low", "3 out of 5": "average", "average": "average",
                 "5 out of 5": "high", "high": "high"}  # fmt: skip
_RATING_WORDS = {"low": ("low", "poor", "poorly"), "average": ("average", "mediocre"),
                 "high": ("high", "highly", "excellent")}  # fmt: skip
_RATING_NUMBER = {"low": "(?:1|one)", "average": "(?:3|three)", "high": "(?:5|five)"}
_RATING_CONTEXT = r"(?:rating|ratings|rated|review|reviews|reviewed|star|stars|score|scores|customer|customers)"

_FAMILY = r"(?:family|families|kid|kids|child|children|childrens)"
_NEGATED_FAMILY = re.compile(rf" (?:not|no|non|never|without|t)(?: \w+){{0,2}} {_FAMILY} | adults? ")
_FAMILY_MENTION = re.compile(rf" {_FAMILY} ")


def _rating_realised(text: str, value: str) -> bool:
    cls = _RATING_CLASS.get(value.lower())
    if cls is None:
        return _contains(text, value)
    number = _RATING_NUMBER[cls]
    if re.search(rf" {number} (?:out of (?:5|five)|stars?) ", text):
        return True
    words = "|".join(_RATING_WORDS[cls])
    near = rf" (?:{words})(?: \w+){{0,2}} {_RATING_CONTEXT} | {_RATING_CONTEXT}(?: \w+){{0,2}} (?:{words}) "
    return re.search(near, text) is not None


def _family_polarity(text: str) -> str | None:
    if _NEGATED_FAMILY.search(text):
        return "no"
    if _FAMILY_MENTION.search(text):
        return "yes"
    return None


# Price values in one class share their patterns (E2E references say "expensive" for "more than £30").
_PRICE_CLASS = {"cheap": ("cheap", "less than £20"), "less than £20": ("cheap", "less than £20"),
                "moderate": ("moderate", "£20-25"), "£20-25": ("moderate", "£20-25"),
                "high": ("high", "more than £30"), "more than £30": ("high", "more than £30")}  # fmt: skip


def _e2e_realised(text: str, attr: str, value: str) -> bool:
    if attr == "familyFriendly":
        return _family_polarity(text) == value.strip().lower()
    if attr == "customer rating":
        return _rating_realised(text, value)
    if attr == "priceRange" and value in _PRICE_CLASS:
        patterns = tuple(p for v in _PRICE_CLASS[value] for p in _E2E_PATTERNS[(attr, v)])
    else:
        patterns = _E2E_PATTERNS.get((attr, value), ())
    return _contains(text, value) or any(re.search(p, text) for p in patterns)


def _blank(text: str, value: str) -> str:
    """Replace every whole-word occurrence of ``value`` by spaces, so its words cannot match again."""
    needle = normalise(value)
    return text.replace(needle, " " * len(needle)) if needle.strip() else text


def _e2e_check(prediction: str, slots: Slots) -> SlotErrors:
    text = normalise(prediction)
    missing = tuple((a, v) for a, v in slots if not _e2e_realised(text, a, v))
    source = {(a, v.lower()) for a, v in slots}
    source_entities = {v.lower() for a, v in slots if a in _ENTITY_SLOTS}
    added: list[tuple[str, str]] = []
    # Longest names first so "The Golden Palace" is consumed before any shorter name could match inside it.
    for entity in sorted(E2E_ENTITIES, key=len, reverse=True):
        if _contains(text, entity):
            if entity.lower() not in source_entities:
                added.append(("name/near", entity))
            text = _blank(text, entity)
    for attr, vocab in E2E_ADDED_VOCAB.items():
        for value in vocab:
            if _contains(text, value) and (attr, value.lower()) not in source:
                added.append((attr, value))
    if not any(a == "familyFriendly" for a, _ in slots):
        polarity = _family_polarity(text)
        if polarity is not None:
            added.append(("familyFriendly", polarity))
    return SlotErrors(total=len(slots), missing=missing, added=tuple(added))


# ---- MultiWOZ and WebNLG ----------------------------------------------------------------------------------------

MULTIWOZ_SKIP = frozenset({"none", "?", "yes", "no", "dontcare"})
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()


def _multiwoz_check(prediction: str, slots: Slots) -> SlotErrors:
    text = normalise(prediction)
    checked = [(s, v) for s, v in slots if v.strip().lower() not in MULTIWOZ_SKIP]
    missing = []
    for slot, value in checked:
        found = _contains(text, value)
        if not found and value.strip().isdigit() and int(value) < len(_NUMBER_WORDS):
            found = f" {_NUMBER_WORDS[int(value)]} " in text
        if not found:
            missing.append((slot, value))
    return SlotErrors(total=len(checked), missing=tuple(missing), added=())


def _verbatim_check(prediction: str, slots: Slots) -> SlotErrors:
    text = normalise(prediction)
    missing = tuple((s, v) for s, v in slots if not _contains(text, v))
    return SlotErrors(total=len(slots), missing=missing, added=())


_CHECKERS = {"e2e_nlg": _e2e_check, "multiwoz_nlg": _multiwoz_check, "web_nlg": _verbatim_check}


def ser_details(predictions: Sequence[str], slots: Sequence[Slots], task: str) -> list[SlotErrors]:
    """Check every output against its source slots; one :class:`SlotErrors` per output (see module docstring)."""
    from mpcgen.data import canonical_task  # data sits beside metrics; imported here to keep import light

    name = canonical_task(task)
    if len(predictions) != len(slots):
        raise MpcgenError(
            f"SER needs one slot list per prediction: got {len(predictions)} predictions, {len(slots)} slot lists"
        )
    if name not in _CHECKERS:
        raise MpcgenError(f"no slot error rate for task {name!r}; available for {sorted(_CHECKERS)}")
    check = _CHECKERS[name]
    return [check(prediction, item) for prediction, item in zip(predictions, slots)]


def slot_error_rate(predictions: Sequence[str], slots: Sequence[Slots], task: str) -> float:
    """Corpus SER ``(missing + added) / total_slots`` (0 when nothing was checked and nothing added).

    Args:
        predictions: generated texts.
        slots: per prediction, its source ``(slot, value)`` pairs (``GroupedExample.slots``).
        task: ``e2e_nlg``, ``multiwoz_nlg`` or ``web_nlg`` (or an alias).

    Returns:
        a fraction (may exceed 1 when many values are invented).
    """
    details = ser_details(predictions, slots, task)
    total = sum(d.total for d in details)
    errors = sum(d.errors for d in details)
    if total == 0:
        return float(errors)  # nothing to check: any invented value is an error against an empty source
    return errors / total
