"""Cost vectors of one phase of a run (the prompt, one decoding step, the finish), and their arithmetic.

A *cost* is a dict over :data:`METRICS`: ``seconds`` (wall, the slowest party), ``compute_s`` (per party wall minus
the time inside CrypTen's communication calls, then the maximum over parties: the local compute on the critical
path, without loopback transfers and without waiting for the dealer), ``comm_s`` (time in communication calls,
maximum over parties), ``rounds`` (online rounds, maximum over parties), ``bytes`` (online bytes on the
server-client link: both parties' sent + received, halved), ``dealer_rounds`` / ``dealer_bytes`` (party-dealer
traffic), and ``cpu_s`` (CPU seconds of each party's process, user + system, all threads; the maximum over
parties; per phase only, None per group). These are the rules of :class:`mpcgen.mpc.CostReport`. A value may be
None (unknown: a run without the per-group snapshots has no compute time); None propagates through sums.

Compute for the network projection (:func:`compute_of`): ``cpu_s`` where known, else ``compute_s``. Wall-clock
compute grows when other jobs share the cores; CPU time does not (each party runs one torch thread), so it is the
better estimate of what a party would take on its own core.

A *phase* is ``{"total": cost, "groups": {op group: cost}}``.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping, Sequence

METRICS = ("seconds", "compute_s", "cpu_s", "comm_s", "rounds", "bytes", "dealer_rounds", "dealer_bytes")
Cost = dict[str, Any]
Phase = dict[str, Any]
_PARTY_FIELDS = ("seconds", "comm_seconds", "rounds", "bytes", "dealer_rounds", "dealer_bytes")


def compute_of(cost: Mapping[str, Any]) -> float | None:
    """The compute term of the projection: CPU seconds where measured, else wall minus communication."""
    return cost.get("cpu_s") if cost.get("cpu_s") is not None else cost.get("compute_s")


def zero() -> Cost:
    return {m: 0.0 for m in METRICS}


def add(a: Mapping[str, Any], b: Mapping[str, Any]) -> Cost:
    """``a + b`` metric by metric (None if either is None)."""
    return {m: None if a.get(m) is None or b.get(m) is None else a[m] + b[m] for m in METRICS}


def scale(a: Mapping[str, Any], factor: float) -> Cost:
    """``a * factor`` metric by metric."""
    return {m: None if a.get(m) is None else a[m] * factor for m in METRICS}


def total(costs: Iterable[Mapping[str, Any]]) -> Cost:
    out = zero()
    for c in costs:
        out = add(out, c)
    return out


def median(costs: Sequence[Mapping[str, Any]]) -> Cost:
    """Metric-wise median over runs (None if any run lacks the metric)."""
    out = {}
    for m in METRICS:
        values = [c.get(m) for c in costs]
        out[m] = None if not values or any(v is None for v in values) else statistics.median(values)
    return out


# ------------------------------------------------------------------------------------------------------- phases


def phase_add(a: Phase, b: Phase) -> Phase:
    groups = {g: add(a["groups"].get(g, zero()), b["groups"].get(g, zero())) for g in _names(a, b)}
    return {"total": add(a["total"], b["total"]), "groups": groups}


def phase_scale(a: Phase, factor: float) -> Phase:
    return {"total": scale(a["total"], factor), "groups": {g: scale(c, factor) for g, c in a["groups"].items()}}


def phase_sum(phases: Iterable[Phase]) -> Phase:
    out: Phase = {"total": zero(), "groups": {}}
    for p in phases:
        out = phase_add(out, p)
    return out


def phase_mean(phases: Sequence[Phase]) -> Phase:
    return phase_scale(phase_sum(phases), 1.0 / len(phases))


def phase_median(phases: Sequence[Phase]) -> Phase:
    """Metric-wise median of the same phase over runs."""
    names = sorted({g for p in phases for g in p["groups"]})
    return {"total": median([p["total"] for p in phases]),
            "groups": {g: median([p["groups"].get(g, zero()) for p in phases]) for g in names}}


def _names(*phases: Phase) -> list[str]:
    seen: list[str] = []
    for p in phases:
        seen += [g for g in p["groups"] if g not in seen]
    return seen


# ------------------------------------------------------------------------------------- from the parties' marks


def party_phases(marks: Sequence[tuple[str, Mapping[str, Mapping[str, float]]]]) -> list[dict[str, dict[str, float]]]:
    """One party's cumulative per-group snapshots at each mark -> its per-group costs in each phase.

    ``marks``: ``(label, {group: GroupCost fields})`` at start, prompt, each token and finish.
    """
    out = []
    for (_, prev), (_, cur) in zip(marks, marks[1:]):
        phase = {}
        for group, fields in cur.items():
            before = prev.get(group, {})
            phase[group] = {f: fields[f] - before.get(f, 0.0) for f in _PARTY_FIELDS}
        out.append(phase)
    return out


def combine_parties(per_party: Sequence[Mapping[str, float]]) -> Cost:
    """The parties' counters of one group in one phase -> a cost (the CostReport rules, see the module)."""
    n = len(per_party)
    return {
        "seconds": max(p["seconds"] for p in per_party),
        "compute_s": max(max(0.0, p["seconds"] - p["comm_seconds"]) for p in per_party),
        "cpu_s": None,
        "comm_s": max(p["comm_seconds"] for p in per_party),
        "rounds": max(p["rounds"] for p in per_party),
        "bytes": sum(p["bytes"] for p in per_party) / n,
        "dealer_rounds": sum(p["dealer_rounds"] for p in per_party),
        "dealer_bytes": sum(p["dealer_bytes"] for p in per_party),
    }


