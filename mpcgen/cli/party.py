"""ONE party of a secure computation on this host: the entry point when server, client and dealer run on separate
hosts (or network namespaces). Same command on every host, different ``--role``; the server listens at
``--rendezvous`` (start it first, or within ``--timeout``). Across hosts every party gives its certificate, key and
the deployment's CA (``--tls-cert/--tls-key/--tls-ca``, made by ``python -m mpcgen.certs init``): the links are then
TLS 1.3 with mutual authentication, and a party whose certificate does not name its role is refused. Plaintext
links to other hosts need ``--insecure``.

Generation (what ``generate_private`` runs locally)::

    python -m mpcgen.cli.party generate --role dealer --rendezvous tcp://HOST:PORT                 # ttp only
    python -m mpcgen.cli.party generate --role server --rendezvous tcp://HOST:PORT --model DIR
    python -m mpcgen.cli.party generate --role client --rendezvous tcp://HOST:PORT --tokenizer TOKDIR \\
        --prompt "name[The Eagle]" [--decoding client --temperature 0.7 --seed 1] [--out result.json]

One encrypted forward pass::

    python -m mpcgen.cli.party forward --role server --rendezvous tcp://HOST:PORT --model DIR
    python -m mpcgen.cli.party forward --role client --rendezvous tcp://HOST:PORT --ids 464,3290,318

The client chooses ``--max-new-tokens`` and ``--decoding`` and announces them; with private weights it needs only
the (public) tokenizer folder, with ``--weights public`` the same ``--model`` as the server. Benchmarks run the
server on a random model (``--random-config CONFIG.json --seed N``) and the client on ready ids
(``--prompt-ids IDS.json``). ``--out`` writes the party's result as JSON (the client: texts, tokens and every
phase's costs; the server: its own counters). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mpcgen.cli import add_session_args, chooser_from_args, one_line, read_prompts, setup_logging, summary_line
from mpcgen.errors import MpcgenError

logger = logging.getLogger("mpcgen.cli.party")


def build_parser() -> argparse.ArgumentParser:
    from mpcgen.mpc.roles import DEFAULT_LINK_TIMEOUT_S, ROLES

    parser = argparse.ArgumentParser(prog="python -m mpcgen.cli.party", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    jobs = parser.add_subparsers(dest="job", required=True, metavar="{generate,forward}")
    for name, help_ in (("generate", "private generation"), ("forward", "one encrypted forward pass")):
        p = jobs.add_parser(name, help=help_, description=help_)
        p.add_argument("--role", required=True, choices=ROLES)
        p.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT (the server listens) or file:///path")
        p.add_argument("--model", default=None, help="model folder (server; every party with --weights public)")
        p.add_argument("--preset", default="vanilla", help="preset a teacher folder is imported into")
        p.add_argument("--timeout", type=float, default=DEFAULT_LINK_TIMEOUT_S,
                       help="seconds a silent peer is waited for before the party gives up, and to connect (default "
                            f"{DEFAULT_LINK_TIMEOUT_S:g})")
        p.add_argument("--connect-timeout", type=float, default=None,
                       help="seconds for every party to join (default --timeout)")
        tls = p.add_argument_group("party links (TLS 1.3, a certificate per party: python -m mpcgen.certs)")
        tls.add_argument("--tls-cert", default=None, help="this party's certificate (PEM; common name = its role)")
        tls.add_argument("--tls-key", default=None, help="this party's private key (PEM)")
        tls.add_argument("--tls-ca", default=None, help="the deployment's CA certificate every peer's must chain to")
        tls.add_argument("--insecure", action="store_true",
                         help="allow plaintext links to other hosts (shares and seeds readable on the network)")
        tls.add_argument("--listen", default=None,
                         help="HOST[:PORT] where this party accepts the parties that dial it (the client, for the "
                              "dealer; default the address it reaches the server from, a free port)")
        p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
        p.add_argument("--out", default=None, help="write this party's result as JSON here")
        add_session_args(p, decoding=name == "generate")
        if name == "generate":
            p.add_argument("--random-config", default=None,
                           help="server (every party with public weights): a random model of this ModelConfig JSON")
            p.add_argument("--seed-weights", type=int, default=0, help="seed of --random-config's weights")
            p.add_argument("--tokenizer", default=None, help="client: the model's tokenizer folder")
            p.add_argument("--prompt", action="append", default=[], help="client: a source text (repeatable)")
            p.add_argument("--input-file", default=None, help="client: one prompt per line")
            p.add_argument("--prompt-ids", default=None, help="client: a JSON file with a list of token id lists")
            p.add_argument("--max-new-tokens", type=int, default=32, help="client: tokens per prompt (default 32)")
            p.add_argument("--batch-size", type=int, default=8, help="client: most prompts (of one length) a batch")
            p.add_argument("--no-progress", action="store_true", help="no progress bar")
        else:
            p.add_argument("--ids", default=None, help="client: comma-separated token ids")
            p.add_argument("--decoder-ids", default=None, help="client, encoder-decoders: decoder token ids")
            p.add_argument("--no-prepare", action="store_true", help="do not merge / freeze the model first")
            p.add_argument("--logits-out", default=None, help="client: torch.save the logits to this file")
    return parser


def parse_ids(text: str | None) -> Any:
    """``"1,2,3"`` -> tensor([[1, 2, 3]]) (one sequence)."""
    import torch

    if text is None:
        return None
    try:
        ids = [int(tok) for tok in text.replace(" ", "").split(",") if tok]
    except ValueError:
        raise MpcgenError(f"--ids / --decoder-ids must be comma-separated integers, got {text!r}") from None
    if not ids:
        raise MpcgenError("--ids / --decoder-ids is empty")
    return torch.tensor([ids], dtype=torch.long)


def _server_model(args: argparse.Namespace) -> Any:
    """The model this party holds: a folder, a random model of a config, or None (private-weights client)."""
    from mpcgen.models.loading import load_model

    holds = args.role == "server" or (args.role == "client" and args.weights == "public")
    random_config = getattr(args, "random_config", None)
    if not holds:
        if args.model or random_config:
            raise MpcgenError("with private weights only the server passes --model / --random-config")
        return None
    if random_config:
        from mpcgen.models.geometry import random_model

        try:
            config = json.loads(Path(random_config).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MpcgenError(f"--random-config {random_config}: {err}") from None
        return random_model(config, args.seed_weights)
    if not args.model:
        raise MpcgenError(f"the {args.role} needs --model DIR" + (" (the same as the server's, with --weights "
                                                                   "public)" if args.role == "client" else ""))
    return load_model(args.model, preset=args.preset)


def _client_prompts(args: argparse.Namespace, model: Any) -> tuple[list[Any], list[list[int]], Any, list[dict]]:
    """The client's prompts (texts or ids), their ids, the tokenizer (None for ready ids), and the slot values a
    delexicalising tokenizer keeps on the client (:mod:`mpcgen.data.delex`)."""
    from mpcgen.data import delex
    from mpcgen.generation.inputs import encode_client_text
    from mpcgen.models.loading import load_tokenizer

    if args.prompt_ids:
        try:
            ids = json.loads(Path(args.prompt_ids).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise MpcgenError(f"--prompt-ids {args.prompt_ids}: {err}") from None
        if not isinstance(ids, list) or not all(isinstance(p, list) for p in ids):
            raise MpcgenError("--prompt-ids must hold a JSON list of token id lists")
        return ids, ids, None, [{} for _ in ids]
    prompts = read_prompts(args.prompt, args.input_file)
    source = args.tokenizer or args.model
    if not source:
        raise MpcgenError("the client needs --tokenizer DIR (the model's public tokenizer folder)")
    tokenizer = load_tokenizer(source)
    inputs, values = delex.prepare(tokenizer, prompts)
    # Text -> ids here, checked against the server's config inside the session (the client knows it then).
    return prompts, [encode_client_text(tokenizer, p, model) for p in inputs], tokenizer, values


def run_generate(args: argparse.Namespace, rank: int) -> dict[str, Any] | None:
    from mpcgen.generation.private import generation_party, results_for
    from mpcgen.mpc.roles import CLIENT

    if args.role != "client" and (args.prompt or args.input_file or args.prompt_ids):
        raise MpcgenError("only the client holds prompts: drop --prompt / --input-file / --prompt-ids")
    model = _server_model(args)
    prompts = ids = tokenizer = chooser = values = None
    if args.role == "client":
        prompts, ids, tokenizer, values = _client_prompts(args, model)
        chooser = chooser_from_args(args)
    out = _joined(args, rank, lambda: generation_party(
        rank, model, ids, chooser, max_new_tokens=args.max_new_tokens, decoding=args.decoding, weights=args.weights,
        fixed_weights=args.fixed_weights == "on", batch_size=args.batch_size,
        progress=rank == CLIENT and not args.no_progress))
    if out is None:
        return None
    if rank != CLIENT:
        return {"role": args.role, "costs": [c.to_dict() for c in out.costs]}
    # Ready ids (benchmarks) come without a tokenizer: their tokens are kept whole.
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    results = results_for(prompts, ids, out.tokens, out.stats, tokenizer, eos, values)
    for result in results:
        print(result.text)
        print(f"  {summary_line(result)}")
    return {"role": "client", "results": [r.to_dict() for r in results]}


def run_forward(args: argparse.Namespace, rank: int) -> dict[str, Any] | None:
    import torch

    from mpcgen.mpc.roles import CLIENT
    from mpcgen.mpc.runtime import forward_party

    if args.role == "client" and args.ids is None:
        raise MpcgenError("the client must pass --ids")
    if args.role != "client" and (args.ids or args.decoder_ids):
        raise MpcgenError("only the client holds token ids: drop --ids / --decoder-ids")
    model = _server_model(args)
    ids, dec_ids = parse_ids(args.ids), parse_ids(args.decoder_ids)
    out = _joined(args, rank, lambda: forward_party(rank, model, ids, dec_ids, weights=args.weights,
                                                    prepare=not args.no_prepare,
                                                    fixed_weights=args.fixed_weights == "on"))
    if out is None or rank != CLIENT:
        return None if out is None else {"role": args.role, "cost": out.cost.to_dict()}
    if args.logits_out:
        torch.save(out.logits, args.logits_out)
    report = out.report
    logger.info("argmax per position: %s", out.logits.argmax(-1).tolist())
    logger.info("wall %.2f s, %d online rounds, %.3f MB online, %.3f MB dealer", report.wall_s, report.rounds,
                report.online_bytes / 1e6, report.dealer_bytes / 1e6)
    return {"role": "client", "provider": args.provider, "weights": args.weights,
            "logits_shape": list(out.logits.shape), "argmax": out.logits.argmax(-1).tolist(), "cost": report.to_dict()}


def tls_from_args(args: argparse.Namespace) -> Any:
    """``--tls-cert/--tls-key/--tls-ca`` as :class:`~mpcgen.mpc.links.TlsFiles` (all three or none)."""
    from mpcgen.mpc.links import TlsFiles

    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise MpcgenError("give all of --tls-cert, --tls-key and --tls-ca (or none, with --insecure)")
    if args.insecure:
        raise MpcgenError("--insecure contradicts --tls-*: drop one")
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


def _joined(args: argparse.Namespace, rank: int, body: Any) -> Any:
    """Join the computation, run ``body`` (or serve as the dealer), leave; ``body``'s result (None: dealer)."""
    import torch

    from mpcgen.mpc.launch import init_party, serve_dealer, shutdown_party

    if args.role == "dealer" and args.provider != "ttp":
        raise MpcgenError("a dealer is only used with --provider ttp")
    if args.threads:
        torch.set_num_threads(args.threads)
    init_party(args.role, rank, 2, args.rendezvous, args.provider, timeout=args.timeout,
               connect_timeout=args.connect_timeout, tls=tls_from_args(args), listen=args.listen,
               insecure=args.insecure)
    try:
        if args.role == "dealer":
            serve_dealer()
            return None
        return body()
    finally:
        shutdown_party()


def main(argv: Sequence[str] | None = None) -> int:
    from mpcgen.mpc.roles import role_rank

    args = build_parser().parse_args(argv)
    setup_logging(logging.INFO if args.job == "forward" else logging.WARNING, tag=args.role)
    try:
        rank = role_rank(args.role)
        result = run_generate(args, rank) if args.job == "generate" else run_forward(args, rank)
    except MpcgenError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    if result is not None:
        if args.out:
            from mpcgen.checkpoint import write_json

            write_json(Path(args.out), result)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
