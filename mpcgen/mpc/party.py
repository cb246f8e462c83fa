"""One party of an encrypted forward pass, for running the parties on separate hosts.

Same command on every host, different ``--role``::

    python -m mpcgen.mpc.party --role dealer --rendezvous tcp://HOST:PORT --provider ttp
    python -m mpcgen.mpc.party --role server --rendezvous tcp://HOST:PORT --provider ttp --model STUDENT_DIR
    python -m mpcgen.mpc.party --role client --rendezvous tcp://HOST:PORT --provider ttp --ids 464,3290,318

``HOST:PORT`` is where the server (rank 0) listens; start it first or within ``--timeout``. With private weights
the client needs no model: the server announces the architecture. With ``--weights public`` every computing party
passes the same ``--model``. The client prints the cost report and the argmax token of each position (its last
stdout line is one JSON object) and can save the logits with ``--logits-out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Sequence

import torch

from mpcgen.checkpoint import write_json
from mpcgen.errors import MpcgenError
from mpcgen.mpc.encrypt import WEIGHT_MODES
from mpcgen.mpc.launch import CLIENT, DEFAULT_TIMEOUT_S, PROVIDERS, ROLES, init_party, role_rank, serve_dealer, \
    shutdown_party

logger = logging.getLogger("mpcgen.mpc.party")


def parse_ids(text: str | None) -> torch.Tensor | None:
    """``"1,2,3"`` -> tensor([[1, 2, 3]]) (one sequence)."""
    if text is None:
        return None
    try:
        ids = [int(tok) for tok in text.replace(" ", "").split(",") if tok]
    except ValueError:
        raise MpcgenError(f"--ids / --decoder-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise MpcgenError("--ids / --decoder-ids is empty")
    return torch.tensor([ids], dtype=torch.long)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mpcgen.mpc.party", description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", required=True, choices=ROLES)
    parser.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT (the server listens) or file:///path")
    parser.add_argument("--provider", default="ttp", choices=sorted(PROVIDERS))
    parser.add_argument("--world-size", type=int, default=2, help="computing parties (the dealer not counted)")
    parser.add_argument("--rank", type=int, default=None, help="optional; must match the role")
    parser.add_argument("--model", default=None, help="student folder (server; every party with public weights)")
    parser.add_argument("--weights", default="private", choices=WEIGHT_MODES)
    parser.add_argument("--ids", default=None, help="client: comma-separated token ids")
    parser.add_argument("--decoder-ids", default=None, help="client, encoder-decoders: decoder token ids")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds to connect / per step")
    parser.add_argument("--no-prepare", action="store_true", help="do not merge / freeze the model first")
    parser.add_argument("--json", default=None, help="client: also write the JSON result to this file")
    parser.add_argument("--logits-out", default=None, help="client: torch.save the logits to this file")
    return parser


def run(args: argparse.Namespace) -> dict | None:
    """Join, run this role's part, leave; the client's JSON-able result (None for the other roles)."""
    from mpcgen.mpc.runtime import forward_party

    rank = role_rank(args.role, args.world_size)
    if args.rank is not None and args.rank != rank:
        raise MpcgenError(f"--role {args.role} runs as rank {rank}, not --rank {args.rank}")
    if args.role == "client" and args.ids is None:
        raise MpcgenError("the client must pass --ids")
    if args.role != "client" and (args.ids or args.decoder_ids):
        raise MpcgenError("only the client holds token ids: drop --ids / --decoder-ids")
    if args.role == "server" and args.model is None:
        raise MpcgenError("the server must pass --model (a student folder)")
    if args.role == "client" and args.weights == "public" and args.model is None:
        raise MpcgenError("with --weights public the client must pass the same --model")
    ids, dec_ids = parse_ids(args.ids), parse_ids(args.decoder_ids)

    init_party(args.role, rank, args.world_size, args.rendezvous, args.provider, timeout=args.timeout)
    try:
        if args.role == "dealer":
            serve_dealer()
            return None
        model = args.model if (args.role == "server" or args.weights == "public") else None
        out = forward_party(rank, model, ids, dec_ids, weights=args.weights, prepare=not args.no_prepare)
    finally:
        shutdown_party()
    if rank != CLIENT:
        return None
    if args.logits_out:
        torch.save(out.logits, args.logits_out)
    return {"role": "client", "provider": args.provider, "weights": args.weights,
            "logits_shape": list(out.logits.shape), "argmax": out.logits.argmax(-1).tolist(),
            "cost": out.report.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.role} %(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result is not None:
        cost = result["cost"]
        logger.info("argmax per position: %s", result["argmax"])
        logger.info("wall %.2f s, %d online rounds, %.3f MB online, %.3f MB dealer", cost["wall_s"], cost["rounds"],
                    cost["online_bytes"] / 1e6, cost["dealer_bytes"] / 1e6)
        if args.json:
            write_json(args.json, result)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