def phases_from_marks(parties_marks: Sequence[Sequence[tuple[str, Any]]]) -> list[Phase]:
    """Both computing parties' marks -> one phase per interval (prompt, each token, finish), over both parties."""
    per_party = [party_phases(m) for m in parties_marks]
    lengths = {len(p) for p in per_party}
    if len(lengths) != 1:
        raise ValueError(f"the parties marked different numbers of phases: {sorted(lengths)}")
    phases = []
    for phase_parts in zip(*per_party):
        groups = sorted({g for part in phase_parts for g in part})
        empty = {f: 0.0 for f in _PARTY_FIELDS}
        by_group = {g: combine_parties([part.get(g, empty) for part in phase_parts]) for g in groups}
        party_totals = [{f: sum(c[f] for c in part.values()) for f in _PARTY_FIELDS} for part in phase_parts]
        phases.append({"total": combine_parties(party_totals), "groups": by_group})
    return phases


def add_cpu(phases: list[Phase], parties_cpu: Sequence[Sequence[float]]) -> None:
    """Set each phase's ``cpu_s`` from the parties' process CPU times at the same marks (maximum over parties)."""
    per_party = [[b - a for a, b in zip(cpu, cpu[1:])] for cpu in parties_cpu]
    if any(len(p) != len(phases) for p in per_party):
        raise ValueError("the parties' CPU marks do not match the phases")
    for phase, values in zip(phases, zip(*per_party)):
        phase["total"]["cpu_s"] = max(values)


def phases_from_stats(stats: Mapping[str, Any]) -> list[Phase]:
    """Fallback without per-group snapshots: the phases of :class:`GenerationStats` (no groups, no compute)."""
    def cost(seconds: float, rounds: float, bytes_: float, dealer_bytes: float | None) -> Phase:
        c = {"seconds": seconds, "compute_s": None, "cpu_s": None, "comm_s": None, "rounds": rounds, "bytes": bytes_,
             "dealer_rounds": None, "dealer_bytes": dealer_bytes}
        return {"total": c, "groups": {}}

    out = [cost(stats["prompt_s"], stats["prompt_rounds"], stats["prompt_bytes"], None)]
    for s, r, b, d in zip(stats["per_token_s"], stats["per_token_rounds"], stats["per_token_bytes"],
                          stats["per_token_dealer_bytes"]):
        out.append(cost(s, r, b, d))
    out.append(cost(stats["finish_s"], stats["finish_rounds"], stats["finish_bytes"], stats["finish_dealer_bytes"]))
    return out
