"""Public E2E pairs: MRs from the published schema, texts by a DP teacher (distillation) or by templates (DP
pre-training).

    .venv/bin/python scripts/public_distill_data.py --teacher stage1_ckpts/e2e_nlg-gpt2-dp --n 6000 \
        --out stage2_ckpts/dp-public-pairs.jsonl
    .venv/bin/python -m distill.run --teacher stage1_ckpts/e2e_nlg-gpt2-dp --preset lite \
        --train-file stage2_ckpts/dp-public-pairs.jsonl ...
    .venv/bin/python scripts/public_distill_data.py --realiser template --n 40000 --out public/e2e-template.jsonl
    .venv/bin/python -m nlg.finetune --task e2e --train-file public/e2e-template.jsonl ...   # the public model

A DP-SGD teacher's guarantee covers what is computed from its weights alone (post-processing), not a student
distilled on the private training set. So the student learns from inputs that owe nothing to that set: E2E
meaning representations drawn from the challenge's published attribute schema (Novikova et al., SIGDIAL 2017:
eight attributes and their value sets), with restaurant and venue names taken from a public corpus (MultiWOZ's
validation acts here, which this project treats as public), each realised by the teacher (greedy). Every MR has
``name`` and 2-7 more attributes in the E2E order, ``near`` naming another venue. Validation for the student is a
held-out part of the same file (``distill.run --holdout-percent``), so model selection stays off the private data too.

``--realiser template`` writes the texts with hand-written templates instead (:func:`template_text`: a few
phrasings per attribute, clauses in random order, one to three sentences), no model and no private data: a public
corpus to pre-train on before DP-SGD fine-tuning on the private set. The phrasings come from the schema's wording,
not from the E2E references; every templated text realises all its attributes by the slot error rules (tested).

Writes JSON Lines ``{"source", "target"}`` atomically; logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))  # run from a checkout without installing

from mpcgen.errors import MpcgenError  # noqa: E402

logger = logging.getLogger("public_distill_data")

# The E2E schema as published (attribute -> values); name and near are verbatim venue names.
E2E_SCHEMA: dict[str, tuple[str, ...]] = {
    "eatType": ("restaurant", "pub", "coffee shop"),
    "food": ("Chinese", "English", "Fast food", "French", "Indian", "Italian", "Japanese"),
    "priceRange": ("cheap", "moderate", "high", "less than £20", "£20-25", "more than £30"),
    "customer rating": ("low", "average", "high", "1 out of 5", "3 out of 5", "5 out of 5"),
    "area": ("riverside", "city centre"),
    "familyFriendly": ("yes", "no"),
}
ORDER = ("name", "eatType", "food", "priceRange", "customer rating", "area", "familyFriendly", "near")


def public_names(data_dir: str | None) -> list[str]:
    """Venue names from MultiWOZ's validation acts (restaurants, hotels, attractions), in first-seen order."""
    from mpcgen.data import multiwoz, resolve_data_dir

    path = resolve_data_dir(data_dir) / "multiwoz" / "validation.jsonl"
    names: dict[str, None] = {}
    for _, record in multiwoz.read_records(path):
        for intent, slots, values in zip(record[multiwoz.ACT_TYPE], record[multiwoz.SLOT_NAME],
                                         record[multiwoz.SLOT_VALUE]):
            if intent.split("-")[0] in ("Restaurant", "Hotel", "Attraction"):
                for slot, value in zip(slots, values):
                    value = " ".join(value.split())
                    if slot == "Name" and value.lower() not in ("none", "?") and "[" not in value:
                        names.setdefault(value.title() if value.islower() else value)
    if len(names) < 2:
        raise MpcgenError(f"{path}: fewer than two venue names")
    return list(names)


def composed_name(words: Sequence[str], rng: random.Random) -> str:
    """A made-up venue name of one to three of ``words`` (the words of the public names), sometimes after "The"."""
    body = " ".join(rng.choice(words) for _ in range(rng.choice((1, 2, 2, 3))))
    return f"The {body}" if rng.random() < 0.3 else body


