"""One benchmark point: real private generation on a model geometry, measured per phase, per op group, per token.

**What a point is.** A model (random weights of a geometry and method, or a checkpoint), a maximum sequence length
``msl`` = N and a prefix of P tokens. Decoder-only: the prompt is P random ids and the decoder generates T = N - P
tokens (positions 0 .. N - 2 are fed; the last token is never fed back). Encoder-decoder: the *encoder* input is
the P-token prefix and the decoder generates T = N - P tokens from its start token (so the decoder self-attention
grows to T positions, the cross-attention reads P). Cost does not depend on the weights' values (every CrypTen op
is data-oblivious), so random weights measure the same thing as a trained model of that geometry.

**Windows.** On a CPU, vanilla at GPT-2-base takes about a minute per token, so a point may cap the measured steps
at K < T (``max_new_tokens``) and measure *windows* of the sequence instead of all of it:

* ``start``: prompt of P tokens, the first K steps (cache lengths P .. P + K - 2);
* ``end`` (decoder-only): prompt of N - K tokens, the last K steps (cache lengths N - K .. N - 2), i.e. exactly
  the last K steps of the full sequence, seeing its longest context;
* ``both``: the two launches. Step 0 of a run only applies the LM head to the prompt's last state (``tokens``
  decoding) or nothing (``er``); steps 1 .. K - 1 are *full* steps (embed the previous output, forward one
  position, LM head + sampling). A full step's bytes and compute grow affinely with the cache length (every
  secret product with the K/V cache opens it), so their mean over the sequence's T - 1 full steps is exactly the
  mean of the two windows' mean full steps (the windows are placed symmetrically). Its rounds grow with log2 of
  the number of keys (the comparison tree of CrypTen's max in softmax), so they are interpolated in log2(keys).
  The sequence estimate is then ``prompt + step 0 (start window) + (T - 1) x that mean + finish``, where the
  finish keeps the measured LM head (under ``er`` its cost is dominated by the d x vocab weight, whatever the
  number of states) and scales its reveal and sampling groups by T / K (exact in bytes).

With K = T the run is the sequence and nothing is estimated. Encoder-decoders measure the ``start`` window only
(the generation loop cannot start the decoder from a given prefix), so their capped estimates hold the per-step
cost of the first steps: a lower bound of growing costs.

**Phases.** The client's :class:`~mpcgen.generation.GenerationStats` hold one
:class:`~mpcgen.mpc.costs.CostReport` per phase (prompt, each step, finish) with its op groups and both parties'
CPU time; a point reads them as they are (``report.phase()``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from benchmark import costs
from benchmark.network import Network, networks, projections
from mpcgen.errors import MpcgenError
from mpcgen.models.config import PRESETS
from mpcgen.models.geometry import geometry_config, random_model

logger = logging.getLogger(__name__)

SCHEMA = 1
METHODS = tuple(PRESETS)
WINDOWS = ("auto", "start", "end", "both")
FIXED_WEIGHTS = ("on", "off")
REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class BenchSpec:
    """One benchmark point (see the module docstring); ``None`` geometry fields take the family's defaults."""

    method: str = "vanilla"
    arch: str = "decoder"
    family: str | None = None
    layers: int = 12
    encoder_layers: int | None = None
    d_model: int = 768
    heads: int = 12
    vocab: int | None = None
    d_ff: int | None = None
    positions: int | None = None  # n_positions; default msl
    msl: int = 128
    prefix_len: int = 4
    weights: str = "private"
    provider: str = "ttp"
    decoding: str | None = None
    max_new_tokens: int | None = None
    window: str = "auto"
    runs: int = 1
    seed: int = 0
    fixed_weights: str = "on"
    checkpoint: str | None = None
    timeout: float = 6 * 3600.0
    progress: bool = False
    tls: bool = False  # TLS 1.3 party links (certificates made for the run) instead of plaintext ones
    nets: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Raise :class:`MpcgenError` for settings that cannot run."""
        if self.method not in METHODS:
            raise MpcgenError(f"unknown method {self.method!r}: use one of {list(METHODS)}")
        if self.window not in WINDOWS:
            raise MpcgenError(f"unknown window {self.window!r}: use one of {list(WINDOWS)}")
        if self.fixed_weights not in FIXED_WEIGHTS:
            raise MpcgenError(f"--fixed-weights {self.fixed_weights!r}: use one of {list(FIXED_WEIGHTS)}")
        if self.prefix_len < 1 or self.msl <= self.prefix_len:
            raise MpcgenError(f"need 1 <= prefix ({self.prefix_len}) < msl ({self.msl}): the point generates "
                              "msl - prefix tokens")
        if self.runs < 1:
            raise MpcgenError(f"--runs must be >= 1, got {self.runs}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise MpcgenError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        k = self.measured_tokens
        if k < self.sequence_tokens and k < 2:
            raise MpcgenError("--max-new-tokens below msl - prefix must be >= 2: a window needs one full decoding "
                              "step (step 0 only applies the LM head to the prompt)")

    @property
    def sequence_tokens(self) -> int:
        """T = msl - prefix: tokens the full sequence generates."""
        return self.msl - self.prefix_len

    @property
    def measured_tokens(self) -> int:
        """K: tokens generated per measured run."""
        return min(self.max_new_tokens or self.sequence_tokens, self.sequence_tokens)


# ------------------------------------------------------------------------------------------------------ models


def build_config(spec: BenchSpec) -> Any:
    """The ModelConfig of a random model for ``spec`` (n_positions defaults to msl)."""
    return geometry_config(preset=spec.method, arch=spec.arch, family=spec.family, layers=spec.layers,
                           d_model=spec.d_model, heads=spec.heads, vocab=spec.vocab, d_ff=spec.d_ff,
                           positions=spec.positions or spec.msl, encoder_layers=spec.encoder_layers)


def load_checkpoint_config(spec: BenchSpec) -> Any:
    """The config of ``spec.checkpoint`` (a student keeps its preset, which must be ``spec.method``)."""
    from mpcgen.models.loading import load_model

    model = load_model(spec.checkpoint, preset=spec.method)
    if model.config.preset != spec.method:
        raise MpcgenError(f"{spec.checkpoint} is a {model.config.preset!r} student: pass --method "
                          f"{model.config.preset}")
    return model.config


# ----------------------------------------------------------------------------------------------- party side


def bench_party(rank: int, job: dict[str, Any], prompt: list[int] | None = None) -> dict[str, Any] | None:
    """One party of a benchmark run (local processes): build or load the model (server; every party with public
    weights), generate; the client returns its generation stats as a dict (the server None)."""
    from mpcgen.generation import generation_party
    from mpcgen.models.loading import load_model
    from mpcgen.mpc.roles import CLIENT, SERVER

    model = None
    if rank == SERVER or job["weights"] == "public":
        model = (load_model(job["checkpoint"], preset=job["config"]["preset"]) if job.get("checkpoint") else
                 random_model(job["config"], job["seed"]))
    out = generation_party(rank, model, [prompt] if rank == CLIENT else None, max_new_tokens=job["max_new_tokens"],
                           decoding=job["decoding"], weights=job["weights"], fixed_weights=job["fixed_weights"],
                           batch_size=1, progress=bool(job.get("progress")) and rank == CLIENT)
    return out.stats[0].to_dict() if rank == CLIENT else None


# --------------------------------------------------------------------------------------------- launcher side


def prompt_ids(vocab: int, length: int, seed: int) -> list[int]:
    """The client's random prompt (seeded: every run and method sees the same ids)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, vocab, (length,), generator=gen).tolist()


