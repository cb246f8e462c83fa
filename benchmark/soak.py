"""Long sessions: one session serving many prompts, watched from outside for memory and descriptor growth.

    python -m benchmark.soak --geometry e2e-small --preset merge --prompts 200 --max-new-tokens 8 --tls \\
        --sessions 2 --json benchmark/results/soak.json

Starts ``--sessions`` independent sessions at once on this host (each its own server, client and dealer processes,
``python -m mpcgen.cli.party generate``, on its own loopback port), the client of each sending ``--prompts``
prompts (lengths cycling through ``--lengths``, one prompt a batch), and samples every party's resident memory
(RSS) and open file descriptors every ``--interval`` seconds. Warm-up is the first ``--warmup`` fraction of each
client's generation phase (from the session's first token to its end, as the client's progress bar reports
it); the record gives, per party, the RSS and descriptors at the end of warm-up, their largest value after it
and their growth, and checks the tokens of every prompt against the plaintext model. The last stdout line is the
record as JSON (also written to ``--json``); the exit status is 1 when a session failed, a token differs, an RSS
grew more than ``--max-rss-growth`` after warm-up or a descriptor count grew.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import psutil

from mpcgen.certs import tls_flags
from mpcgen.errors import MpcgenError

logger = logging.getLogger("benchmark.soak")
REPO_ROOT = Path(__file__).resolve().parents[1]
ROLES = ("server", "client", "dealer")
# tqdm's bar on the client's stderr: "... 42/1600 [...]" (the bar is the only per-step signal a party gives out)
_PROGRESS = re.compile(rb"(\d+)/(\d+) \[")


@dataclass
class Party:
    role: str
    proc: subprocess.Popen
    log: Path
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (t, rss bytes, fds)

    def sample(self, t: float) -> None:
        try:
            ps = psutil.Process(self.proc.pid)
            self.samples.append((t, float(ps.memory_info().rss), ps.num_fds()))
        except psutil.Error:  # it just ended
            pass


@dataclass
class Session:
    index: int
    port: int
    folder: Path
    parties: dict[str, Party] = field(default_factory=dict)
    progress: list[tuple[float, int, int]] = field(default_factory=list)  # (t, steps done, steps in all)

    def read_progress(self, t: float) -> None:
        text = (self.parties["client"].log).read_bytes()[-4096:]
        found = _PROGRESS.findall(text)
        if found:
            done, total = map(int, found[-1])
            if not self.progress or self.progress[-1][1] != done:
                self.progress.append((t, done, total))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _prompts(n: int, lengths: Sequence[int], vocab: int) -> list[list[int]]:
    import random

    rng = random.Random(0)
    return [[rng.randrange(4, vocab) for _ in range(lengths[i % len(lengths)])] for i in range(n)]


def _start(session: Session, args: argparse.Namespace, config_file: Path, prompts_file: Path,
           certs: Path | None) -> None:
    rendezvous = f"tcp://127.0.0.1:{session.port}"
    for role in ROLES:
        cmd = [sys.executable, "-m", "mpcgen.cli.party", "generate", "--role", role, "--rendezvous", rendezvous,
               "--provider", "ttp", "--weights", "private", "--threads", "1", "--timeout", str(args.link_timeout)]
        if certs is not None:
            cmd += tls_flags(certs, role)
        if role == "server":
            cmd += ["--random-config", str(config_file), "--seed-weights", str(args.seed)]
        if role == "client":
            cmd += ["--prompt-ids", str(prompts_file), "--max-new-tokens", str(args.max_new_tokens),
                    "--batch-size", "1", "--decoding", args.decoding, "--out", str(session.folder / "client.json")]
        log = session.folder / f"{role}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)),
                                    stdout=fh, stderr=subprocess.STDOUT)
        session.parties[role] = Party(role, proc, log)


def _summary(party: Party, warm_end: float, end: float) -> dict[str, Any]:
    """RSS and descriptors at the end of warm-up, at most after it and at the end of generation."""
    inside = [s for s in party.samples if s[0] <= end]
    before = [s for s in inside if s[0] <= warm_end]
    after = [s for s in inside if s[0] > warm_end]
    if not before or not after:
        raise MpcgenError(f"{party.role}: too few samples around warm-up (lower --interval or raise --prompts)")
    warm_rss, warm_fds = before[-1][1], before[-1][2]
    max_rss, max_fds = max(s[1] for s in after), max(s[2] for s in after)
    return {"samples": len(party.samples), "rss_warm_mb": warm_rss / 1e6, "rss_max_after_mb": max_rss / 1e6,
            "rss_end_mb": inside[-1][1] / 1e6, "rss_growth": max_rss / warm_rss - 1.0,
            "rss_peak_mb": max(s[1] for s in party.samples) / 1e6, "fds_warm": warm_fds, "fds_max_after": max_fds,
            "fds_end": inside[-1][2], "fd_growth": max_fds - warm_fds,
            "series": [(round(t, 2), round(r / 1e6, 1), f) for t, r, f in party.samples]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from mpcgen.checkpoint import write_json
    from mpcgen.generation import generate_plain
    from mpcgen.models.geometry import geometry_config, named_geometry, random_model

    geometry = named_geometry(args.geometry)
    geometry["positions"] = max(geometry["positions"], max(args.lengths) + args.max_new_tokens)
    config = geometry_config(preset=args.preset, **geometry)
    prompts = _prompts(args.prompts, args.lengths, config.vocab_size)
    tmp = Path(tempfile.mkdtemp(prefix="mpcgen-soak-"))
    certs = None
    if args.tls:
        from benchmark.harness import bench_certs

        certs = bench_certs()
    sessions: list[Session] = []
    try:
        write_json(tmp / "config.json", config.to_dict())
        write_json(tmp / "prompts.json", prompts)
        for i in range(args.sessions):
            folder = tmp / f"session{i}"
            folder.mkdir()
            sessions.append(Session(i, _free_port(), folder))
            _start(sessions[-1], args, tmp / "config.json", tmp / "prompts.json", certs)
        t0 = time.monotonic()
        deadline = t0 + args.timeout
        while any(p.proc.poll() is None for s in sessions for p in s.parties.values()):
            t = time.monotonic() - t0
            for s in sessions:
                s.read_progress(t)
                for p in s.parties.values():
                    p.sample(t)
            if time.monotonic() > deadline:
                raise MpcgenError(f"the soak run passed its --timeout of {args.timeout:.0f} s")
            time.sleep(args.interval)
        logger.info("all sessions ended after %.1f s; checking tokens against the plaintext model",
                    time.monotonic() - t0)
        reference = [g.all_tokens for g in generate_plain(random_model(config, args.seed), prompts,
                                                           max_new_tokens=args.max_new_tokens,
                                                           decoding=args.decoding)]
        out: dict[str, Any] = {"geometry": args.geometry, "preset": args.preset, "prompts": args.prompts,
                               "max_new_tokens": args.max_new_tokens, "lengths": list(args.lengths),
                               "decoding": args.decoding, "tls": args.tls, "sessions": [], "warmup": args.warmup,
                               "max_rss_growth": args.max_rss_growth}
        for s in sessions:
            record: dict[str, Any] = {"port": s.port, "exit": {r: p.proc.returncode for r, p in s.parties.items()}}
            failed = {r: p.log.read_text(errors="replace")[-1500:] for r, p in s.parties.items()
                      if p.proc.returncode != 0}
            if failed or not s.progress:
                record["failed"] = failed or "the client never reported progress"
                out["sessions"].append(record)
                continue
            results = json.loads((s.folder / "client.json").read_text())["results"]
            record["tokens_match"] = [r["all_tokens"] for r in results] == reference
            start, end = s.progress[0][0], s.progress[-1][0]
            warm_end = start + args.warmup * (end - start)
            record.update(generation_start_s=start, generation_s=end - start, warm_end_s=warm_end,
                          per_token_s=(end - start) / max(1, s.progress[-1][1] - s.progress[0][1]),
                          parties={r: _summary(p, warm_end, end) for r, p in s.parties.items()})
            out["sessions"].append(record)
        out["ok"] = all("failed" not in s and s["tokens_match"] and all(
            p["rss_growth"] <= args.max_rss_growth and p["fd_growth"] <= 0 for p in s["parties"].values())
            for s in out["sessions"])
        return out
    finally:
        for s in sessions:
            for p in s.parties.values():
                if p.proc.poll() is None:
                    p.proc.kill()
                    p.proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    from mpcgen.generation.loop import DECODINGS
    from mpcgen.models.config import PRESETS
    from mpcgen.models.geometry import GEOMETRIES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--geometry", default="gpt2-tiny", choices=sorted(GEOMETRIES))
    parser.add_argument("--preset", default="mpcformer", choices=sorted(PRESETS))
    parser.add_argument("--decoding", default="client", choices=DECODINGS)
    parser.add_argument("--prompts", type=int, default=200, help="prompts per session (one a batch)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[4, 6, 8, 10, 12], help="prompt lengths, cycled")
    parser.add_argument("--max-new-tokens", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=1, help="sessions at once, each on its own port")
    parser.add_argument("--tls", action="store_true", help="TLS 1.3 party links (a throw-away CA)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the generation phase that is warm-up")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="allowed RSS growth after warm-up")
    parser.add_argument("--link-timeout", type=float, default=60.0, help="the parties' --timeout (silence, s)")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds the whole run may take")
    parser.add_argument("--json", type=Path, default=None, help="also write the record here")
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.prompts < 10 or args.sessions < 1 or not 0 < args.warmup < 1:
        print("error: use --prompts >= 10, --sessions >= 1 and 0 < --warmup < 1", file=sys.stderr)
        return 2
    try:
        record = run(args)
    except MpcgenError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        from mpcgen.checkpoint import write_json

        write_json(args.json, record)
    for s in record["sessions"]:
        if "failed" in s:
            logger.error("session on port %d failed: %s", s["port"], s["failed"])
            continue
        for role, p in s["parties"].items():
            logger.info("port %d %s: RSS %.1f MB after warm-up, at most %.1f MB after (%+.1f%%); fds %d -> at most %d",
                        s["port"], role, p["rss_warm_mb"], p["rss_max_after_mb"], 100 * p["rss_growth"],
                        p["fds_warm"], p["fds_max_after"])
        logger.info("port %d: tokens match the plaintext model: %s; %.3f s per token", s["port"], s["tokens_match"],
                    s["per_token_s"])
    print(json.dumps({k: v for k, v in record.items() if k != "sessions"} | {"sessions": [
        {k: v for k, v in s.items() if k != "parties"} for s in record["sessions"]]}))
    return 0 if record["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