def synthetic_mrs(n: int, names: Sequence[str], seed: int, composed: float = 0.0) -> list[str]:
    """``n`` distinct E2E MRs from the schema and ``names``; a ``composed`` share of the names (and landmarks) are
    made up from the names' words instead, so that a model trained on them learns to copy a name rather than to
    memorise a list of them."""
    if not 0.0 <= composed <= 1.0:
        raise MpcgenError(f"the composed share of names must be in [0, 1], got {composed}")
    rng = random.Random(seed)
    words = sorted({w for name in names for w in name.split() if w[:1].isupper() and w.isalpha() and len(w) > 2})

    def venue() -> str:
        return composed_name(words, rng) if rng.random() < composed else rng.choice(names)

    out: dict[str, None] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise MpcgenError(f"could not draw {n} distinct MRs from {len(names)} names")
        extra = rng.sample([a for a in ORDER if a != "name"], rng.randint(2, 7))
        pairs = {"name": venue()}
        for attr in extra:
            if attr == "near":
                pairs[attr] = venue()
                while pairs[attr] == pairs["name"]:
                    pairs[attr] = venue()
            else:
                pairs[attr] = rng.choice(E2E_SCHEMA[attr])
        out.setdefault(", ".join(f"{a}[{pairs[a]}]" for a in ORDER if a in pairs))
    return list(out)


_FOOD_WORD = {"Fast food": "fast food"}
_PRICE = {  # priceRange value -> (noun phrase after "with"/"has", predicate after "is")
    "cheap": (["cheap prices", "low prices", "a cheap price range"], ["cheap", "inexpensive", "low-priced"]),
    "moderate": (["moderate prices", "a moderate price range", "average prices"], ["moderately priced"]),
    "high": (["high prices", "a high price range"], ["expensive", "pricey", "high-priced"]),
    "less than £20": (["prices less than £20", "a price range of less than £20", "meals under £20"],
                      ["priced under £20", "less than £20 per person"]),
    "£20-25": (["prices of £20-25", "a £20-25 price range"], ["priced at £20-25", "in the £20-25 price range"]),
    "more than £30": (["prices of more than £30", "a price range of more than £30"],
                      ["priced at more than £30", "over £30 per person"]),
}
_RATING = {  # customer rating value -> (noun phrase, predicate)
    "low": (["a low customer rating", "low customer ratings", "a poor customer rating"],
            ["rated low by customers", "poorly rated"]),
    "average": (["an average customer rating", "average customer ratings"], ["rated average by customers"]),
    "high": (["a high customer rating", "high customer ratings", "excellent customer reviews"],
             ["highly rated by customers", "rated high by customers"]),
    "1 out of 5": (["a customer rating of 1 out of 5", "a 1 out of 5 rating"], ["rated 1 out of 5"]),
    "3 out of 5": (["a customer rating of 3 out of 5", "a 3 out of 5 rating"], ["rated 3 out of 5"]),
    "5 out of 5": (["a customer rating of 5 out of 5", "a 5 out of 5 rating"], ["rated 5 out of 5"]),
}
_AREA = {"riverside": ["in the riverside area", "by the riverside", "on the riverside"],
         "city centre": ["in the city centre", "in the centre of the city", "in the city centre area"]}
_FAMILY = {"yes": ["is family friendly", "is kid friendly", "welcomes children", "is good for families"],
           "no": ["is not family friendly", "is not kid friendly", "does not welcome children", "is for adults only"]}