def bench_certs() -> Path:
    """A CA and party certificates for TLS benchmark runs (made once per process, in a temporary folder)."""
    global _CERTS
    if _CERTS is None:
        from mpcgen.certs import issue, make_ca
        from mpcgen.mpc.roles import ROLES

        _CERTS = Path(tempfile.mkdtemp(prefix="mpcgen-bench-certs-"))
        make_ca(_CERTS)
        for role in ROLES:
            issue(_CERTS, role)
    return _CERTS


_CERTS: Path | None = None


def launch_local(job: dict[str, Any], prompt: list[int], provider: str, timeout: float) -> dict[str, Any]:
    """Server, client (and dealer) as local processes on loopback; the client's generation stats (a dict)."""
    from mpcgen.mpc.launch import run_parties
    from mpcgen.mpc.roles import CLIENT

    return run_parties(bench_party, provider=provider, timeout=timeout, args=(job,),
                       party_args={CLIENT: (prompt,)}, tls=bench_certs() if job.get("tls") else None)[CLIENT]


def run_phases(stats: dict[str, Any]) -> list[costs.Phase]:
    """The client's stats of one run -> its phases (prompt, each step, finish), each ``{"total", "groups"}``."""
    return [{"total": p["total"], "groups": p["groups"]} for p in stats["phases"]]


