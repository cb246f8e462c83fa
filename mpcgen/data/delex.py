"""Delexicalisation: copy-type slot values leave the model's input and output, and the client puts them back.

A small model trained on a few thousand MultiWOZ turns cannot copy booking references, train ids, phone numbers or
street addresses character by character (`Ref = MUFCMYFF` -> "MUFYCM"): those values cause most of its slot errors.
The common remedy in MultiWOZ NLG is to replace them by placeholders in the source and the target, train on
that, and re-insert the values into the generated text. Here that is a client-side step around the model:

    source  Train-Inform ( Id = TR1840 ; Leave = 16:36 )
    model   Train-Inform ( Id = [train_id] ; Leave = [train_leave] )  ->  "I have [train_id] leaving at [train_leave] ."
    client  "I have TR1840 leaving at 16:36 ."

The values never enter the secure computation (the client keeps them), and the server learns only which slots
the act set has, which the source's structure shows anyway.

A scheme names the slots it replaces (:data:`SCHEMES`: ``multiwoz``, the copy-type ones; ``multiwoz-all``, every
slot with a value, so the model writes only the sentence around them). A model trained with one carries its name in its
tokenizer's config (``mpcgen_delex`` in ``tokenizer_config.json``, :func:`mark`), so every checkpoint that copies
the tokenizer (students included) and every entry point (evaluation, private and plaintext generation) applies the
same scheme: :func:`scheme_of` reads it, :func:`prepare` turns sources into model inputs and the values to restore,
:func:`relexicalise` restores them.

Placeholders are ``[domain_slot]`` in lower case (``[restaurant_name]``); a second distinct value of the same
domain and slot in one act set gets ``[domain_slot_2]``, and one value given by two acts shares one placeholder.
Targets get a placeholder wherever the value occurs verbatim (case-insensitive, not inside a longer word); a value
the reference paraphrases stays as written. A placeholder the model generates that the source did not have stays
in the text as is (an error the slot error rate then counts; it is not hidden).

E2E (scheme ``e2e``): the ``name`` and ``near`` values, ``name[[name]], eatType[pub], near[[near]]``, as the
challenge's baseline TGen does.

WebNLG (scheme ``webnlg``) differs in one way: its entities are open-ended (half the test set's categories are
unseen in training) and often paraphrased (dates, units, "Austin, Texas" -> "Austin"), so the source keeps each
value and tags it, ``Aarhus Airport [entity_1] | cityServed | Aarhus, Denmark [entity_2]``: the model copies the
tag (five tokens of a fixed shape) where the text uses the name as is, and reads the value where it must
paraphrase. Here the values do enter the secure computation (as secret shares of the client's source, like any
prompt); what the scheme saves is the model's spelling out of names it has never seen. The value restored is the
entity's display form (:func:`webnlg_display`: a trailing ``(qualifier)`` and a float's ``.0`` dropped), the form
the references use most (82% of test entity mentions are verbatim in this form, 73% in the raw one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mpcgen.data.multiwoz import NON_VALUES
from mpcgen.errors import MpcgenError

# MultiWOZ slots whose values are copied rather than chosen: names, references, ids, addresses, phones, postcodes,
# times, prices, places and car types. Categorical slots (area, price range, food, stars, day, counts) stay.
MULTIWOZ_COPY_SLOTS = frozenset({"Name", "Ref", "Addr", "Id", "Phone", "Post", "Leave", "Arrive", "Time", "Ticket",
                                 "Dest", "Depart", "Fee", "Car"})
# A scheme names the slots it replaces; None: every slot with a value (MultiWOZ's categorical values, area, food,
# price range, type, stars, day, counts, are verbatim in 94-100% of the validation references).
# E2E: the venue's and the landmark's names, as TGen (the challenge's baseline) delexicalises them.
E2E_COPY_SLOTS = frozenset({"name", "near"})
SCHEMES: dict[str, frozenset[str] | None] = {"multiwoz": MULTIWOZ_COPY_SLOTS, "multiwoz-all": None, "webnlg": None,
                                             "e2e": E2E_COPY_SLOTS}
DELEX_TASKS: dict[str, str] = {"multiwoz": "multiwoz_nlg", "multiwoz-all": "multiwoz_nlg",  # scheme -> its task
                               "webnlg": "web_nlg", "e2e": "e2e_nlg"}
TOKENIZER_KEY = "mpcgen_delex"

_GROUP = re.compile(r"(?:^|(?<= ))([A-Za-z]+-[A-Za-z]+) \(")
_PLACEHOLDER = re.compile(r"\[[a-z]+(?:_[a-z]+)*(?:_\d+)?\]")
_QUALIFIER = re.compile(r"(.+?)\s*\([^()]*\)")
_WHOLE_FLOAT = re.compile(r"(-?\d+)\.0")

Values = dict[str, str]  # placeholder -> the value it stands for


def check_scheme(scheme: str) -> str:
    if scheme not in SCHEMES:
        raise MpcgenError(f"unknown delexicalisation scheme {scheme!r}; choose one of {sorted(SCHEMES)}")
    return scheme


def parse_source(source: str) -> list[tuple[str, str, str]]:
    """A MultiWOZ source (:func:`mpcgen.data.multiwoz.linearise_acts`) back into ``(intent, slot, value)`` triples;
    a group without slots gives ``(intent, "none", "none")``."""
    starts = list(_GROUP.finditer(source))
    if not starts or starts[0].start() != 0:
        raise MpcgenError(f"not a MultiWOZ act source (expected 'Domain-Intent ( Slot = value ; ... )'): {source!r}")
    acts = []
    for match, after in zip(starts, starts[1:] + [None]):
        body = source[match.end(): after.start() if after is not None else len(source)].strip()
        if not body.endswith(")"):
            raise MpcgenError(f"act group {match.group(1)!r} is not closed by ')' in {source!r}")
        body = body[:-1].strip()
        if not body:
            acts.append((match.group(1), "none", "none"))
            continue
        for part in body.split(" ; "):
            slot, sep, value = part.partition(" = ")
            if not sep:
                raise MpcgenError(f"act group {match.group(1)!r}: {part!r} is not 'Slot = value' in {source!r}")
            acts.append((match.group(1), slot.strip(), value.strip()))
    return acts


def webnlg_display(entity: str) -> str:
    """The form of a WebNLG entity that a text uses most: ``Twilight (band)`` -> ``Twilight``, ``"5.57"(days)`` ->
    ``5.57``, ``88.0`` -> ``88``; anything else unchanged."""
    match = _QUALIFIER.fullmatch(entity)
    if match and match.group(1).strip().strip('"'):
        entity = match.group(1).strip().strip('"')
    match = _WHOLE_FLOAT.fullmatch(entity)
    return match.group(1) if match else entity


def _webnlg_source(source: str) -> tuple[str, Values]:
    values: Values = {}
    by_entity: dict[str, str] = {}

    def tag(entity: str) -> str:
        if entity not in by_entity:
            by_entity[entity] = name = f"[entity_{len(by_entity) + 1}]"
            values[name] = webnlg_display(entity)
        return f"{entity} {by_entity[entity]}"

    triples = []
    for raw in source.split(" ; "):
        parts = raw.split(" | ")
        if len(parts) != 3 or not all(p.strip() for p in parts):
            raise MpcgenError(f"not a WebNLG triple source (expected 'subject | property | object ; ...'): "
                              f"{raw!r} in {source!r}")
        triples.append(f"{tag(parts[0])} | {parts[1]} | {tag(parts[2])}")
    return " ; ".join(triples), values


def _e2e_source(source: str) -> tuple[str, Values]:
    from mpcgen.data.e2e import parse_mr

    try:
        pairs = parse_mr(source)
    except ValueError as err:
        raise MpcgenError(f"not an E2E meaning representation: {err}") from None
    values: Values = {}
    out = []
    for attr, value in pairs:
        if attr in E2E_COPY_SLOTS:
            values[f"[{attr}]"] = value
            value = f"[{attr}]"
        out.append(f"{attr}[{value}]")
    return ", ".join(out), values


def delexicalise_source(source: str, scheme: str) -> tuple[str, Values]:
    """``(source with placeholders, {placeholder: value})`` for one source of the scheme's task."""
    from mpcgen.data.multiwoz import linearise_acts

    if check_scheme(scheme) == "webnlg":
        return _webnlg_source(source)
    if scheme == "e2e":
        return _e2e_source(source)
    slots = SCHEMES[scheme]
    values: Values = {}
    by_value: dict[str, str] = {}
    acts = []
    for intent, slot, value in parse_source(source):
        if (slots is None or slot in slots) and value.lower() not in NON_VALUES:
            key = value.lower()
            if key not in by_value:
                base = f"{intent.split('-')[0].lower()}_{slot.lower()}"
                name, n = f"[{base}]", 1
                while name in values:
                    n += 1
                    name = f"[{base}_{n}]"
                by_value[key], values[name] = name, value
            value = by_value[key]
        acts.append((intent, slot, value))
    return linearise_acts(acts)[0], values


