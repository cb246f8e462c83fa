"""Measure one point of private generation: time, compute, rounds and bytes, total, per op group and per token.

    python -m benchmark.run --method merge --arch decoder --layers 12 --d-model 768 --heads 12 --vocab 50257 \\
        --msl 128 --prefix-len 4 --weights private --provider ttp --max-new-tokens 3 --json out.json

Runs real two-party generation (server, client and, for ``ttp``, the dealer as local processes) of msl - prefix
tokens on random weights of the geometry (``--checkpoint DIR`` runs a trained student or teacher instead). Decoder
models take a prompt of ``--prefix-len`` random ids; encoder-decoders take it as the encoder input and generate
msl - prefix decoder tokens. ``--max-new-tokens K`` caps the measured steps; the sequence's figures are then
estimated from windows of K steps at the start and the end of the sequence (``--window``; see
``benchmark/harness.py`` and ``benchmark/README.md``). Medians over ``--runs``. Projections for LAN, WAN and every
``--net BW,RTT`` (e.g. ``1gbit,10ms``; bare numbers are bit/s and seconds); ``--netns NET`` also runs the parties
in two network namespaces joined by a shaped link (a veth pair with ``tc netem``, or TUN devices and a user-space
emulator where the kernel has no netem; root only) and compares. The projection's compute term is the CPU time of
the busier party (``cpu_s``).

Logs go to stderr; the last stdout line is the record as one JSON object (``seconds``, ``bytes``, ``rounds``,
``tokens``, ``per_token``, ``groups``, ``projected_s``, ``windows``, ...), also written to ``--json``. User errors
print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from benchmark.harness import FIXED_WEIGHTS, METHODS, WINDOWS, BenchSpec, run_point
from mpcgen.errors import MpcgenError
from mpcgen.generation.loop import DECODINGS
from mpcgen.models.geometry import FAMILY_FIELDS
from mpcgen.mpc.roles import PROVIDERS, WEIGHT_MODES

logger = logging.getLogger("benchmark.run")


def add_point_args(parser: argparse.ArgumentParser, *, geometry: bool = True) -> None:
    """The options of one point (shared with the sweeps, which set some of them per point)."""
    if geometry:
        parser.add_argument("--method", default="vanilla", choices=METHODS)
        parser.add_argument("--layers", type=int, default=12, help="decoder layers (default 12)")
        parser.add_argument("--d-model", type=int, default=768, help="model width (default 768)")
        parser.add_argument("--heads", type=int, default=12, help="attention heads (default 12)")
        parser.add_argument("--msl", type=int, default=128, help="maximum sequence length N (default 128)")
    parser.add_argument("--arch", default="decoder", choices=("decoder", "encoder-decoder"))
    parser.add_argument("--family", default=None, choices=sorted(FAMILY_FIELDS),
                        help="default gpt2 (decoder) / t5 (encoder-decoder)")
    parser.add_argument("--encoder-layers", type=int, default=None, help="encoder-decoders (default --layers)")
    parser.add_argument("--vocab", type=int, default=None, help="default: the family's (50257 / 32128 / 50265)")
    parser.add_argument("--d-ff", type=int, default=None, help="feed-forward width (default 4 x d-model)")
    parser.add_argument("--positions", type=int, default=None, help="n_positions (default msl)")
    parser.add_argument("--prefix-len", type=int, default=4, help="prompt (encoder input) length P (default 4)")
    parser.add_argument("--weights", default="private", choices=WEIGHT_MODES)
    parser.add_argument("--provider", default="ttp", choices=sorted(PROVIDERS))
    parser.add_argument("--decoding", default=None, choices=DECODINGS,
                        help="default er for ER methods (merge, merge-er-only), else tokens (the papers' baseline)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap the generated tokens per run at K (default msl - prefix: the whole sequence)")
    parser.add_argument("--window", default="auto", choices=WINDOWS,
                        help="with K < msl - prefix: which K steps to measure (auto: both for decoders, start "
                             "for encoder-decoders)")
    parser.add_argument("--runs", type=int, default=1, help="launches per window; medians are reported")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and prompt")
    parser.add_argument("--fixed-weights", default="on", choices=FIXED_WEIGHTS,
                        help="private weights: open each weight's mask once per session (on, default) or a fresh "
                             "Beaver triple per product (off)")
    parser.add_argument("--net", action="append", default=[], metavar="BW,RTT",
                        help="extra network to project on, e.g. 1gbit,10ms (repeatable; lan and wan always)")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds per launch")
    parser.add_argument("--progress", action="store_true", help="progress bar per generated token")
    parser.add_argument("--tls", action="store_true",
                        help="TLS 1.3 party links with certificates made for the run (default: plaintext links)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark.run", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_point_args(parser)
    parser.add_argument("--checkpoint", default=None, help="a student or stage-1 teacher folder instead of random "
                                                          "weights (its geometry wins over the flags)")
    parser.add_argument("--netns", default=None, metavar="NET",
                        help="also run in two network namespaces over a veth shaped to NET (lan, wan or BW,RTT; "
                             "root only) and compare the measured time with the projection")
    parser.add_argument("--netns-runs", type=int, default=1, help="launches per window over the shaped link")
    parser.add_argument("--netns-shaper", default="auto", choices=("auto", "netem", "tun"),
                        help="netem qdiscs on a veth pair, or the user-space TUN emulator for kernels without "
                             "netem (auto: netem where available)")
    parser.add_argument("--netns-mtu", type=int, default=1500,
                        help="MTU of the shaped link (default 1500, as on a WAN; the TUN emulator keeps up with "
                             "~200 Mbit/s at 1500 on a small CPU, use 9000+ for faster links)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the record to this file")
    parser.add_argument("--rederive", nargs="+", default=None, metavar="RECORD",
                        help="measure nothing: recompute the derived figures (sequence estimate, per token, "
                             "projections) of these record files from their windows, in place")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def spec_from_args(args: argparse.Namespace, **overrides: Any) -> BenchSpec:
    """A :class:`BenchSpec` from parsed options (``overrides`` win)."""
    fields = dict(method=args.method, arch=args.arch, family=args.family, layers=args.layers,
                  encoder_layers=args.encoder_layers, d_model=args.d_model, heads=args.heads, vocab=args.vocab,
                  d_ff=args.d_ff, positions=args.positions, msl=args.msl, prefix_len=args.prefix_len,
                  weights=args.weights, provider=args.provider, decoding=args.decoding,
                  max_new_tokens=args.max_new_tokens, window=args.window, runs=args.runs, seed=args.seed,
                  fixed_weights=args.fixed_weights, checkpoint=getattr(args, "checkpoint", None),
                  timeout=args.timeout, progress=args.progress, tls=getattr(args, "tls", False),
                  nets=list(args.net))
    fields.update(overrides)
    return BenchSpec(**fields)


def summary(record: dict[str, Any]) -> str:
    """A few human lines: sequence totals, per token, the start and end steps, projections, groups per token."""
    r, per = record, record["per_token"]
    est = " (estimated from windows " + r["window"] + ")" if r["estimated"] else ""
    lines = [f"{r['method']} ({r['decoding']}, {r['weights']} weights, {r['provider']}) {r['arch']} "
             f"L{r['layers']} d{r['d_model']} h{r['heads']} V{r['vocab']}, msl {r['msl']}, prefix {r['prefix_len']}: "
             f"{r['tokens']} tokens{est}",
             f"  sequence: {r['seconds']:.1f} s wall ({_f(r.get('cpu_s'))} s CPU), {r['rounds']:.0f} rounds, "
             f"{r['bytes'] / 1e9:.3f} GB online, {_f(r['dealer_bytes'], 1e9, 3)} GB dealer",
             f"  per token: {per['seconds']:.2f} s wall ({_f(per.get('cpu_s'), digits=2)} s CPU), "
             f"{per['rounds']:.1f} rounds, {per['bytes'] / 1e6:.1f} MB"]
    for key in ("step_start", "step_end"):
        s = r.get(key)
        if s:
            lines.append(f"  full step at positions {s['positions'][0]}-{s['positions'][1]}: {s['seconds']:.2f} s wall "
                         f"({_f(s.get('cpu_s'), digits=2)} s CPU), "
                         f"{s['rounds']:.0f} rounds, {s['bytes'] / 1e6:.1f} MB")
    if r["projected_s"]:
        lines.append("  projected: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["projected_s"].items())
                     + f" (compute = {r.get('projection_compute', 'compute_s')})")
    if per["groups"]:
        lines.append("  per token by group: " + ", ".join(
            f"{g} {c['bytes'] / 1e6:.1f} MB/{c['rounds']:.0f} r" for g, c in per["groups"].items() if c["rounds"]))
    for name, check in (record.get("netns") or {}).get("windows", {}).items():
        lines.append(f"  netns {record['netns']['network']['name']} window {name}: measured {check['measured_s']:.1f}"
                     f" s, projected {check['projected_s']:.1f} s (from the loopback run's compute)")
    return "\n".join(lines)


def _f(value: float | None, unit: float = 1.0, digits: int = 1) -> str:
    return "?" if value is None else f"{value / unit:.{digits}f}"


def rederive_files(paths: Sequence[str]) -> int:
    """``--rederive``: rewrite each record with its derived figures recomputed."""
    from benchmark.harness import rederive
    from mpcgen.checkpoint import read_json, write_json

    for path in paths:
        try:
            record = read_json(Path(path))
        except (OSError, json.JSONDecodeError) as err:
            raise MpcgenError(f"cannot read record {path}: {err}") from None
        write_json(Path(path), rederive(record))
        logger.info("re-derived %s", path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.rederive:
            return rederive_files(args.rederive)
        from benchmark.network import parse_network

        netns = parse_network(args.netns) if args.netns else None
        if args.json and not Path(args.json).parent.is_dir():
            raise MpcgenError(f"--json {args.json}: folder {Path(args.json).parent} does not exist")
        record = run_point(spec_from_args(args), netns=netns, netns_runs=args.netns_runs,
                           netns_shaper=args.netns_shaper, netns_mtu=args.netns_mtu)
    except MpcgenError as err:
        from mpcgen.cli import one_line

        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    logger.info("\n%s", summary(record))
    if args.json:
        from mpcgen.checkpoint import write_json

        write_json(Path(args.json), record)
    print(json.dumps(record, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