def summarise_window(name: str, prompt_len: int, runs: Sequence[list[costs.Phase]], stats: dict[str, Any],
                     nets: Sequence[Network]) -> dict[str, Any]:
    """Medians over runs of each phase, the window's mean full step and its totals."""
    n_phases = {len(r) for r in runs}
    if len(n_phases) != 1:
        raise MpcgenError(f"runs of window {name} have different numbers of phases: {sorted(n_phases)}")
    phases = [costs.phase_median([r[i] for r in runs]) for i in range(len(runs[0]))]
    prompt, steps, finish = phases[0], phases[1:-1], phases[-1]
    whole = costs.phase_sum(phases)
    out = {
        "name": name, "prompt_tokens": prompt_len, "new_tokens": len(steps), "prompt": prompt, "steps": steps,
        "finish": finish, "total": whole,
        "steady": costs.phase_mean(steps[1:]) if len(steps) > 1 else None,
        "runs": [costs.phase_sum(r)["total"] for r in runs],
        "projected_s": projections(nets, costs.compute_of(whole["total"]), whole["total"]["rounds"],
                                   whole["total"]["bytes"]),
        # the run's settings and totals; its phases are the ones above (medians), each party's counters are left out
        "stats": {k: v for k, v in stats.items() if k not in ("phases", "run")},
    }
    return out


def measure_window(spec: BenchSpec, config: Any, name: str, prompt_len: int, job: dict[str, Any],
                   nets: Sequence[Network], launcher: Any = launch_local) -> dict[str, Any]:
    """``spec.runs`` launches of one window; its summary."""
    prompt = prompt_ids(config.vocab_size, prompt_len, spec.seed)
    runs, stats = [], None
    for i in range(spec.runs):
        start = time.perf_counter()
        run_stats = launcher(job, prompt, spec.provider, spec.timeout)
        phases = run_phases(run_stats)
        stats = stats or run_stats
        runs.append(phases)
        logger.info("%s %s window %s run %d/%d: %.1f s launch, %.1f s metered, %d rounds, %.1f MB online",
                    spec.method, spec.weights, name, i + 1, spec.runs, time.perf_counter() - start,
                    run_stats["wall_s"], run_stats["rounds"], run_stats["bytes"] / 1e6)
    return summarise_window(name, prompt_len, runs, stats, nets)


def plan_windows(spec: BenchSpec, config: Any) -> list[tuple[str, int]]:
    """``[(window name, prompt length)]`` to run for ``spec``."""
    k, t = spec.measured_tokens, spec.sequence_tokens
    if k == t:
        return [("full", spec.prefix_len)]
    window = spec.window
    if window == "auto":
        window = "both" if config.arch == "decoder" else "start"
    if config.arch != "decoder" and window != "start":
        raise MpcgenError(f"--window {window} needs a decoder-only model: the generation loop starts an "
                          "encoder-decoder's decoder at position 0, so only the start window exists; use "
                          "--window start or generate all msl - prefix tokens")
    out = []
    if window in ("start", "both"):
        out.append(("start", spec.prefix_len))
    if window in ("end", "both"):
        out.append(("end", spec.msl - k))
    return out


ROUND_METRICS = ("rounds", "dealer_rounds")


def _mean_log2_keys(first_keys: int, steps: int) -> float:
    """Mean of log2(keys) over ``steps`` consecutive full steps, the first attending to ``first_keys`` keys."""
    return sum(math.log2(first_keys + i) for i in range(steps)) / steps