def delexicalise_target(target: str, values: Mapping[str, str]) -> str:
    """``target`` with every verbatim occurrence of a value replaced by its placeholder (longest values first, one
    pass, so a placeholder's own letters are never matched again)."""
    if not values:
        return target
    by_value: dict[str, str] = {}
    for name, value in values.items():
        by_value.setdefault(value.lower(), name)  # two entities with one display form: the first one's tag
    # One named group per value: case-insensitive matching folds more than str.lower() does ("Yıldırım" matches
    # "Yildirim"), so the match is mapped back by its group, not by its text.
    order = sorted(by_value, key=len, reverse=True)
    pattern = "|".join(f"(?P<v{i}>{re.escape(v)})" for i, v in enumerate(order))
    return re.sub(rf"(?<![A-Za-z0-9])(?:{pattern})(?![A-Za-z0-9])", lambda m: by_value[order[int(m.lastgroup[1:])]],
                  target, flags=re.IGNORECASE)


def relexicalise(text: str, values: Mapping[str, str]) -> str:
    """The generated ``text`` with each known placeholder replaced by its value (unknown ones are left as they are)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(0), m.group(0)), text)


def delexicalise_example(source: str, target: str, scheme: str) -> tuple[str, str]:
    """A training pair in the scheme's form."""
    src, values = delexicalise_source(source, scheme)
    return src, delexicalise_target(target, values)


