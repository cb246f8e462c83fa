"""Private text generation from the command line.

Locally (server, client and, for ``ttp``, the dealer as processes on loopback)::

    python -m mpcgen.generate --model DIR --prompt "name[The Eagle], food[French]" [--input-file F] \\
        [--max-new-tokens 32] [--decoding er|tokens] [--provider ttp|tfp] [--weights private|public] [--json]
    python -m mpcgen.generate --model DIR --prompt "..." --plaintext      # the same model and decoding, no MPC

One party per host (same command, different ``--role``; the server listens at ``--rendezvous``)::

    python -m mpcgen.generate --role dealer --rendezvous tcp://HOST:PORT                       # ttp only
    python -m mpcgen.generate --role server --rendezvous tcp://HOST:PORT --model DIR
    python -m mpcgen.generate --role client --rendezvous tcp://HOST:PORT --tokenizer TOKDIR --prompt "..."

The client chooses ``--max-new-tokens`` and ``--decoding`` and announces them; with private weights it needs only
the (public) tokenizer folder, with ``--weights public`` the same ``--model`` as the server. ``--model`` takes a
saved student or a stage-1 Hugging Face teacher (imported into ``--preset``, default vanilla). ``--input-file``
holds one prompt per line. Progress goes to stderr; stdout gets each text and a cost summary, and with ``--json`` a
last line holding one JSON object (``results``: per prompt ``text``, ``tokens``, ``stats`` with ``rounds`` and
``bytes`` totals). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from mpcgen.errors import MpcgenError

logger = logging.getLogger("mpcgen.generate")

ROLES = ("server", "client", "dealer")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option)."""
    parser = argparse.ArgumentParser(prog="python -m mpcgen.generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="student folder or stage-1 Hugging Face teacher folder")
    parser.add_argument("--prompt", action="append", default=[], help="a source text (repeatable)")
    parser.add_argument("--input-file", help="a file with one prompt per line")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    parser.add_argument("--decoding", choices=("er", "tokens"), default=None,
                        help="er (Embedding Resending) or tokens (vanilla); default er for ER-trained models")
    parser.add_argument("--provider", choices=("ttp", "tfp"), default="ttp", help="correlated randomness (ttp)")
    parser.add_argument("--weights", choices=("private", "public"), default="private", help="weight mode")
    parser.add_argument("--fixed-weights", choices=("on", "off"), default="on",
                        help="private weights: open each weight's mask once per session (on, default) or use a "
                             "fresh Beaver triple per product (off); the server's choice is used")
    parser.add_argument("--plaintext", action="store_true", help="run the same model and decoding without MPC")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    parser.add_argument("--preset", default="vanilla", help="preset a teacher folder is imported into")
    parser.add_argument("--batch-size", type=int, default=8, help="most prompts (of equal length) per batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the run / to connect")
    parser.add_argument("--role", choices=ROLES, help="run one party (separate hosts); needs --rendezvous")
    parser.add_argument("--rendezvous", help="tcp://HOST:PORT where the server listens")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def read_prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` values then ``--input-file`` lines (blank lines skipped)."""
    prompts = list(args.prompt)
    if args.input_file:
        path = Path(args.input_file)
        if not path.is_file():
            raise MpcgenError(f"--input-file {path} does not exist")
        try:
            prompts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise MpcgenError(f"--input-file {path} is not UTF-8 text") from None
    if not prompts:
        raise MpcgenError("no prompt: pass --prompt TEXT or --input-file FILE")
    return prompts


def run_local(args: argparse.Namespace) -> list[Any]:
    """All parties here (or the plaintext reference): the :class:`PrivateGeneration` of every prompt."""
    from mpcgen.generation import generate_plain, generate_private

    if not args.model:
        raise MpcgenError("pass --model DIR (a student or stage-1 teacher folder)")
    prompts = read_prompts(args)
    common = dict(max_new_tokens=args.max_new_tokens, decoding=args.decoding, tokenizer=args.tokenizer,
                  preset=args.preset, batch_size=args.batch_size, progress=not args.no_progress)
    if args.plaintext:
        return generate_plain(args.model, prompts, **common)
    return generate_private(args.model, prompts, provider=args.provider, weights=args.weights,
                            fixed_weights=args.fixed_weights == "on", timeout=args.timeout, rendezvous=args.rendezvous, **common)


def run_role(args: argparse.Namespace) -> list[Any] | None:
    """One party of a session spread over hosts; the client's results (None for the server and the dealer)."""
    from mpcgen.generation.inputs import encode_prompts, load_model, load_tokenizer
    from mpcgen.generation.private import generation_party, results_for
    from mpcgen.mpc.launch import init_party, role_rank, serve_dealer, shutdown_party

    if not args.rendezvous:
        raise MpcgenError("--role needs --rendezvous tcp://HOST:PORT (where the server listens)")
    if args.plaintext:
        raise MpcgenError("--plaintext runs locally: drop --role")
    if args.role == "dealer" and args.provider != "ttp":
        raise MpcgenError("a dealer is only used with --provider ttp")
    if args.role != "client" and (args.prompt or args.input_file):
        raise MpcgenError("only the client holds prompts: drop --prompt / --input-file")
    model = tokenizer = ids = prompts = None
    if args.role == "server" or (args.role == "client" and args.weights == "public"):
        if not args.model:
            raise MpcgenError(f"the {args.role} needs --model DIR" + (" (the same as the server's, with --weights "
                                                                       "public)" if args.role == "client" else ""))
        model = load_model(args.model, preset=args.preset)
    if args.role == "client":
        prompts = read_prompts(args)
        source = args.tokenizer or args.model
        if not source:
            raise MpcgenError("the client needs --tokenizer DIR (the model's public tokenizer folder)")
        tokenizer = load_tokenizer(source)
        # Text -> ids here, checked against the server's config inside the session (the client knows it then).
        ids = [_encode_text(tokenizer, p, model) for p in prompts]
    rank = role_rank(args.role)
    init_party(args.role, rank, 2, args.rendezvous, args.provider, timeout=args.timeout)
    try:
        if args.role == "dealer":
            serve_dealer()
            return None
        out = generation_party(rank, model, ids, max_new_tokens=args.max_new_tokens, decoding=args.decoding,
                               weights=args.weights, fixed_weights=args.fixed_weights == "on",
                               batch_size=args.batch_size,
                               progress=args.role == "client" and not args.no_progress)
    finally:
        shutdown_party()
    if args.role != "client":
        return None
    eos = tokenizer.eos_token_id
    return results_for(prompts, ids, out.tokens, out.stats, out.reports, tokenizer, eos)


def _encode_text(tokenizer: Any, text: str, model: Any) -> list[int]:
    from mpcgen.generation.inputs import check_encodable
    from mpcgen.tokenization import encode_prompt

    if not text.strip():
        raise MpcgenError("a prompt is empty: give a non-empty source text")
    # The layout depends on the architecture, which a private-weights client learns only from the server: T5/BART
    # tokenizers have no separator token, GPT-2 ones (prepared by mpcgen) do.
    is_encoder_decoder = (model.config.arch == "encoder-decoder") if model is not None else \
        getattr(tokenizer, "sep_token_id", None) is None
    ids = encode_prompt(tokenizer, text, is_encoder_decoder=is_encoder_decoder)
    check_encodable(tokenizer, text, ids, 0)
    return ids


def summary_line(result: Any) -> str:
    """One line of costs for a human: per generated token and in total."""
    s = result.stats
    per = s.per_token()
    if s.mode == "plaintext":
        return f"[plaintext {s.decoding}] {s.new_tokens} tokens, {per['seconds']:.3f} s/token, {s.wall_s:.2f} s"
    return (f"[mpc {s.decoding} {s.provider} {s.weights}] {s.new_tokens} tokens (batch {s.batch_size}): "
            f"{per['seconds']:.2f} s, {per['rounds']:.0f} rounds, {per['bytes'] / 1e6:.2f} MB online, "
            f"{per['dealer_bytes'] / 1e6:.2f} MB dealer per token; total {s.wall_s:.1f} s, {s.rounds} rounds, "
            f"{s.bytes / 1e6:.1f} MB online, {s.dealer_bytes / 1e6:.1f} MB dealer; session setup {s.setup_s:.1f} s, "
            f"{s.setup_rounds} rounds, {s.setup_bytes / 1e6:.1f} MB" + (" (fixed weights)" if s.fixed_weights else ""))


def one_line(message: str) -> str:
    """A launcher failure report (a line per party, with tracebacks) condensed to one line: each party's outcome,
    and for a party that raised, its exception line."""
    lines = message.splitlines()
    if len(lines) <= 1:
        return message
    parts = [lines[0].rstrip(":")]
    for i, line in enumerate(lines):
        if not line.startswith("- rank "):
            continue
        if line.endswith("raised:"):
            body = []
            for follow in lines[i + 1:]:
                if follow.startswith("- rank "):
                    break
                body.append(follow)
            last = next((b.strip() for b in reversed(body) if b.strip()), "")
            line = f"{line} {last}"
        parts.append(line[2:])
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        results = run_role(args) if args.role else run_local(args)
    except MpcgenError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    if results is None:
        return 0
    for result in results:
        print(result.text)
        print(f"  {summary_line(result)}")
    if args.json:
        mode = "plaintext" if args.plaintext else "mpc"
        print(json.dumps({"mode": mode, "results": [{
            "prompt": r.prompt, "text": r.text, "tokens": r.tokens, "all_tokens": r.all_tokens,
            "stats": r.stats.to_dict()} for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