def mean_full_step(windows: dict[str, dict[str, Any]], t: int, prefix: int) -> tuple[costs.Phase, str]:
    """The mean full step over the sequence's T - 1 full steps, from the windows' mean full steps.

    Bytes and seconds grow affinely with the cache length, so with both (symmetric) windows their mean is exact.
    Rounds grow with log2 of the number of keys (CrypTen's max / argmax trees), so they are interpolated in
    log2(keys): ``start + w (end - start)`` with ``w`` placing the sequence's mean log2(keys) between the windows'.
    """
    start, end = windows.get("start"), windows.get("end")
    if start is None or end is None:
        only = start or end
        return only["steady"], ("start window only: per-step cost of the first steps (a lower bound for "
                                "length-dependent costs)" if start else "end window only: per-step cost of the "
                                "last steps (an upper bound for length-dependent costs)")
    k = start["new_tokens"]
    # full step s >= 1 of a run with prompt L attends to L + s keys (decoder-only)
    log_start = _mean_log2_keys(start["prompt_tokens"] + 1, k - 1)
    log_end = _mean_log2_keys(end["prompt_tokens"] + 1, k - 1)
    log_all = _mean_log2_keys(prefix + 1, t - 1)
    w = (log_all - log_start) / (log_end - log_start) if log_end > log_start else 0.5
    a, b = start["steady"], end["steady"]
    mean = costs.phase_mean([a, b])
    for part, ca, cb in [(mean["total"], a["total"], b["total"])] + [
            (mean["groups"][g], a["groups"].get(g, costs.zero()), b["groups"].get(g, costs.zero()))
            for g in mean["groups"]]:
        for m in ROUND_METRICS:
            if ca.get(m) is not None and cb.get(m) is not None:
                part[m] = ca[m] + w * (cb[m] - ca[m])
    return mean, (f"both windows: bytes and seconds of the mean full step = mean of the start and end windows' "
                  f"(affine in the cache length); rounds interpolated in log2(keys), weight {w:.3f} on the end "
                  "window")


def estimate_sequence(windows: dict[str, dict[str, Any]], t: int, k: int, prefix: int) -> tuple[costs.Phase, str]:
    """The full sequence's costs from the windows (see the module docstring); (phase, how it was obtained)."""
    if "full" in windows:
        return windows["full"]["total"], "measured"
    first = windows.get("start") or windows["end"]
    mean_step, how = mean_full_step(windows, t, prefix)
    finish = first["finish"]
    grow = [g for g in ("reveal", "sampling") if g in finish["groups"]]
    grown = costs.total(finish["groups"][g] for g in grow)
    grown["cpu_s"] = grown["compute_s"]  # groups have no CPU time: their wall-minus-communication stands in
    extra = costs.phase_scale({"total": grown, "groups": {g: finish["groups"][g] for g in grow}}, t / k - 1.0)
    finish_est = costs.phase_add(finish, extra)
    seq = costs.phase_sum([first["prompt"], first["steps"][0], costs.phase_scale(mean_step, t - 1), finish_est])
    return seq, how + "; finish: LM head as measured, reveal and sampling scaled by T / K"


def derive(windows: dict[str, dict[str, Any]], *, t: int, k: int, prefix: int, arch: str,
           nets: Sequence[Network]) -> dict[str, Any]:
    """The record's sequence, per-token and per-step figures and projections, from its windows."""
    seq, how = estimate_sequence(windows, t, k, prefix)
    prompt = windows.get("full", windows.get("start", windows.get("end")))["prompt"]
    after_prompt = costs.phase_add(seq, costs.phase_scale(prompt, -1.0))
    per_token = costs.phase_scale(after_prompt, 1.0 / t)
    tot, per = seq["total"], per_token["total"]
    return {
        "estimated": "full" not in windows, "estimate": how, **{m: tot[m] for m in costs.METRICS},
        "groups": seq["groups"],
        "per_token": {**per, "groups": per_token["groups"],
                      "projected_s": projections(nets, costs.compute_of(per), per["rounds"], per["bytes"])},
        "step_start": _step(windows, "start", arch), "step_end": _step(windows, "end", arch),
        "projected_s": projections(nets, costs.compute_of(tot), tot["rounds"], tot["bytes"]),
        "projection_compute": "cpu_s" if tot.get("cpu_s") is not None else "compute_s",
        "networks": [n.to_dict() for n in nets],
    }


def rederive(record: dict[str, Any]) -> dict[str, Any]:
    """A stored record with its derived figures recomputed from its windows (after a change of the estimate)."""
    nets = [Network(n["name"], n["bandwidth_bps"], n["rtt_s"]) for n in record["networks"]]
    return {**record, **derive(record["windows"], t=record["tokens"], k=record["measured_tokens"],
                               prefix=record["prefix_len"], arch=record["arch"], nets=nets)}


