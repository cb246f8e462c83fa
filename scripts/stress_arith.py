"""Stress the fixed-point arithmetic of the MPC runtime against float64; write an error histogram per configuration.

    .venv/bin/python scripts/stress_arith.py                        # both providers, fixed masks on and off
    .venv/bin/python scripts/stress_arith.py --sections tokens      # truncations per generated token only

``stress``: for each provider (``ttp``, ``tfp``) and fixed masks on/off, real two-party runs
(:func:`mpcgen.mpc.launch.run_parties`) compute the products the runtime runs at the small student's geometry
(d 256, vocab 4,096) and GPT-2-base's (d 768, vocab 50,257), and elementwise probes of magnitude 2^k; each result
the client receives is compared with float64 (:mod:`benchmark.arith`). Histograms of |error| in LSB (2^-16), errors
>= 0.5, observed and expected truncation wraps, CrypTen-decoder misreads, the worst cases.

``tokens``: real private generations on random weights of each geometry, counting every local truncation and its
expected wraps per generated token, and the logits CrypTen's decoder would misread.

Results go to ``--out`` (atomically, :func:`mpcgen.io.write_json`); a section that is not run keeps its old content.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tqdm.auto import tqdm  # noqa: E402

from benchmark import arith  # noqa: E402
from mpcgen.cli import one_line, setup_logging  # noqa: E402
from mpcgen.errors import MpcgenError  # noqa: E402
from mpcgen.io import read_json, write_json  # noqa: E402
from mpcgen.models.geometry import geometry_config, named_geometry  # noqa: E402
from mpcgen.mpc.launch import run_parties  # noqa: E402
from mpcgen.mpc.roles import CLIENT, PROVIDERS  # noqa: E402

logger = logging.getLogger("stress_arith")
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "benchmark" / "results" / "stress_arith.json"
# The geometries the project reports: the small student and GPT-2 base (docs/results.md).
STRESS_GEOMETRIES = {"small": "e2e-small", "base": "gpt2-base"}


def build_cases(args: argparse.Namespace) -> list[arith.Case]:
    cases: list[arith.Case] = []
    for tag in args.geometries:
        geo = named_geometry(STRESS_GEOMETRIES[tag])
        cases += arith.geometry_cases(tag, geo["d_model"], geo["vocab"], args.tokens)
    return cases + arith.large_cases(args.large_exps, args.large_elements)


def run_stress(args: argparse.Namespace) -> dict[str, Any]:
    """Every (provider, fixed) configuration: trials of every case, analysed as they arrive."""
    cases = build_cases(args)
    per_trial = sum(c.numel() for c in cases)
    logger.info("%d cases, %d elements per trial, %d trials per configuration", len(cases), per_trial, args.trials)
    configs: dict[str, Any] = {}
    for provider in args.providers:
        for fixed in args.fixed:
            name = f"{provider}-fixed{fixed}"
            by_case = {c.name: arith.empty_stats() for c in cases}
            start = time.perf_counter()
            for trial in tqdm(range(args.trials), desc=name, unit="trial"):
                out = run_parties(arith.stress_party, provider=provider, timeout=args.timeout,
                                  args=(cases, trial, args.seed, fixed == "on"))[CLIENT]
                logger.info("trial %d: seconds per case %s", trial, {k: round(v, 1) for k, v in out["seconds"].items()})
                for case in cases:
                    arith.analyse(by_case[case.name], case, out["results"][case.name], args.seed, trial,
                                  worst=args.worst)
            configs[name] = summarise(by_case, provider, fixed, time.perf_counter() - start, args.worst)
            log_config(name, configs[name])
    return {"configs": configs, "cases": [case_record(c) for c in cases], "trials": args.trials,
            "tokens": args.tokens, "seed": args.seed, "bins": arith.LABELS,
            "bins_note": "|error| in LSB (2^-16); bin '0': [0, 1), bin '2^k': [2^k, 2^(k+1)), '>2^20': >= 2^21"}


def case_record(case: arith.Case) -> dict[str, Any]:
    record = {k: v for k, v in vars(case).items() if v not in ("", None)}
    record["elements_per_trial"] = case.numel()
    return record


def summarise(by_case: dict[str, dict[str, Any]], provider: str, fixed: str, seconds: float, worst: int
              ) -> dict[str, Any]:
    """One configuration's record: totals over its in-range cases (``in_range``: every case but the large
    probes), over everything, and per case."""
    def total(names: list[str]) -> dict[str, Any]:
        acc = arith.empty_stats()
        for n in names:
            arith.merge_stats(acc, by_case[n], worst=worst)
        return export(acc)

    in_range = [n for n in by_case if not n.startswith("large/")]
    return {"provider": provider, "fixed_weights": fixed, "seconds": round(seconds, 1),
            "in_range": total(in_range), "all": total(list(by_case)),
            "cases": {n: export(s, worst=2) for n, s in by_case.items()}}  # the totals keep --worst


def export(stats: dict[str, Any], worst: int | None = None) -> dict[str, Any]:
    out = dict(stats)  # histograms stay lists, in the order of the section's "bins" (JSON keys get sorted)
    if worst is not None:
        out["worst"] = {kind: rows[:worst] for kind, rows in stats["worst"].items()}
    out["max_protocol_error_bin"] = max_error(stats["histogram"]["protocol"])
    return out


def max_error(hist: list[int]) -> str:
    """The label of the highest non-empty bin."""
    top = max((i for i, n in enumerate(hist) if n), default=0)
    return arith.LABELS[top]


def log_config(name: str, record: dict[str, Any]) -> None:
    rng, everything = record["in_range"], record["all"]
    logger.warning("%s: %d elements (%d in range); in range: protocol error in bin %s LSB, %d errors >= 0.5 (CrypTen's "
                   "decoder: %d); all: %d wraps observed, %.1f expected (%.1f s)", name, everything["elements"],
                   rng["elements"], rng["max_protocol_error_bin"], rng["over_half"]["protocol"],
                   rng["over_half"]["crypten_decode"], everything["wraps_observed"], everything["wraps_expected"],
                   record["seconds"])


# ------------------------------------------------------------------------------------------ per generated token


def run_tokens(args: argparse.Namespace, stress: dict[str, Any] | None) -> dict[str, Any]:
    """Truncations and expected wraps per generated token, per geometry and method, and the probabilities per
    token derived from them and from the stress run's LM-head logits."""
    records = {}
    for tag in args.token_geometries:
        geo = named_geometry(STRESS_GEOMETRIES[tag])
        for method in args.token_methods:
            preset, _, decoding = method.partition(":")
            config = geometry_config(preset=preset, arch=geo["arch"], family=geo["family"], layers=geo["layers"],
                                     d_model=geo["d_model"], heads=geo["heads"], vocab=geo["vocab"],
                                     positions=geo["positions"]).to_dict()
            start = time.perf_counter()
            results = run_parties(arith.token_party, provider=args.token_provider, timeout=args.timeout,
                                  args=(config, args.prompt_len, args.new_tokens, decoding, args.seed))
            per = [arith.per_token(r["marks"]) for r in results]  # both parties count the same divisions
            record = {"geometry": STRESS_GEOMETRIES[tag], "preset": preset, "decoding": decoding,
                      "provider": args.token_provider, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                      "seconds": round(time.perf_counter() - start, 1), **per[CLIENT],
                      "vocab": geo["vocab"], "d_model": geo["d_model"], "layers": geo["layers"]}
            # P(some wrap) <= sum over truncations of |v| / 2^32: for a mean |v| of m, elements * m / 2^32.
            record["wrap_bound_per_token"] = {f"mean|v|={m}": record["per_token"]["truncated_elements"] * m / 2.0 ** 32
                                              for m in (1, 16, 256)}
            records[f"{tag}/{method}"] = record
            logger.warning("%s/%s: %.0f truncated elements and %.2e expected wraps per token, %.0f and %.2e for the "
                           "prompt (random weights, max |v| %.1f), %d wraps in the run", tag, method,
                           record["per_token"]["truncated_elements"], record["per_token"]["expected_wraps"],
                           record["prompt"]["truncated_elements"], record["prompt"]["expected_wraps"],
                           record["max_abs_value"], record["observed_wraps_in_run"])
    return {"methods": records, "decode_misreads": decode_misreads(stress)}