def delexicalise_examples(examples: Sequence[Any], scheme: str) -> list[Any]:
    """:class:`mpcgen.data.Example` pairs in the scheme's form (the training data of a delexicalised model)."""
    from mpcgen.data import Example

    return [Example(*delexicalise_example(ex.source, ex.target, scheme)) for ex in examples]


def mark(tokenizer: Any, scheme: str | None) -> None:
    """Record the scheme in the tokenizer (saved with it in ``tokenizer_config.json``)."""
    if scheme is None:
        tokenizer.init_kwargs.pop(TOKENIZER_KEY, None)
    else:
        tokenizer.init_kwargs[TOKENIZER_KEY] = check_scheme(scheme)


def scheme_of(tokenizer: Any) -> str | None:
    """The scheme a model's tokenizer was trained with, or None."""
    scheme = (getattr(tokenizer, "init_kwargs", None) or {}).get(TOKENIZER_KEY)
    return check_scheme(scheme) if scheme is not None else None


def prepare(tokenizer: Any, sources: Sequence[Any]) -> tuple[list[Any], list[Values]]:
    """Client side: the model inputs for ``sources`` and the values to restore in each output. Without a scheme
    (or for prompts given as token ids) the inputs are the sources and nothing is restored."""
    scheme = scheme_of(tokenizer) if tokenizer is not None else None
    if scheme is None:
        return list(sources), [{} for _ in sources]
    pairs = [delexicalise_source(s, scheme) if isinstance(s, str) else (s, {}) for s in sources]
    return [p for p, _ in pairs], [v for _, v in pairs]


__all__ = ["DELEX_TASKS", "E2E_COPY_SLOTS", "MULTIWOZ_COPY_SLOTS", "SCHEMES", "delexicalise_example",
           "delexicalise_examples", "delexicalise_source", "delexicalise_target", "mark", "parse_source", "prepare",
           "relexicalise", "scheme_of", "webnlg_display"]
