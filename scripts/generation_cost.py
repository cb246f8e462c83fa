"""Seconds, rounds and bytes per generated token of private generation on a randomly initialised model geometry.

    nice -n 10 .venv/bin/python scripts/generation_cost.py --geometry gpt2-base --prompt-length 32 \\
        --max-new-tokens 3 --provider ttp --weights private --out gen_cost.json

Runs ``vanilla`` + ``tokens`` decoding and ``merge`` + ``er`` decoding (``--methods`` changes the list), one launch
each, on random weights of the geometry (the costs do not depend on the values) and a random prompt of
``--prompt-length`` ids. Prints one line per method and, as the last stdout line, one JSON object with the stats.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Sequence

import torch

from mpcgen.checkpoint import write_json
from mpcgen.errors import MpcgenError

GEOMETRIES = {
    "gpt2-base": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "gpt2-tiny": dict(vocab_size=1024, n_positions=128, n_embd=128, n_layer=2, n_head=2),
}


def random_model(geometry: str, preset: str) -> torch.nn.Module:
    """A GPT-2 student of ``geometry`` with ``preset``'s approximations and random weights."""
    from mpcgen.models import ModelConfig, build_model

    if geometry not in GEOMETRIES:
        raise MpcgenError(f"unknown geometry {geometry!r}: use one of {sorted(GEOMETRIES)}")
    torch.manual_seed(0)
    config = ModelConfig(**GEOMETRIES[geometry], eos_token_id=50256 if geometry == "gpt2-base" else 2)
    return build_model(config.with_preset(preset)).eval()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", default="gpt2-base", choices=sorted(GEOMETRIES))
    parser.add_argument("--methods", nargs="+", default=["vanilla:tokens", "merge:er"], help="PRESET:DECODING ...")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=3)
    parser.add_argument("--provider", default="ttp", choices=("ttp", "tfp"))
    parser.add_argument("--weights", default="private", choices=("private", "public"))
    parser.add_argument("--fixed-weights", default="on", choices=("on", "off"),
                        help="private weights: masks opened once per session (on) or fresh Beaver triples (off)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from mpcgen.generation import generate_private

    records = []
    try:
        for method in args.methods:
            preset, _, decoding = method.partition(":")
            model = random_model(args.geometry, preset)
            prompt = torch.randint(0, model.config.vocab_size, (args.prompt_length,),
                                   generator=torch.Generator().manual_seed(1)).tolist()
            start = time.perf_counter()
            (result,) = generate_private(model, [prompt], max_new_tokens=args.max_new_tokens, decoding=decoding or None,
                                         provider=args.provider, weights=args.weights, timeout=args.timeout,
                                         fixed_weights=args.fixed_weights == "on",
                                         progress=True)
            s = result.stats
            per = s.per_token()
            record = {"geometry": args.geometry, "preset": preset, "decoding": s.decoding, "provider": s.provider,
                      "weights": s.weights, "fixed_weights": s.fixed_weights, "setup_s": s.setup_s,
                      "setup_rounds": s.setup_rounds, "setup_bytes": s.setup_bytes, "prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens,
                      "launch_s": time.perf_counter() - start, "per_token": per, "prompt_s": s.prompt_s,
                      "prompt_rounds": s.prompt_rounds, "prompt_bytes": s.prompt_bytes, "per_token_s": s.per_token_s,
                      "per_token_rounds": s.per_token_rounds, "per_token_bytes": s.per_token_bytes,
                      "finish_s": s.finish_s, "finish_rounds": s.finish_rounds, "finish_bytes": s.finish_bytes,
                      "total": {"seconds": s.wall_s, "rounds": s.rounds, "bytes": s.bytes,
                                "dealer_bytes": s.dealer_bytes}, "groups": s.groups, "projected_s": s.projected_s}
            records.append(record)
            print(f"{preset}+{s.decoding}: {per['seconds']:.2f} s, {per['rounds']:.0f} rounds, "
                  f"{per['bytes'] / 1e6:.1f} MB online, {per['dealer_bytes'] / 1e6:.1f} MB dealer per generated "
                  f"token (prompt {s.prompt_tokens} tokens: {s.prompt_s:.1f} s, {s.prompt_rounds} rounds, "
                  f"{s.prompt_bytes / 1e6:.1f} MB)", flush=True)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = {"records": records}
    if args.out:
        write_json(args.out, out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