def decode_misreads(stress: dict[str, Any] | None) -> dict[str, Any]:
    """Expected logits misread by CrypTen's decoder per revealed position, from the stress run's LM-head cases
    (rate per logit times the vocabulary): what ``client`` decoding met at every token before the exact decoder."""
    if not stress:
        return {}
    config = next(iter(stress["configs"].values()))
    out = {}
    for name, case in config["cases"].items():
        if "lm_head" not in name:
            continue
        vocab = next(c["w_shape"][0] for c in stress["cases"] if c["name"] == name)
        rate = case["decode_errors_expected"] / case["elements"]
        out[name] = {"vocab": vocab, "expected_misreads_per_logit": rate, "expected_misreads_per_token": rate * vocab,
                     "observed_misreads": case["over_half"]["crypten_decode"], "elements": case["elements"]}
    return out


# ------------------------------------------------------------------------------------------------------ main


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sections", nargs="+", default=["stress", "tokens"], choices=("stress", "tokens"),
                        help="what to run: the products' error histograms, the truncations per generated token")
    parser.add_argument("--providers", nargs="+", default=["ttp", "tfp"], choices=sorted(PROVIDERS),
                        help="providers of correlated randomness to stress")
    parser.add_argument("--fixed", nargs="+", default=["on", "off"], choices=("on", "off"),
                        help="fixed-weight masks (mpcgen.mpc.fixed) on / off (CrypTen's fresh Beaver triples)")
    parser.add_argument("--geometries", nargs="+", default=sorted(STRESS_GEOMETRIES), choices=sorted(STRESS_GEOMETRIES),
                        help="small: d 256, vocab 4,096; base: GPT-2 base, d 768, vocab 50,257")
    parser.add_argument("--tokens", type=int, default=8, help="positions per product (rows of the activations)")
    parser.add_argument("--trials", type=int, default=1, help="launches per configuration, fresh inputs each")
    parser.add_argument("--large-exps", nargs="*", type=float, default=[10, 15, 18, 20],
                        help="elementwise probes with products of magnitude 2^k")
    parser.add_argument("--large-elements", type=int, default=1 << 20, help="elements per probe and trial")
    parser.add_argument("--token-geometries", nargs="+", default=sorted(STRESS_GEOMETRIES),
                        choices=sorted(STRESS_GEOMETRIES), help="geometries of the per-token counts (random weights)")
    parser.add_argument("--token-methods", nargs="+", default=["vanilla:client", "merge:er", "merge:client"],
                        help="PRESET:DECODING for the per-token counts")
    parser.add_argument("--token-provider", default="tfp", choices=sorted(PROVIDERS),
                        help="provider of the per-token runs (the truncations do not depend on it)")
    parser.add_argument("--prompt-len", type=int, default=8, help="prompt ids of the per-token runs")
    parser.add_argument("--new-tokens", type=int, default=3, help="generated tokens of the per-token runs")
    parser.add_argument("--worst", type=int, default=8, help="worst cases kept per error kind")
    parser.add_argument("--seed", type=int, default=0, help="inputs and random weights")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per launch")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (other sections kept)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    args = parser.parse_args(argv)
    if args.large_elements % 1024 or args.large_elements < 1024:
        parser.error("--large-elements must be a positive multiple of 1024")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(logging.INFO if args.verbose else logging.WARNING)
    out_path = Path(args.out)
    try:
        record: dict[str, Any] = read_json(out_path) if out_path.exists() else {}
        command = "scripts/stress_arith.py " + " ".join(argv if argv is not None else sys.argv[1:])
        if "stress" in args.sections:
            record["stress"] = {**run_stress(args), "command": command.strip()}
        if "tokens" in args.sections:
            record["tokens"] = {**run_tokens(args, record.get("stress")), "command": command.strip()}
        record.update(commit=_commit(), cpu_count=os.cpu_count())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        write_json(out_path, record)
    except MpcgenError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
