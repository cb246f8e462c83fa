"""Private text generation from the command line, every party a local process (loopback).

    python -m mpcgen.generate --model DIR --prompt "name[The Eagle], food[French]" [--input-file F] \\
        [--max-new-tokens 32] [--decoding client|tokens|er] [--temperature T --top-p P --seed S] \\
        [--provider ttp|tfp] [--weights private|public] [--json]
    python -m mpcgen.generate --model DIR --prompt "..." --plaintext      # the same model and decoding, no MPC

One party per host (server, client and dealer on separate machines): ``python -m mpcgen.cli.party generate``.
``--model`` takes a saved student or a stage-1 Hugging Face teacher (imported into ``--preset``, default vanilla).
``--input-file`` holds one prompt per line. Progress goes to stderr; stdout gets each text and a cost summary, and
with ``--json`` a last line holding one JSON object (``results``: per prompt ``text``, ``tokens``, ``stats`` with
``rounds`` and ``bytes`` totals, ``per_token`` and every phase). User errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from mpcgen.cli import add_session_args, chooser_from_args, one_line, read_prompts, setup_logging, summary_line
from mpcgen.errors import MpcgenError

logger = logging.getLogger("mpcgen.generate")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (``--help`` lists every option)."""
    parser = argparse.ArgumentParser(prog="python -m mpcgen.generate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="student folder or stage-1 Hugging Face teacher folder")
    parser.add_argument("--prompt", action="append", default=[], help="a source text (repeatable)")
    parser.add_argument("--input-file", help="a file with one prompt per line")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt (default 32)")
    add_session_args(parser)
    parser.add_argument("--plaintext", action="store_true", help="run the same model and decoding without MPC")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    parser.add_argument("--preset", default="vanilla", help="preset a teacher folder is imported into")
    parser.add_argument("--batch-size", type=int, default=8, help="most prompts (of equal length) per batch")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole run")
    parser.add_argument("--rendezvous", help="tcp://127.0.0.1:PORT to meet on (default: a temporary file)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> list[Any]:
    """All parties here (or the plaintext reference): the :class:`PrivateGeneration` of every prompt."""
    from mpcgen.models.config import PRESETS

    if args.preset not in PRESETS:
        raise MpcgenError(f"unknown preset {args.preset!r}: use one of {sorted(PRESETS)}")
    prompts = read_prompts(args.prompt, args.input_file)
    common = dict(max_new_tokens=args.max_new_tokens, decoding=args.decoding, tokenizer=args.tokenizer,
                  preset=args.preset, batch_size=args.batch_size, progress=not args.no_progress,
                  chooser=chooser_from_args(args))
    if args.plaintext:
        from mpcgen.generation.private import generate_plain

        return generate_plain(args.model, prompts, **common)
    from mpcgen.generation.private import generate_private

    return generate_private(args.model, prompts, provider=args.provider, weights=args.weights,
                            fixed_weights=args.fixed_weights == "on", timeout=args.timeout, rendezvous=args.rendezvous,
                            **common)


def print_results(results: Sequence[Any], *, as_json: bool, mode: str) -> None:
    """Each text and its cost line; with ``as_json`` one JSON object as the last line."""
    for result in results:
        print(result.text)
        print(f"  {summary_line(result)}")
    if as_json:
        print(json.dumps({"mode": mode, "results": [r.to_dict() for r in results]}))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (2 for user errors)."""
    args = build_parser().parse_args(argv)
    setup_logging()
    try:
        results = run(args)
    except MpcgenError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    print_results(results, as_json=args.json, mode="plaintext" if args.plaintext else "mpc")
    return 0


if __name__ == "__main__":
    sys.exit(main())
