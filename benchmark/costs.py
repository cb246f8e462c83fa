"""Arithmetic on stored phases of runs (medians over runs, sums, scaling), for records read back from JSON.

A *cost* is the JSON form of :class:`mpcgen.mpc.costs.Cost` (a dict over :data:`METRICS`, combined over parties by
:meth:`mpcgen.mpc.costs.CostReport.from_parties`, the one rule); a *phase* is ``CostReport.phase()``:
``{"total": cost, "groups": {op group: cost}}``. A value may be None (``cpu_s`` of a group); None propagates
through sums.

Compute for the network projection (:func:`compute_of`): ``cpu_s`` where known, else ``compute_s``. Wall-clock
compute grows when other jobs share the cores; CPU time does not (each party runs one torch thread), so it is the
better estimate of what a party would take on its own core (:attr:`mpcgen.mpc.costs.Cost.projection_compute_s`).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable, Mapping, Sequence

from mpcgen.mpc.costs import METRICS

Cost = dict[str, Any]
Phase = dict[str, Any]


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
