"""One party of a benchmark run, as its own process: for network namespaces (:mod:`benchmark.netns`) or hosts.

Same command for every party, different ``--role``; the server listens at ``--rendezvous``::

    python -m benchmark.party --role dealer --rendezvous tcp://HOST:PORT --job job.json          # ttp only
    python -m benchmark.party --role server --rendezvous tcp://HOST:PORT --job job.json --out server.json
    python -m benchmark.party --role client --rendezvous tcp://HOST:PORT --job job.json --prompt prompt.json \\
        --out client.json

``job.json`` is what :func:`benchmark.harness.make_job` writes (model config, seed, weights, steps, decoding);
``prompt.json`` the client's ids (a JSON list). Each computing party writes its result (per-group marks; the
client also the generation stats) to ``--out``; :func:`benchmark.harness.run_phases` combines the two. gloo picks
the interface from ``GLOO_SOCKET_IFNAME`` when the host has several. Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from mpcgen.errors import MpcgenError

logger = logging.getLogger("benchmark.party")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark.party", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--role", required=True, choices=("server", "client", "dealer"))
    parser.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT where the server listens")
    parser.add_argument("--provider", default="ttp", choices=("ttp", "tfp"))
    parser.add_argument("--job", required=True, help="the job JSON (benchmark.harness.make_job)")
    parser.add_argument("--prompt", default=None, help="client: JSON list of prompt ids")
    parser.add_argument("--out", default=None, help="server / client: write the result JSON here")
    parser.add_argument("--timeout", type=float, default=6 * 3600.0, help="seconds to connect / per step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs / parties)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Join, run this role, leave; write the computing parties' results."""
    import torch

    from benchmark.harness import bench_party
    from mpcgen.checkpoint import write_json
    from mpcgen.mpc.launch import init_party, role_rank, serve_dealer, shutdown_party

    parties = 3 if args.provider == "ttp" else 2
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // parties))
    try:
        job = json.loads(Path(args.job).read_text())
        prompt = json.loads(Path(args.prompt).read_text()) if args.prompt else None
    except (OSError, json.JSONDecodeError) as err:
        raise MpcgenError(f"cannot read the job or prompt file: {err}") from None
    if args.role == "client" and prompt is None:
        raise MpcgenError("the client needs --prompt")
    if args.role != "client" and prompt is not None:
        raise MpcgenError("only the client holds the prompt: drop --prompt")
    if args.role != "dealer" and not args.out:
        raise MpcgenError(f"the {args.role} needs --out")
    rank = role_rank(args.role)
    init_party(args.role, rank, 2, args.rendezvous, args.provider, timeout=args.timeout)
    try:
        if args.role == "dealer":
            serve_dealer()
            return
        result = bench_party(rank, job, prompt)
    finally:
        shutdown_party()
    write_json(Path(args.out), result)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {args.role} %(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
