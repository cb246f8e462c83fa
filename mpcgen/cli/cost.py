"""Cost of ONE encrypted forward pass of a random model of a given geometry (no checkpoint needed).

    python -m mpcgen.cli.cost --preset merge --arch decoder --layers 12 --d-model 768 --heads 12 \\
        --vocab 50257 --tokens 32 --weights private --provider ttp --json out.json

Runs the server, the client (and the dealer for ``ttp``) as local processes, prints seconds, rounds and bytes (total
and per op group, online vs dealer) and, as its last line, one JSON object (also written to ``--json``). The weights
are random: cost depends on geometry and preset only, not on the weights' values.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Sequence

import torch

from mpcgen.checkpoint import write_json
from mpcgen.cli import setup_logging
from mpcgen.errors import MpcgenError
from mpcgen.mpc.costs import NETWORKS, CostReport
from mpcgen.mpc.roles import CLIENT, DEFAULT_TIMEOUT_S, PROVIDERS, SERVER, WEIGHT_MODES


def build_config(args: argparse.Namespace) -> Any:
    """The ModelConfig for the requested geometry and preset."""
    from mpcgen.models.geometry import geometry_config

    tokens = max(args.tokens, args.decoder_tokens or 0)
    return geometry_config(preset=args.preset, arch=args.arch, family=args.family, layers=args.layers,
                           d_model=args.d_model, heads=args.heads, vocab=args.vocab,
                           positions=max(args.positions, tokens), encoder_layers=args.encoder_layers)


def cost_party(rank: int, config_dict: dict, tokens: int, decoder_tokens: int | None, weights: str,
               seed: int, fixed_weights: bool = True) -> Any:
    """One party: the server (and, with public weights, the client) builds the random model from ``seed``; the
    client draws random ids."""
    from mpcgen.models.geometry import random_model
    from mpcgen.mpc.runtime import forward_party

    model = None
    if rank == SERVER or weights == "public":
        model = random_model(config_dict, seed)
    ids = dec_ids = None
    if rank == CLIENT:
        gen = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(0, config_dict["vocab_size"], (1, tokens), generator=gen)
        if decoder_tokens:
            dec_ids = torch.randint(0, config_dict["vocab_size"], (1, decoder_tokens), generator=gen)
    start = time.perf_counter()
    out = forward_party(rank, model, ids, dec_ids, weights=weights, fixed_weights=fixed_weights)
    logging.getLogger(__name__).info("rank %d: forward pass %.1f s", rank, time.perf_counter() - start)
    out.logits = None  # the figures are what we want; keep the result small
    return out


def format_report(report: CostReport) -> str:
    """Human-readable table: totals and per op group, online vs dealer."""
    lines = [f"provider {report.provider}: wall {report.wall_s:.2f} s, {report.rounds} online rounds, "
             f"{report.online_bytes / 1e6:.3f} MB online, {report.dealer_rounds} dealer rounds, "
             f"{report.dealer_bytes / 1e6:.3f} MB dealer",
             "projected: " + ", ".join(f"{name} {report.projected(name):.2f} s" for name in NETWORKS),
             f"{'group':<12}{'seconds':>10}{'rounds':>9}{'online MB':>12}{'dealer rnds':>13}{'dealer MB':>11}"]
    for name, g in report.groups.items():
        lines.append(f"{name:<12}{g.seconds:>10.2f}{int(g.rounds):>9}{g.bytes / 1e6:>12.3f}"
                     f"{int(g.dealer_rounds):>13}{g.dealer_bytes / 1e6:>11.3f}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    from mpcgen.models.config import PRESETS
    from mpcgen.models.geometry import DEFAULT_FAMILY, FAMILY_FIELDS

    parser = argparse.ArgumentParser(prog="python -m mpcgen.cli.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vanilla", choices=sorted(PRESETS))
    parser.add_argument("--arch", default="decoder", choices=sorted(DEFAULT_FAMILY))
    parser.add_argument("--family", default=None, choices=sorted(FAMILY_FIELDS),
                        help="default: gpt2 (decoder) / t5 (encoder-decoder)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--encoder-layers", type=int, default=None, help="default: --layers")
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--positions", type=int, default=1024, help="n_positions (constant attention's size)")
    parser.add_argument("--tokens", type=int, default=32, help="input length (encoder input for encoder-decoders)")
    parser.add_argument("--decoder-tokens", type=int, default=None, help="encoder-decoders (default: --tokens)")
    parser.add_argument("--weights", default="private", choices=WEIGHT_MODES)
    parser.add_argument("--provider", default="ttp", choices=sorted(PROVIDERS))
    parser.add_argument("--fixed-weights", default="on", choices=("on", "off"),
                        help="private weights: open each weight's mask once (setup group) instead of a fresh "
                             "Beaver triple per product (mpcgen.mpc.fixed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S * 6)
    parser.add_argument("--json", default=None, help="also write the JSON record to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO)
    try:
        if args.tokens < 1 or (args.decoder_tokens is not None and args.decoder_tokens < 1):
            raise MpcgenError("--tokens and --decoder-tokens must be >= 1")
        from mpcgen.mpc.launch import run_parties

        config = build_config(args)
        dec_tokens = (args.decoder_tokens or args.tokens) if args.arch == "encoder-decoder" else None
        start = time.perf_counter()
        server, client = run_parties(cost_party, provider=args.provider, timeout=args.timeout,
                                     args=(config.to_dict(), args.tokens, dec_tokens, args.weights, args.seed,
                                           args.fixed_weights == "on"))
        elapsed = time.perf_counter() - start
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = client.report
    print(format_report(report))
    record = {
        "preset": args.preset, "arch": config.arch, "family": config.family, "layers": config.n_layer,
        "encoder_layers": config.n_encoder_layer, "d_model": config.n_embd, "heads": config.n_head,
        "vocab": config.vocab_size, "tokens": args.tokens, "decoder_tokens": dec_tokens, "weights": args.weights,
        "fixed_weights": args.weights == "private" and args.fixed_weights == "on", "provider": args.provider, "seconds": report.wall_s, "launch_seconds": elapsed,
        "rounds": report.rounds, "online_bytes": report.online_bytes, "dealer_rounds": report.dealer_rounds,
        "dealer_bytes": report.dealer_bytes, "projected_s": {name: report.projected(name) for name in NETWORKS},
        "groups": {g: c.to_dict() for g, c in report.groups.items()}, "parties": [p.to_dict() for p in report.parties],
    }
    if args.json:
        write_json(args.json, record)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