def template_text(mr: str, rng: random.Random) -> str:
    """One templated realisation of an E2E ``mr`` (``name[...]`` first): an opening that names the venue with its
    type, food, area and landmark, then the remaining attributes as clauses in random order."""
    from mpcgen.data.e2e import parse_mr

    slots = dict(parse_mr(mr))
    if "name" not in slots:
        raise MpcgenError(f"an MR needs name[...]: {mr!r}")
    unknown = sorted(set(slots) - set(ORDER))
    if unknown:
        raise MpcgenError(f"attributes outside the E2E schema {unknown} in {mr!r}")
    name = slots["name"]
    kind = slots.get("eatType", "place")
    food = _FOOD_WORD.get(slots.get("food", ""), slots.get("food", ""))
    head = f"{food} {kind}" if food and rng.random() < 0.7 else kind
    article = "an" if head[0].lower() in "aeiou" else "a"
    opening = rng.choice([f"{name} is {article} {head}", f"There is {article} {head} called {name}"])
    if "food" in slots and food not in head:
        opening += rng.choice([f" that serves {food} food", f" serving {food} food"])
    places = []
    if "area" in slots:
        places.append(rng.choice(_AREA[slots["area"]]))
    if "near" in slots:
        places.append(rng.choice(["near", "close to", "located near"]) + f" {slots['near']}")
    clauses = []
    if places and rng.random() < 0.6:
        opening += " " + " ".join(places)
    elif places:
        clauses.append("is " + " ".join(places))
    for attr, phrases in (("priceRange", _PRICE), ("customer rating", _RATING)):
        if attr in slots:
            nouns, preds = phrases[slots[attr]]
            clauses.append(rng.choice(["has " + rng.choice(nouns), "is " + rng.choice(preds)]))
    if "familyFriendly" in slots:
        clauses.append(rng.choice(_FAMILY[slots["familyFriendly"]]))
    rng.shuffle(clauses)
    sentences = [opening]
    subject = rng.choice(["It", f"The {kind}", name])
    while clauses:
        take = clauses[: rng.randint(1, 2)]
        clauses = clauses[len(take):]
        sentences.append(f"{subject} " + " and ".join(take))
        subject = rng.choice(["It", f"The {kind}"])
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--realiser", choices=("teacher", "template"), default="teacher",
                        help="who writes the texts: --teacher (distillation data) or templates (public pre-training)")
    parser.add_argument("--teacher", help="the (DP) stage-1 teacher folder that writes the texts (--realiser teacher)")
    parser.add_argument("--out", type=Path, required=True, help="JSON Lines file to write")
    parser.add_argument("--n", type=int, default=6000, help="MRs to draw (default 6000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--composed-names", type=float, default=0.0,
                        help="share of venue names made up from the public names' words (default 0; templated "
                             "pre-training data wants most, e.g. 0.8, so the model learns to copy names)")
    parser.add_argument("--data-dir", default=None, help="data folder with multiwoz/ (default $MPCGEN_DATA_DIR)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--num-threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from mpcgen.evaluation import EvalSettings, decode_sources
    from mpcgen.io import write_text

    torch.set_num_threads(args.num_threads)
    try:
        if args.n < 1:
            raise MpcgenError(f"--n must be >= 1, got {args.n}")
        if (args.realiser == "teacher") != (args.teacher is not None):
            raise MpcgenError("--teacher is needed with --realiser teacher, and only then")
        names = public_names(args.data_dir)
        mrs = synthetic_mrs(args.n, names, args.seed, args.composed_names)
        logger.info("%d MRs from %d public venue names; texts by %s", len(mrs), len(names),
                    args.teacher or "templates")
        if args.teacher is None:
            rng = random.Random(args.seed + 1)
            texts = [template_text(mr, rng) for mr in mrs]
        else:
            texts, _ = decode_sources(args.teacher, mrs, EvalSettings(batch_size=args.batch_size,
                                                                      max_new_tokens=args.max_new_tokens))
    except MpcgenError as exc:
        logger.error("%s", exc)
        return 2
    lines = [json.dumps({"source": mr, "target": " ".join(t.split())}, ensure_ascii=False)
             for mr, t in zip(mrs, texts) if t.strip()]
    logger.info("%d of %d texts non-empty; writing %s", len(lines), len(mrs), args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, "".join(line + "\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
