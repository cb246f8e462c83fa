"""Command-line entry points of the library and the helpers they share.

* ``python -m mpcgen.generate``: private (or ``--plaintext``) generation, every party a local process.
* ``python -m mpcgen.cli.party``: ONE party on this host (``--role server|client|dealer``), for forward passes,
  generation and benchmark points, when the parties run on separate hosts.
* ``python -m mpcgen.cli.cost``: the cost of one encrypted forward pass of a random model of a given geometry.

Argument ``choices`` come from the registries (presets, providers, weight modes, decodings, roles), so a new entry
there is a new choice here. Nothing in the library imports this package.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mpcgen.errors import MpcgenError


def add_session_args(parser: argparse.ArgumentParser, *, decoding: bool = True) -> None:
    """``--provider``, ``--weights``, ``--fixed-weights`` (and ``--decoding`` with the client's sampling flags)."""
    from mpcgen.generation.loop import DECODINGS
    from mpcgen.mpc.roles import PROVIDERS, WEIGHT_MODES

    parser.add_argument("--provider", choices=sorted(PROVIDERS), default="ttp",
                        help="correlated randomness: ttp (a dealer process, default) or tfp (insecure, benchmarks)")
    parser.add_argument("--weights", choices=WEIGHT_MODES, default="private", help="weight mode (default private)")
    parser.add_argument("--fixed-weights", choices=("on", "off"), default="on",
                        help="private weights: open each weight's mask once per session (on, default) or use a "
                             "fresh Beaver triple per product (off); the server's choice is used")
    if decoding:
        parser.add_argument("--decoding", choices=DECODINGS, default=None,
                            help="client (client-side token choice), tokens (secure argmax) or er (Embedding "
                                 "Resending, by name only); default client for every model")
        parser.add_argument("--temperature", type=float, default=0.0,
                            help="client decoding: sampling temperature (0: greedy, the default)")
        parser.add_argument("--top-k", type=int, default=0, help="client decoding: sample from the k most likely")
        parser.add_argument("--top-p", type=float, default=1.0, help="client decoding: nucleus sampling mass")
        parser.add_argument("--seed", type=int, default=None,
                            help="client decoding: sampling seed (kept by the client; default: from the OS)")


def chooser_from_args(args: argparse.Namespace):
    """The client's :class:`~mpcgen.generation.TokenChooser` from the sampling flags (None: greedy default)."""
    from mpcgen.generation.sampling import TokenChooser

    if args.temperature == 0 and not args.top_k and args.top_p == 1.0 and args.seed is None:
        return None
    if args.decoding not in (None, "client"):
        raise MpcgenError("--temperature / --top-k / --top-p / --seed are for --decoding client")
    return TokenChooser(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)


def read_prompts(prompts: list[str], input_file: str | None) -> list[str]:
    """``--prompt`` values then ``--input-file`` lines (blank lines skipped)."""
    out = list(prompts)
    if input_file:
        path = Path(input_file)
        if not path.is_file():
            raise MpcgenError(f"--input-file {path} does not exist")
        try:
            out += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            raise MpcgenError(f"--input-file {path} is not UTF-8 text") from None
    if not out:
        raise MpcgenError("no prompt: pass --prompt TEXT or --input-file FILE")
    return out


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


def setup_logging(level: int = logging.WARNING, tag: str = "") -> None:
    """Log lines on stderr with a time stamp (and ``tag``, e.g. the role, before the level)."""
    fmt = "%(asctime)s " + (f"{tag} " if tag else "") + "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level, format=fmt)


def summary_line(result) -> str:
    """One line of costs for a human: per generated token and in total."""
    s = result.stats
    per = s.per_token()
    if s.mode == "plaintext":
        return (f"[plaintext {s.decoding}] {s.new_tokens} tokens, {per['seconds']:.3f} s/token, "
                f"{s.total.seconds:.2f} s")
    t, setup = s.total, s.setup
    line = (f"[mpc {s.decoding} {s.provider} {s.weights}] {s.new_tokens} tokens (batch {s.batch_size}): "
            f"{per['seconds']:.2f} s, {per['rounds']:.0f} rounds, {per['bytes'] / 1e6:.2f} MB online, "
            f"{per['dealer_bytes'] / 1e6:.2f} MB dealer per token; total {t.seconds:.1f} s, {t.rounds:.0f} rounds, "
            f"{t.bytes / 1e6:.1f} MB online, {t.dealer_bytes / 1e6:.1f} MB dealer")
    if setup is not None:
        line += (f"; session setup {setup.wall_s:.1f} s, {setup.rounds} rounds, {setup.online_bytes / 1e6:.1f} MB"
                 + (" (fixed weights)" if s.fixed_weights else ""))
    return line


__all__ = ["add_session_args", "chooser_from_args", "one_line", "read_prompts", "setup_logging", "summary_line"]