def git_commit() -> dict[str, Any]:
    """The checkout's commit and whether it has local changes (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head or None, "dirty": dirty}


def host_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_avg": list(os.getloadavg()), "machine": platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__}


def point_decoding(spec: BenchSpec, config: Any) -> str:
    """The decoding a point runs: ``spec.decoding``, else the papers' baselines: ``er`` for ER methods and, without
    ER, the secure argmax of vanilla CrypTen decoding (``tokens``)."""
    from mpcgen.generation.loop import check_decoding

    return check_decoding(spec.decoding or ("er" if config.embedding_resend else "tokens"), config)


def make_job(spec: BenchSpec, config: Any, max_new_tokens: int) -> dict[str, Any]:
    """What every party of a run needs to know (the client's prompt travels apart)."""
    return {"config": config.to_dict(), "checkpoint": spec.checkpoint, "seed": spec.seed, "weights": spec.weights,
            "max_new_tokens": max_new_tokens, "decoding": point_decoding(spec, config),
            "fixed_weights": spec.fixed_weights == "on", "progress": spec.progress, "tls": spec.tls}


def run_point(spec: BenchSpec, *, netns: Network | None = None, netns_runs: int = 1,
              netns_shaper: str = "auto", netns_mtu: int = 1500) -> dict[str, Any]:
    """Measure one point (loopback; plus the namespace check when ``netns`` is given) and return its record."""
    from mpcgen.mpc.roles import check_provider, check_weights_mode

    spec.check()
    check_provider(spec.provider)
    check_weights_mode(spec.weights)
    nets = networks(spec.nets)
    config = load_checkpoint_config(spec) if spec.checkpoint else build_config(spec)
    decoding = point_decoding(spec, config)
    fixed = spec.weights == "private" and spec.fixed_weights == "on"
    k, t = spec.measured_tokens, spec.sequence_tokens
    plan = plan_windows(spec, config)
    job = make_job(dataclasses.replace(spec, decoding=decoding), config, k)
    started, load_before = time.time(), os.getloadavg()

    windows = {name: measure_window(spec, config, name, length, job, nets) for name, length in plan}
    record: dict[str, Any] = {
        "schema": SCHEMA, "method": spec.method, "preset": config.preset, "decoding": decoding, "arch": config.arch,
        "family": config.family, "layers": config.n_layer, "encoder_layers": config.n_encoder_layer,
        "d_model": config.n_embd, "heads": config.n_head, "d_ff": config.ff_dim, "vocab": config.vocab_size,
        "positions": config.n_positions, "msl": spec.msl, "prefix_len": spec.prefix_len, "weights": spec.weights,
        "provider": spec.provider, "fixed_weights": fixed, "tls": spec.tls, "runs": spec.runs, "seed": spec.seed,
        "checkpoint": spec.checkpoint, "max_new_tokens": spec.max_new_tokens, "window": "+".join(windows),
        "tokens": t, "measured_tokens": k,
        **derive(windows, t=t, k=k, prefix=spec.prefix_len, arch=config.arch, nets=nets),
        "windows": windows,
        "setup": _setup(windows),
        **git_commit(), "host": host_info(), "load_avg_before": list(load_before),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "elapsed_s": time.time() - started,
    }
    if netns is not None:
        from benchmark.netns import check_windows

        record["netns"] = check_windows(spec, config, job, plan, windows, netns, netns_runs, netns_shaper,
                                        netns_mtu)
    return record


def _step(windows: dict[str, Any], where: str, arch: str) -> dict[str, Any] | None:
    """The cost of one full decoding step at the start or the end of the sequence, with the (decoder) positions it
    covers: the mean full step of that window, or, for a measured sequence, its first / last full step."""
    full = windows.get("full")
    w = full or windows.get(where)
    if w is None or len(w["steps"]) < 2:
        return None
    # Step s >= 1 feeds position prompt + s - 1 (decoder-only) or decoder position s (encoder-decoder).
    first = w["prompt_tokens"] - 1 if arch == "decoder" else 0
    if full is None:
        phase, steps = w["steady"], (1, len(w["steps"]) - 1)
    else:
        s = 1 if where == "start" else len(w["steps"]) - 1
        phase, steps = w["steps"][s], (s, s)
    return {"window": w["name"], "positions": [first + steps[0], first + steps[1]], **phase["total"],
            "groups": phase["groups"]}


def _setup(windows: dict[str, Any]) -> dict[str, Any] | None:
    """One-time session setup (weight sharing, fixed-weight openings) from the first window's stats; not part of
    the sequence's figures."""
    setup = (next(iter(windows.values())).get("stats") or {}).get("setup")
    return None if setup is None else setup["total"]


__all__ = ["BenchSpec", "METHODS", "bench_party", "build_config", "run_point"]
