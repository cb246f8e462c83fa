"""Per generated token: seconds, rounds and bytes of private generation for several methods on one named geometry.

    .venv/bin/python scripts/generation_cost.py --geometry gpt2-base --methods merge:er merge:client merge:tokens \\
        --prompt-length 32 --max-new-tokens 4 --provider ttp --weights private --out gen_cost.json

Each ``PRESET:DECODING`` is one benchmark point (:func:`benchmark.harness.run_point`, the same measurement as
``python -m benchmark.run``) on random weights of the geometry (costs do not depend on the values) and a random
prompt of ``--prompt-length`` ids, generating ``--max-new-tokens`` tokens. Prints one line per method and, as the
last stdout line, one JSON object with the records.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from benchmark.harness import BenchSpec, run_point  # noqa: E402
from mpcgen.cli import one_line, setup_logging  # noqa: E402
from mpcgen.errors import MpcgenError  # noqa: E402
from mpcgen.io import write_json  # noqa: E402
from mpcgen.models.geometry import GEOMETRIES, named_geometry  # noqa: E402
from mpcgen.mpc.roles import PROVIDERS, WEIGHT_MODES  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--geometry", default="gpt2-base", choices=sorted(GEOMETRIES))
    parser.add_argument("--methods", nargs="+", default=["vanilla:tokens", "merge:er"], help="PRESET:DECODING ...")
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--provider", default="ttp", choices=sorted(PROVIDERS))
    parser.add_argument("--weights", default="private", choices=WEIGHT_MODES)
    parser.add_argument("--fixed-weights", default="on", choices=("on", "off"),
                        help="private weights: masks opened once per session (on) or fresh Beaver triples (off)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", default=None, help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    setup_logging()
    records = []
    try:
        geometry = named_geometry(args.geometry)
        for method in args.methods:
            preset, _, decoding = method.partition(":")
            spec = BenchSpec(method=preset, arch=geometry["arch"], family=geometry["family"],
                             layers=geometry["layers"], d_model=geometry["d_model"], heads=geometry["heads"],
                             vocab=geometry["vocab"], positions=geometry["positions"],
                             msl=args.prompt_length + args.max_new_tokens, prefix_len=args.prompt_length,
                             decoding=decoding or None, provider=args.provider, weights=args.weights,
                             fixed_weights=args.fixed_weights, timeout=args.timeout)
            record = run_point(spec)
            per = record["per_token"]
            records.append({**record, "geometry": args.geometry, "method": method})
            print(f"{preset}+{record['decoding']}: {per['rounds']:.1f} rounds, {per['bytes'] / 1e6:.2f} MB online, "
                  f"{per['seconds']:.2f} s wall ({per['cpu_s']:.2f} s CPU) per generated token; LAN "
                  f"{per['projected_s']['lan']:.2f} s, WAN {per['projected_s']['wan']:.2f} s", flush=True)
    except MpcgenError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    out = {"records": records}
    if args.out:
        write_json(args.out, out)
    print(json.dumps({"records": [{"method": r["method"], "per_token": {k: v for k, v in r["per_token"].items()
                                                                        if k != "groups"}} for r in records]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
