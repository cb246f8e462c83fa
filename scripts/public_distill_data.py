"""Distillation data that keeps a DP teacher's guarantee: public inputs, texts written by the teacher.

    .venv/bin/python scripts/public_distill_data.py --teacher stage1_ckpts/e2e_nlg-gpt2-dp --n 6000 \
        --out stage2_ckpts/dp-public-pairs.jsonl
    .venv/bin/python -m distill.run --teacher stage1_ckpts/e2e_nlg-gpt2-dp --preset lite \
        --train-file stage2_ckpts/dp-public-pairs.jsonl ...

A DP-SGD teacher's guarantee covers what is computed from its weights alone (post-processing), not a student
distilled on the private training set. So the student learns from inputs that owe nothing to that set: E2E
meaning representations drawn from the challenge's published attribute schema (Novikova et al., SIGDIAL 2017:
eight attributes and their value sets), with restaurant and venue names taken from a public corpus (MultiWOZ's
validation acts here, which this project treats as public), each realised by the teacher (greedy). Every MR has
``name`` and 2-7 more attributes in the E2E order, ``near`` naming another venue. Validation for the student is a
held-out part of the same file (``distill.run --holdout-percent``), so model selection stays off the private data too.

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


def synthetic_mrs(n: int, names: Sequence[str], seed: int) -> list[str]:
    """``n`` distinct E2E MRs from the schema and ``names``."""
    rng = random.Random(seed)
    out: dict[str, None] = {}
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n:
            raise MpcgenError(f"could not draw {n} distinct MRs from {len(names)} names")
        extra = rng.sample([a for a in ORDER if a != "name"], rng.randint(2, 7))
        pairs = {"name": rng.choice(names)}
        for attr in extra:
            if attr == "near":
                pairs[attr] = rng.choice([x for x in names if x != pairs["name"]])
            else:
                pairs[attr] = rng.choice(E2E_SCHEMA[attr])
        out.setdefault(", ".join(f"{a}[{pairs[a]}]" for a in ORDER if a in pairs))
    return list(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="the (DP) stage-1 teacher folder that writes the texts")
    parser.add_argument("--out", type=Path, required=True, help="JSON Lines file to write")
    parser.add_argument("--n", type=int, default=6000, help="MRs to draw (default 6000)")
    parser.add_argument("--seed", type=int, default=0)
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
        names = public_names(args.data_dir)
        mrs = synthetic_mrs(args.n, names, args.seed)
        logger.info("%d MRs from %d public venue names; decoding with %s", len(mrs), len(names), args.teacher)
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
