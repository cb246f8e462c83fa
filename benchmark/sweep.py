"""Resumable sweeps of private generation: over the sequence length (``msl``) or the model size (``params``).

    python -m benchmark.sweep msl --methods vanilla mpcformer thex merge --msl 64 128 256 512 \\
        --layers 4 --d-model 256 --heads 4 --vocab 4096 --max-new-tokens 3 --out benchmark/results/vary_msl
    python -m benchmark.sweep params --arch encoder-decoder --layer-scale 0.25 --width-scale 0.25 --vocab 4096 \\
        --msl 64 --max-new-tokens 3 --out benchmark/results/vary_params

Each point (method x msl, or method x geometry) is one :func:`benchmark.harness.run_point` record saved as
``<out>/points/<key>.json``; a point whose file exists is skipped, so an interrupted sweep resumes where it
stopped (delete a file to re-measure it). After every point, and with ``--report-only`` without measuring, the
CSV / JSON / Markdown table and the plots are rebuilt from the point files (:mod:`benchmark.report`). Defaults are
the papers' settings (GPT-2-base / MERGE's geometries, all steps); ``--layers``, ``--d-model``, ``--vocab``,
``--layer-scale``, ``--width-scale`` and ``--max-new-tokens`` shrink a sweep to fit a CPU. A point that fails is
logged and skipped (exit status 2 at the end); the others still run.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmark.harness import METHODS, BenchSpec, run_point
from benchmark.report import build_report
from benchmark.run import add_point_args, spec_from_args
from mpcgen.checkpoint import write_json
from mpcgen.errors import MpcgenError

logger = logging.getLogger("benchmark.sweep")

MAIN_METHODS = ["vanilla", "mpcformer", "thex", "merge"]
GEOMETRIES = {  # layers/d_model/heads
    "decoder": ["12/768/12", "24/1024/16", "36/1280/20", "48/1600/25"],  # GPT-2 small, medium, large, xl
    "encoder-decoder": ["6/512/8", "12/768/12", "12/1024/16", "24/1024/16"],  # MERGE's Table 2 geometries
}


def point_key(spec: BenchSpec) -> str:
    """File name (without .json) of a point: every setting that changes the measurement."""
    k = spec.max_new_tokens or "all"
    fam = spec.family or ("gpt2" if spec.arch == "decoder" else "t5")
    enc = f"e{spec.encoder_layers}" if spec.encoder_layers else ""
    return (f"{spec.method}-{fam}-L{spec.layers}{enc}-d{spec.d_model}-h{spec.heads}-v{spec.vocab or 'default'}-"
            f"msl{spec.msl}-p{spec.prefix_len}-{spec.weights}-{spec.provider}-k{k}-{spec.window}-"
            f"fw{spec.fixed_weights}-{spec.decoding or 'auto'}-r{spec.runs}-s{spec.seed}")


def parse_geometry(text: str) -> tuple[int, int, int]:
    """``"12/768/12"`` -> (layers, d_model, heads)."""
    try:
        layers, d, heads = (int(v) for v in text.split("/"))
    except ValueError:
        raise MpcgenError(f"geometry {text!r}: use LAYERS/D_MODEL/HEADS, e.g. 12/768/12") from None
    if min(layers, d, heads) < 1 or d % heads:
        raise MpcgenError(f"geometry {text!r}: positive numbers, d_model divisible by heads")
    return layers, d, heads


def shrink(geometry: tuple[int, int, int], layer_scale: float, width_scale: float) -> tuple[int, int, int]:
    """Scale layers (rounded up) and width (to a multiple of the unchanged head count, at least one per head)."""
    layers, d, heads = geometry
    new_d = max(heads, int(round(d * width_scale / heads)) * heads)
    return max(1, math.ceil(layers * layer_scale)), new_d, heads


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark.sweep", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="sweep", required=True)
    msl = sub.add_parser("msl", help="methods x sequence lengths at one geometry")
    msl.add_argument("--msl", type=int, nargs="+", default=[64, 128, 256, 512])
    msl.add_argument("--layers", type=int, default=12)
    msl.add_argument("--d-model", type=int, default=768)
    msl.add_argument("--heads", type=int, default=12)
    params = sub.add_parser("params", help="methods x model geometries at one msl")
    params.add_argument("--geometries", nargs="+", default=None, metavar="L/D/H",
                        help="default: GPT-2 small..xl (decoder) or MERGE's 6/512/8 .. 24/1024/16 (enc-dec)")
    params.add_argument("--layer-scale", type=float, default=1.0, help="multiply every geometry's layers")
    params.add_argument("--width-scale", type=float, default=1.0, help="multiply every geometry's width")
    params.add_argument("--msl", type=int, default=128)
    for p in (msl, params):
        p.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=METHODS)
        add_point_args(p, geometry=False)
        p.add_argument("--out", default=None, help="output folder (default benchmark/results/vary_<sweep>)")
        p.add_argument("--report-only", action="store_true", help="rebuild the report from the point files")
        p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
        p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def plan(args: argparse.Namespace) -> tuple[list[BenchSpec], str, Callable[[dict[str, Any]], Any]]:
    """The sweep's points, the x axis's name and how to read x from a record."""
    common = dict(method=args.methods[0], layers=1, d_model=1, heads=1, msl=1)
    base = argparse.Namespace(**{**vars(args), **common})
    specs = []
    if args.sweep == "msl":
        for n in args.msl:
            for m in args.methods:
                specs.append(spec_from_args(base, method=m, msl=n, layers=args.layers, d_model=args.d_model,
                                            heads=args.heads))
        return specs, "msl", lambda r: r["msl"]
    texts = args.geometries or GEOMETRIES[args.arch]
    for text in texts:
        layers, d, heads = shrink(parse_geometry(text), args.layer_scale, args.width_scale)
        for m in args.methods:
            specs.append(spec_from_args(base, method=m, msl=args.msl, layers=layers, d_model=d, heads=heads))
    return specs, "geometry", lambda r: f"{r['layers']}/{r['d_model']}/{r['heads']}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 if any point failed or for user errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = Path(args.out or f"benchmark/results/vary_{args.sweep}")
    failed = 0
    try:
        specs, x_name, x_of = plan(args)
        for spec in specs:
            spec.check()
        (out / "points").mkdir(parents=True, exist_ok=True)
        if not args.report_only:
            from tqdm.auto import tqdm

            for spec in tqdm(specs, desc=f"sweep {args.sweep}", unit="point"):
                path = out / "points" / f"{point_key(spec)}.json"
                if path.exists():
                    logger.info("skip %s (done)", path.name)
                    continue
                logger.info("point %s", path.name)
                try:
                    record = run_point(spec)
                except MpcgenError as err:
                    failed += 1
                    logger.error("point %s failed: %s", path.name, str(err).splitlines()[0])
                    continue
                write_json(path, record)
                build_report(out, x_name, x_of, plot=not args.no_plots)
        written = build_report(out, x_name, x_of, plot=not args.no_plots)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logger.info("report: %s", ", ".join(str(p) for p in written))
    if failed:
        logger.error("%d point(s) failed; rerun to retry them", failed)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
