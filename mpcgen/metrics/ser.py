"""Slot error rate (SER): how many input slot values an output drops or invents.

``SER = (missing + added) / total_slots`` over a corpus, where ``total_slots`` counts the source slots that are
checked. Deterministic string matching, no model. Text and values are compared after *normalisation*: Unicode
accents removed (``Café`` -> ``cafe``), lower-cased, every run of characters other than letters, digits and ``£``
turned into one space (``family-friendly`` -> ``family friendly``, ``isn't`` -> ``isn t``), matched as whole words.

**E2E** (``e2e_nlg``), per attribute. Rules that read a word's neighbourhood work inside one *clause* (text
between punctuation other than ``:``, spaced dashes, and but/although/though/whereas/yet/while), with the 52 E2E
names replaced by a placeholder (so "All Bar One" is no rating of one). Inside a clause, "and", "plus", "also" and
"then" end a word's scope.

* verbatim (normalised value must occur): ``name``, ``near``, ``food``, ``eatType`` (plus ``coffee house`` for
  ``coffee shop``), and any attribute or value not in the rules below. Food also by a dish only that cuisine's
  training references use: English ~ British, Japanese ~ sushi, Italian ~ pasta/pizza;
* ``area``: ``riverside`` also by ``river...``, waterfront, waterside, by the water; ``city centre`` also by
  centre/center/downtown/central(ly), heart/middle of (the) city/town;
* ``familyFriendly``: the output's polarity must equal the value. A mention is family(ies), kid(s), child(ren),
  youngster(s), toddler(s) or "all ages"; it is *negated* by a negation up to 7 words before it in its scope ("not
  the type of place to bring children"), by a negative cue just before it ("leave the kids at home") or a negative
  predicate after it ("children are not welcome", "family-unfriendly", "child-free"). A sentence with adult(s) and
  no family word is negated ("for adults only"); with one it is not ("adults and children alike"). Any negated
  mention -> ``no``; else any mention -> ``yes``; else missing;
* ``priceRange``: three classes, cheap = less than £20, moderate = £20-25, high = more than £30. Evidence: amounts
  ("under 20", "20-25", "£30+", "more than thirty pounds"), price words wherever they stand (cheap, inexpensive,
  expensive, pricey, upscale; affordable = cheap or moderate), and adjectives (low, moderate(ly), average(ly),
  high(ly), reasonable, ...) read with their nearest anchor noun, which must be a price word: "highly rated" is no
  high price;
* ``customer rating``: ``1/3/5 out of 5`` are ``low``/``average``/``high``. Evidence: "N out of 5", "N/5", "N
  stars", "rated N", and class words (low, poor, average, decent, high, excellent, ...) whose nearest anchor noun
  is a rating word: in "low prices, customer rating 5 out of 5" the "low" belongs to the prices. Negated praise
  ("doesn't have a very good rating") is low. The word lists: ``docs/metrics.md``.

Anchor nouns: an adjective belongs to the nearest anchor word within 6 words of its scope; on a tie, to the one
after it ("low prices ... rating": prices), unless it follows a copula ("the rating is low the price range ..."):
then to the one before. Anchors joined by "and" share it ("average price and rating range").

*Added* (E2E only): values from the closed E2E vocabulary that the output mentions although the source does not
hold them: another restaurant/landmark (the 52 ``name`` and ``near`` values count as one entity type, so naming
the ``near`` place is never "added"), another ``food``, another ``area`` (verbatim), ``pub``/``coffee shop``
(``restaurant`` is skipped: outputs use it generically), and a family-friendliness mention when the source has no
``familyFriendly``. Entity names are matched first and blanked out, so ``Raja Indian Cuisine`` does not add
``Indian`` food. ``priceRange`` and ``customer rating`` are never counted as added: their paraphrases (high,
average, moderate, low) are too ambiguous.

**MultiWOZ** (``multiwoz_nlg``): every slot value except ``none``, ``?``, ``yes``, ``no``, ``dontcare`` must occur
verbatim (normalised); numbers 0-20 also match their English word (``2`` ~ ``two``); times match with or without a
leading zero and with an am/pm suffix (``5:40`` ~ ``05:40``, ``8:11`` ~ ``8:11pm``); the value's last word may take
a plural ``s``/``es`` (``guesthouse`` ~ ``3 guesthouses``); theater/theatre, center/centre and guest house/
guesthouse are one spelling. ``Choice`` and ``Ref`` are kept: ConvLab's text realises them verbatim (>99% of
validation turns). Nothing is counted as added: there is no closed value vocabulary offline.

Measured on the human test references (``scripts/ser_references.py``; ``docs/metrics.md``): what remains flagged
there is mostly the references' own omissions and contradictions.

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

_ENTITIES_LONGEST_FIRST = tuple(sorted(E2E_ENTITIES, key=len, reverse=True))

# Clause boundaries for the rules that read a phrase's neighbourhood (family, rating, price words): punctuation,
# dashes and contrastive conjunctions. "no smoking, family friendly" is two clauses, so the "no" stays in the first.
# A colon is not a boundary: "Price range: high".
_CLAUSE_BREAK = re.compile(
    r"[.!?;,()\[\]{}\"“”]|\s[-–—]+\s|(?<!\w)(?:but|although|though|whereas|yet|while)(?!\w)", re.IGNORECASE
)
_SENTENCE_BREAK = re.compile(r"[.!?;]")
# Inside a clause, these words end the scope of a negation or of an adjective looking for its noun.
_BLOCKERS = frozenset({"and", "plus", "also", "then"})
_ENTITY_TOKEN = "@entity"


@dataclass(frozen=True)
class _E2EText:
    """One output prepared for the E2E rules: normalised text, and clauses/sentences as token lists.

    ``clauses`` and ``sentences`` have the 52 E2E entity names replaced by one placeholder token, so that
    "All Bar One" is not a rating of one and "The Twenty Two" is not a price of twenty.
    """

    text: str  # normalised
    blanked: str  # normalised, entity names replaced
    clauses: tuple[tuple[str, ...], ...]
    sentences: tuple[tuple[str, ...], ...]


def _blank_entities(text: str) -> str:
    for entity in _ENTITIES_LONGEST_FIRST:
        needle = normalise(entity)
        text = text.replace(needle, f" {_ENTITY_TOKEN} ")
    return text


def _prepare_e2e(prediction: str) -> _E2EText:
    # Written-out forms the normaliser would destroy: "3/5" is a rating, "£30+" an amount "plus".
    raw = re.sub(r"(\d)\s*/\s*(\d)", r"\1 out of \2", prediction)
    raw = re.sub(r"(\d)\s*\+", r"\1 plus ", raw)
    raw = re.sub(r"(\d)(out)\b", r"\1 \2", raw)  # "5out of 5"
    raw = re.sub(r"\b(non)\s*-\s*", r"\1 ", raw, flags=re.IGNORECASE)  # "non - kid friendly" is one clause

    def tokens(part: str) -> tuple[str, ...]:
        return tuple(_blank_entities(normalise(part)).split())

    clauses = tuple(t for t in (tokens(p) for p in _CLAUSE_BREAK.split(raw)) if t)
    sentences = tuple(t for t in (tokens(p) for p in _SENTENCE_BREAK.split(raw)) if t)
    text = normalise(raw)
    return _E2EText(text, _blank_entities(text), clauses, sentences)


def _scope(tokens: Sequence[str], i: int, step: int, span: int) -> list[int]:
    """Positions from ``i`` (exclusive) in direction ``step``, at most ``span``, stopping before a blocker."""
    out = []
    j = i + step
    while 0 <= j < len(tokens) and len(out) < span and tokens[j] not in _BLOCKERS:
        out.append(j)
        j += step
    return out


def _negated(
    tokens: Sequence[str], i: int, span: int, cues: frozenset[str] = frozenset(), gap: frozenset[str] | None = None
) -> bool:
    """True when a negation cue precedes position ``i`` within ``span`` words of its scope.

    ``cues`` are extra negative words, counted within two words; with ``gap``, only those words may stand between
    the cue and position ``i`` ("not very cheap", but not "non family low priced").
    """
    for distance, j in enumerate(_scope(tokens, i, -1, span), start=1):
        word = tokens[j]
        after = tokens[j + 1 : j + 3]
        if word in _NEGATIONS and not (after[:1] and after[0] in _NOT_NEGATING) and after != ["too", "far"]:
            return True
        if word in cues and distance <= 2:
            return True
        if gap is not None and word not in gap:
            return False
    return False


_NEGATIONS = frozenset({"not", "no", "non", "none", "never", "without", "t", "cannot", "nor", "neither"})
# "not far from", "not only", "no matter": the cue negates the next word, not a later one.
_NOT_NEGATING = frozenset({
    "far", "further", "only", "just", "matter", "better", "problem", "doubt", "wonder", "worries",
})  # fmt: skip
# What may stand between a negation and the price or rating word it negates ("not very expensive",
# "doesn't have a very good rating", "isn't rated highly").
_NEGATION_GAP = frozenset({
    "very", "too", "so", "that", "overly", "particularly", "exactly", "really", "quite", "all", "a", "an", "the",
    "have", "has", "had", "get", "gets", "got", "receive", "receives", "received", "be", "been", "is", "are",
    "rated", "considered", "as",
})  # fmt: skip

# ---- familyFriendly

_FAMILY_WORDS = frozenset({
    "family", "families", "kid", "kids", "kiddie", "kiddies", "kiddos", "child", "children", "childrens",
    "youngster", "youngsters", "toddler", "toddlers",
})  # fmt: skip
_CHILD_WORDS = frozenset({"kid", "kids", "child", "children", "childrens"})
# Negative cues before a family word besides plain negations ("unsuitable for children", "leave the kids at home",
# "lacking a child friendly atmosphere", "a bad kids friendly atmosphere").
_FAMILY_PRE_CUES = frozenset({
    "unsuitable", "unfriendly", "unwelcoming", "lacking", "lacks", "lack", "leave", "leaving", "avoid", "bad", "less",
})  # fmt: skip
# Negative predicates after a family word: "children are not welcome", "kids not allowed", "family unfriendly".
_FAMILY_POST_CUES = frozenset({
    "not", "t", "never", "cannot", "unwelcome", "unwelcomed", "prohibited", "forbidden", "banned", "unfriendly",
    "unsuitable", "unwelcoming",
})  # fmt: skip
# Words allowed between the family word and such a cue (auxiliaries and adverbs): "children should not visit".
_FAMILY_POST_GAP = frozenset({
    "are", "is", "be", "should", "will", "would", "must", "do", "does", "can", "could", "may", "might", "really",
    "definitely", "strictly", "also", "generally", "usually", "aren", "isn", "don", "doesn", "won", "shouldn",
    "wouldn", "re",
})  # fmt: skip
_ADULT_WORDS = frozenset({"adult", "adults"})
# How many words a negation may stand before a family word: "not the type of place people bring their kids".
FAMILY_NEGATION_SPAN = 7


def _mention_polarity(tokens: Sequence[str], i: int) -> str:
    if _negated(tokens, i, FAMILY_NEGATION_SPAN, _FAMILY_PRE_CUES):
        return "no"
    nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
    if tokens[i] in _CHILD_WORDS and nxt == "free":  # "child-free", "kid free"
        return "no"
    j = i + 1
    while j < len(tokens) and j <= i + 3 and tokens[j] in _FAMILY_POST_GAP:
        j += 1
    if j < len(tokens) and j <= i + 3 and tokens[j] in _FAMILY_POST_CUES:
        return "no"
    # "family friendly no" (a yes/no list read aloud): the answer ends the clause.
    if nxt == "friendly" and i + 2 == len(tokens) - 1 and tokens[i + 2] == "no":
        return "no"
    return "yes"


def _family_polarity(parsed: _E2EText) -> str | None:
    """``"no"`` if any mention is negated, else ``"yes"`` if any mention, else ``None``."""
    polarities = set()
    for clause in parsed.clauses:
        for i, word in enumerate(clause):
            if word in _FAMILY_WORDS:
                polarities.add(_mention_polarity(clause, i))
        if " all ages " in " " + " ".join(clause) + " ":
            polarities.add("yes")
    for sentence in parsed.sentences:
        # "for adults", "an adult clientele" mean not for children, unless the sentence says children too
        # ("adults and children alike", "kids as well as adults").
        if any(w in _ADULT_WORDS for w in sentence) and not any(w in _FAMILY_WORDS for w in sentence):
            polarities.add("no")
    if "no" in polarities:
        return "no"
    return "yes" if polarities else None


# ---- priceRange and customer rating

# Price values in one class share their rules (E2E references say "expensive" for "more than £30").
_PRICE_CLASS = {"cheap": "cheap", "less than £20": "cheap", "moderate": "moderate", "£20-25": "moderate",
                "high": "high", "more than £30": "high"}  # fmt: skip
_RATING_CLASS = {"1 out of 5": "low", "low": "low", "3 out of 5": "average", "average": "average",
                 "5 out of 5": "high", "high": "high"}  # fmt: skip

_AMOUNT = {"20": "(?:20|twenty)", "25": "(?:25|twenty five)", "30": "(?:30|thirty)"}
_NUM = r"(?<!\w)£? ?{n}(?: pounds?| gbp| british pounds?)?(?!\w)"


def _amount(n: str) -> str:
    return _NUM.format(n=_AMOUNT[n])


_PRICE_PHRASES: dict[str, tuple[str, ...]] = {
    "cheap": (
        r" (?:less than|less that|less then|under|below|up to|lower than|no more than|not more than|at most|"
        r"cheaper than) " + _amount("20"),
        _amount("20") + r" (?:or|and) (?:less|under|below)(?!\w)",
        r" value for money ",
    ),
    "moderate": (_amount("20") + r" (?:to |and |or )?" + _amount("25"), r" value for money "),
    "high": (
        r"(?<! no)(?<! not) (?:more than|over|above|at least|from|start at|starts at|starting at|upwards of|"
        r"greater than|in excess of|exceeding) " + _amount("30"),
        _amount("30") + r" (?:plus|or more|and (?:over|above|up|upwards|more))(?!\w)",
    ),
}
# Words that name a price class wherever they stand. The E2E references use "affordable" for cheap and moderate
# prices alike (train: 173 cheap, 102 moderate, 17 high), so it realises either.
_PRICE_WORDS: dict[str, frozenset[str]] = {
    "cheap": frozenset({"cheap", "cheaper", "cheapest", "cheaply", "inexpensive", "inexpensively", "budget",
                        "bargain", "affordable", "affordably"}),
    "moderate": frozenset({"affordable", "affordably"}),
    "high": frozenset({"expensive", "pricey", "pricy", "pricier", "costly", "upscale", "upmarket", "overpriced"}),
}  # fmt: skip
# Adjectives that name a price class only when the nearest anchor noun is a price word ("low prices",
# "priced averagely", "in the higher price range"), or a rating class when it is a rating word.
_PRICE_MODIFIERS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("low", "lower", "lowest"), ("cheap",)),
    **dict.fromkeys(("moderate", "moderately", "medium", "mid", "middle", "average", "averagely", "modest",
                     "modestly"), ("moderate",)),
    **dict.fromkeys(("high", "higher", "highest", "highly", "upper", "premium"), ("high",)),
    # Praise of the price: "reasonably priced" is moderate in 191 training references and cheap in 89.
    **dict.fromkeys(("reasonable", "reasonably", "fair", "fairly", "decent", "decently", "good", "great", "well",
                     "competitive", "competitively"), ("cheap", "moderate")),
}  # fmt: skip
_PRICE_ANCHORS = frozenset({"price", "prices", "priced", "pricing", "cost", "costs", "costing", "range", "ranges",
                            "ranged", "bracket"})  # fmt: skip
_RATING_WORDS: dict[str, frozenset[str]] = {
    "low": frozenset({"low", "lower", "lowest", "lowly", "poor", "poorly", "bad", "badly", "negative", "terrible",
                      "awful", "worst"}),
    "average": frozenset({"average", "averagely", "mediocre", "moderate", "moderately", "decent", "decently", "ok",
                          "okay", "middling", "fair", "fairly", "medium", "mid", "middle", "satisfactory", "good",
                          "well"}),
    "high": frozenset({"high", "higher", "highest", "highly", "excellent", "great", "top", "perfect", "outstanding",
                       "fantastic", "superb", "positive", "best", "good", "well", "exceptional", "amazing",
                       "brilliant"}),
}  # fmt: skip
_RATING_ANCHORS = frozenset({"rating", "ratings", "rated", "rate", "rates", "review", "reviews", "reviewed",
                             "star", "stars", "score", "scores", "scored", "customer", "customers", "feedback",
                             "ranked", "ranking"})  # fmt: skip
_COPULAS = frozenset({"is", "are", "was", "were", "be", "been", "being", "s", "remains", "seems", "stays"})
# How far an adjective may stand from the noun it is read with ("the price range of the restaurant is high").
ANCHOR_SPAN = 6
_RATING_NUMBER = {"1": "low", "one": "low", "3": "average", "three": "average", "5": "high", "five": "high"}
_SCORE = r"(1|2|3|4|5|one|two|three|four|five)"
_OUT_OF = re.compile(rf" {_SCORE} (?:out of|out|of) (\d+|one|two|three|four|five|ten)(?: stars?)?(?= )")
_STARS = re.compile(rf" {_SCORE} stars?(?= )")
_RATED_N = re.compile(rf" (?:rating|ratings|rated|rate|rates|score|scored|ranked|ranking)(?: \w+)?(?: \w+)? {_SCORE}"
                      r"(?= )(?! \d)(?! out )(?! of )")  # fmt: skip
_N_RATING = re.compile(rf" {_SCORE} (?:customer )?(?:rating|ratings|rated)(?= )")


def _anchor_kind(tokens: Sequence[str], j: int) -> str | None:
    word = tokens[j]
    if word in _PRICE_ANCHORS:
        return "price"
    if word in _RATING_ANCHORS:  # E2E references also say "average customer service" for the rating
        return "rating"
    return None


def _anchors(tokens: Sequence[str], i: int, span: int = ANCHOR_SPAN) -> set[str]:
    """Which nouns the adjective at ``i`` describes: a subset of ``{"price", "rating"}`` (empty: none in reach).

    The nearest anchor word within ``span`` words of the same clause wins (no blocker in between). On a tie the
    one after wins, since attributive adjectives precede their noun ("low prices, high customer rating"), unless
    the adjective follows a copula and so describes the noun before it ("the rating is low the price range is
    reasonable"). Anchors joined by "and" to the winner count too: "average price and rating range", "their
    prices and customer ratings are moderate".
    """

    def kind_at(pos: int) -> str | None:
        return _anchor_kind(tokens, pos) if 0 <= pos < len(tokens) else None

    best: tuple[int, int, int] | None = None
    predicative = i > 0 and tokens[i - 1] in _COPULAS
    for order, step in enumerate((-1, 1) if predicative else (1, -1)):
        # A predicative adjective's subject may carry a long modifier: "the prices of their English food can be high".
        reach = span + 2 if predicative and step == -1 else span
        for distance, j in enumerate(_scope(tokens, i, step, reach), start=1):
            if kind_at(j) is not None:
                key = (distance, order, j)
                best = key if best is None or key < best else best
                break
    if best is None:
        return set()
    k = best[2]
    step = 1 if k > i else -1
    kinds: set[str] = set()
    while (kind := kind_at(k)) is not None:
        kinds.add(kind)
        if kind_at(k + step) == kind:  # a compound noun: "price range", "customer ratings"
            k += step
        elif 0 <= k + step < len(tokens) and tokens[k + step] == "and":  # "price and rating"
            k += 2 * step
        else:
            break
    return kinds


def _price_classes(parsed: _E2EText) -> set[str]:
    # Amounts are read from the whole text: "£20 - £25" would otherwise be cut at its dash.
    found = {cls for cls, patterns in _PRICE_PHRASES.items() if any(re.search(p, parsed.blanked) for p in patterns)}
    for clause in parsed.clauses:
        for i, word in enumerate(clause):
            prev = clause[i - 1] if i else ""
            nxt = clause[i + 1] if i + 1 < len(clause) else ""
            negated = _negated(clause, i, 3, gap=_NEGATION_GAP)
            for cls, words in _PRICE_WORDS.items():
                if word in words and not negated:
                    found.add(cls)
                elif word in words and cls == "high":
                    found.update(("cheap", "moderate"))  # "not expensive"
            if word == "average" and prev in ("above", "below") and "rating" not in _anchors(clause, i):
                found.add("high" if prev == "above" else "cheap")
                continue
            if word in _PRICE_MODIFIERS and not negated:
                kinds = {"price"} if nxt in ("end", "class") else _anchors(clause, i)  # "high end", "high-class"
                # "moderate" alone is a price in the E2E references ("It is moderate"); the others need a noun.
                if "price" in kinds or (not kinds and word in ("moderate", "moderately")):
                    found.update(_PRICE_MODIFIERS[word])
    return found


def _rating_classes(parsed: _E2EText) -> set[str]:
    found: set[str] = set()
    for clause in parsed.clauses:
        text = " " + " ".join(clause) + " "
        for match in _OUT_OF.finditer(text):
            if match.group(2) in ("5", "five") and match.group(1) in _RATING_NUMBER:
                found.add(_RATING_NUMBER[match.group(1)])
        text = _OUT_OF.sub(" ", text)  # so "1 out of 5 stars" is not also "5 stars"
        for pattern in (_STARS, _RATED_N, _N_RATING):
            found.update(_RATING_NUMBER[m.group(1)] for m in pattern.finditer(text) if m.group(1) in _RATING_NUMBER)
        for i, word in enumerate(clause):
            classes = [cls for cls, words in _RATING_WORDS.items() if word in words]
            if not classes or clause[i - 1 : i] == ("above",) or clause[i - 1 : i] == ("below",):
                continue
            if "rating" not in _anchors(clause, i):
                continue  # "low prices, customer rating 5 out of 5" does not rate it low
            if _negated(clause, i, 4, gap=_NEGATION_GAP):
                # "not highly rated", "doesn't have a very good rating": a low rating; "not bad" says nothing.
                if "low" not in classes:
                    found.add("low")
                continue
            found.update(classes)
    return found


_E2E_PATTERNS: dict[tuple[str, str], tuple[str, ...]] = {
    ("area", "riverside"): (r" river", r" waterfront ", r" waterside ", r" by the water "),
    ("area", "city centre"): (
        r" (?:centre|center|downtown|central|centrally) ",
        r" (?:heart|middle) of (?:the )?(?:city|town) ",
    ),
    ("eatType", "coffee shop"): (r" coffee (?:shop|house) ",),
    # Dishes that only one cuisine's references use (measured on the E2E training references).
    ("food", "English"): (r" british ",),
    ("food", "Japanese"): (r" sushi ",),
    ("food", "Italian"): (r" (?:pasta|pizza|pizzas) ",),
}


def _e2e_realised(parsed: _E2EText, attr: str, value: str, cache: dict[str, set[str]]) -> bool:
    if attr == "familyFriendly":
        return _family_polarity(parsed) == value.strip().lower()
    if attr == "customer rating" and value.strip().lower() in _RATING_CLASS:
        if "rating" not in cache:
            cache["rating"] = _rating_classes(parsed)
        return _RATING_CLASS[value.strip().lower()] in cache["rating"]
    if attr == "priceRange" and value.strip().lower() in _PRICE_CLASS:
        if "price" not in cache:
            cache["price"] = _price_classes(parsed)
        return _PRICE_CLASS[value.strip().lower()] in cache["price"]
    patterns = _E2E_PATTERNS.get((attr, value), ())
    return _contains(parsed.text, value) or any(re.search(p, parsed.text) for p in patterns)


def _blank(text: str, value: str) -> str:
    """Replace every whole-word occurrence of ``value`` by spaces, so its words cannot match again."""
    needle = normalise(value)
    return text.replace(needle, " " * len(needle)) if needle.strip() else text


def _e2e_check(prediction: str, slots: Slots) -> SlotErrors:
    parsed = _prepare_e2e(prediction)
    cache: dict[str, set[str]] = {}
    missing = tuple((a, v) for a, v in slots if not _e2e_realised(parsed, a, v, cache))
    source = {(a, v.lower()) for a, v in slots}
    source_entities = {v.lower() for a, v in slots if a in _ENTITY_SLOTS}
    added: list[tuple[str, str]] = []
    text = parsed.text
    # Longest names first so "The Golden Palace" is consumed before any shorter name could match inside it.
    for entity in _ENTITIES_LONGEST_FIRST:
        if _contains(text, entity):
            if entity.lower() not in source_entities:
                added.append(("name/near", entity))
            text = _blank(text, entity)
    for attr, vocab in E2E_ADDED_VOCAB.items():
        for value in vocab:
            if _contains(text, value) and (attr, value.lower()) not in source:
                added.append((attr, value))
    if not any(a == "familyFriendly" for a, _ in slots):
        polarity = _family_polarity(parsed)
        if polarity is not None:
            added.append(("familyFriendly", polarity))
    return SlotErrors(total=len(slots), missing=missing, added=tuple(added))


# ---- MultiWOZ and WebNLG ----------------------------------------------------------------------------------------

MULTIWOZ_SKIP = frozenset({"none", "?", "yes", "no", "dontcare"})
_NUMBER_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty"
).split()


# British and American spellings, and the two ways the corpus writes "guesthouse", are the same value.
_SPELLINGS = ((" theater", " theatre"), (" center", " centre"), (" guest house", " guesthouse"))
_TIME = re.compile(r"(\d{1,2}):(\d{2})")


def _spelling(text: str) -> str:
    for variant, canonical in _SPELLINGS:
        text = text.replace(variant, canonical)
    return text


def _multiwoz_realised(text: str, value: str) -> bool:
    if _contains(text, value):
        return True
    stripped = value.strip()
    if stripped.isdigit() and int(stripped) < len(_NUMBER_WORDS):
        return f" {_NUMBER_WORDS[int(stripped)]} " in text
    time = _TIME.fullmatch(stripped)
    if time:
        # "5:40" is written "05:40"; "8:11" also "8:11pm" / "8:11 pm".
        hour, minute = int(time.group(1)), time.group(2)
        return re.search(rf" 0?{hour} {minute}(?: ?[ap] ?m)? ", text) is not None
    needle = _spelling(normalise(value))
    if needle.strip() == "":
        return False
    # Plurals of the value's last word: "3 guesthouses", "two museums", "13.20 pounds".
    return re.search(re.escape(needle.rstrip()) + r"(?:s|es)? ", _spelling(text)) is not None


def _multiwoz_check(prediction: str, slots: Slots) -> SlotErrors:
    text = normalise(prediction)
    checked = [(s, v) for s, v in slots if v.strip().lower() not in MULTIWOZ_SKIP]
    missing = tuple((slot, value) for slot, value in checked if not _multiwoz_realised(text, value))
    return SlotErrors(total=len(checked), missing=missing, added=())


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
