"""The one cost model of a secure computation: what a party counted, how parties combine, how phases add up.

Every figure mpcgen reports (a forward pass, each phase of a generation, a benchmark point, a frontier row) is a
:class:`CostReport` built by :meth:`CostReport.from_parties` from the computing parties' :class:`PartyCost` s, so
there is one rule for combining parties:

* ``seconds``: the slowest party's wall time; ``comm_s``: the most time a party spent inside communication calls;
  ``compute_s``: the most wall-minus-communication time of a party (local compute on the critical path);
  ``cpu_s``: the most process CPU time of a party (phase totals only: groups have none);
* ``rounds``: the maximum over parties (both ends see the same exchanges);
* ``bytes``: online bytes on the server-client link: each party counts what it sent *and* received, so the
  parties' counts are summed and halved;
* ``dealer_rounds`` / ``dealer_bytes``: party-dealer traffic (rank 0's link with ``ttp``), summed.

Phases that follow one another add metric by metric (:meth:`CostReport.__add__`). This module has no CrypTen
dependency: plaintext code and reports use it; the meter that fills it (:mod:`mpcgen.mpc.meter`) runs in a party.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from mpcgen.models.layers import COST_GROUPS

# Report order: the op groups model modules declare (``cost_group``), then the sections generation books; any
# other section (e.g. ``setup``) follows, and ``other`` is what no group claimed.
GROUPS = (*COST_GROUPS, "sampling", "reveal")
OTHER = "other"

# The metrics of a combined cost, in the order reports list them.
METRICS = ("seconds", "compute_s", "cpu_s", "comm_s", "rounds", "bytes", "dealer_rounds", "dealer_bytes")

# (bandwidth in bit/s, round-trip time in s)
NETWORKS: dict[str, tuple[float, float]] = {
    "lan": (10e9, 0.5e-3),
    "wan": (200e6, 40e-3),
}


def project_time(compute_s: float, rounds: float, bytes_: float, *, bandwidth_bps: float, rtt_s: float) -> float:
    """Projected run time on a network: ``compute + rounds * RTT + bytes * 8 / bandwidth``.

    Args:
        compute_s: local compute seconds.
        rounds: sequential communication rounds.
        bytes_: bytes on the wire.
        bandwidth_bps: link bandwidth in bits per second.
        rtt_s: round-trip time in seconds.
    """
    if bandwidth_bps <= 0 or rtt_s < 0 or compute_s < 0 or rounds < 0 or bytes_ < 0:
        raise ValueError("project_time needs bandwidth > 0 and non-negative compute, rounds, bytes and RTT")
    return compute_s + rounds * rtt_s + bytes_ * 8.0 / bandwidth_bps


# ------------------------------------------------------------------------------------------------ one party


@dataclass
class GroupCost:
    """One party's counters booked to one op group (``bytes``: what this party sent + received)."""

    seconds: float = 0.0
    comm_seconds: float = 0.0
    rounds: int = 0
    bytes: float = 0.0
    dealer_rounds: int = 0
    dealer_bytes: float = 0.0

    def add(self, other: "GroupCost") -> None:
        """Accumulate ``other`` into this one."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def minus(self, earlier: "GroupCost") -> "GroupCost":
        """What was booked between ``earlier`` (a snapshot of the same counters) and this one."""
        return GroupCost(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in dataclasses.fields(self)})


@dataclass
class PartyCost:
    """One party's counters over a metered interval: wall and process CPU seconds, per op group."""

    rank: int
    wall_s: float
    groups: dict[str, GroupCost]
    cpu_s: float | None = None

    def total(self) -> GroupCost:
        """Sum over groups."""
        out = GroupCost()
        for g in self.groups.values():
            out.add(g)
        return out

    def since(self, earlier: "PartyCost") -> "PartyCost":
        """The interval between two cumulative snapshots of the same meter (``earlier`` first)."""
        groups = {name: cost.minus(earlier.groups.get(name, GroupCost())) for name, cost in self.groups.items()}
        cpu = None if self.cpu_s is None or earlier.cpu_s is None else self.cpu_s - earlier.cpu_s
        return PartyCost(rank=self.rank, wall_s=self.wall_s - earlier.wall_s, groups=groups, cpu_s=cpu)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PartyCost":
        """Inverse of :meth:`to_dict` (the form parties send each other after a run)."""
        return cls(rank=data["rank"], wall_s=data["wall_s"], cpu_s=data.get("cpu_s"),
                   groups={k: GroupCost(**v) for k, v in data["groups"].items()})


# ----------------------------------------------------------------------------------------- combined parties


@dataclass
class Cost:
    """Figures over all computing parties (see the module docstring for the rule); ``cpu_s`` may be unknown."""

    seconds: float = 0.0
    compute_s: float = 0.0
    cpu_s: float | None = None
    comm_s: float = 0.0
    rounds: float = 0
    bytes: float = 0.0
    dealer_rounds: float = 0
    dealer_bytes: float = 0.0

    @classmethod
    def combine(cls, per_party: Sequence[GroupCost], cpu_s: Sequence[float | None] = ()) -> "Cost":
        """The parties' counters of one interval (and group) -> one cost. The one place the rule is written."""
        cpu = None if not cpu_s or any(c is None for c in cpu_s) else max(cpu_s)
        return cls(
            seconds=max((p.seconds for p in per_party), default=0.0),
            compute_s=max((max(0.0, p.seconds - p.comm_seconds) for p in per_party), default=0.0),
            cpu_s=cpu,
            comm_s=max((p.comm_seconds for p in per_party), default=0.0),
            rounds=max((p.rounds for p in per_party), default=0),
            bytes=sum(p.bytes for p in per_party) / 2.0,
            dealer_rounds=sum(p.dealer_rounds for p in per_party),
            dealer_bytes=sum(p.dealer_bytes for p in per_party),
        )

    def __add__(self, other: "Cost") -> "Cost":
        values = {m: None if getattr(self, m) is None or getattr(other, m) is None else
                  getattr(self, m) + getattr(other, m) for m in METRICS}
        return Cost(**values)

    def scaled(self, factor: float) -> "Cost":
        """Every metric times ``factor`` (e.g. ``1 / tokens`` for a per-token figure)."""
        return Cost(**{m: None if getattr(self, m) is None else getattr(self, m) * factor for m in METRICS})

    @property
    def projection_compute_s(self) -> float:
        """The compute term of a network projection: CPU seconds where measured (they do not grow when other jobs
        share the cores), else wall minus communication."""
        return self.cpu_s if self.cpu_s is not None else self.compute_s

    def projected(self, network: str = "lan") -> float:
        """Projected seconds on a named network (:data:`NETWORKS`), online traffic only."""
        bandwidth, rtt = NETWORKS[network]
        return project_time(self.projection_compute_s, self.rounds, self.bytes, bandwidth_bps=bandwidth, rtt_s=rtt)

    def to_dict(self) -> dict[str, Any]:
        return {m: getattr(self, m) for m in METRICS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Cost":
        return cls(**{m: data.get(m, 0.0) for m in METRICS})


@dataclass
class CostReport:
    """Costs of one metered interval (a run, or one phase of it) over all computing parties.

    ``total``: the interval's figures; ``groups``: the same per op group; ``parties``: the counters each computing
    party sent (empty for sums of phases and for plaintext runs); ``provider``: ``ttp``, ``tfp`` or None (plaintext).
    """

    provider: str | None
    total: Cost
    groups: dict[str, Cost] = field(default_factory=dict)
    parties: list[PartyCost] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parties(cls, parties: Sequence[PartyCost], *, provider: str | None, **notes: Any) -> "CostReport":
        """Combine the computing parties' :class:`PartyCost` s (any order) into one report."""
        parties = sorted(parties, key=lambda p: p.rank)
        names = [g for g in (*GROUPS, OTHER) if any(g in p.groups for p in parties)]
        names += sorted({g for p in parties for g in p.groups} - set(names))
        groups = {name: Cost.combine([p.groups.get(name, GroupCost()) for p in parties]) for name in names}
        total = Cost.combine([p.total() for p in parties], [p.cpu_s for p in parties])
        # A party's own wall clock spans the interval, including time no group claimed between events.
        total.seconds = max((p.wall_s for p in parties), default=0.0)
        return cls(provider=provider, total=total, groups=groups, parties=list(parties), notes=dict(notes))

    @classmethod
    def plaintext(cls, seconds: float) -> "CostReport":
        """A plaintext interval: wall time only."""
        return cls(provider=None, total=Cost(seconds=seconds, compute_s=seconds))

    @classmethod
    def sum(cls, reports: Iterable["CostReport"]) -> "CostReport":
        """Consecutive intervals added metric by metric (per group too); parties are not kept."""
        reports = list(reports)
        total, groups = Cost(), {}
        for r in reports:
            total = total + r.total
            for name, cost in r.groups.items():
                groups[name] = groups.get(name, Cost()) + cost
        return cls(provider=reports[0].provider if reports else None, total=total, groups=groups)

    def __add__(self, other: "CostReport") -> "CostReport":
        return CostReport.sum([self, other])

    def scaled(self, factor: float) -> "CostReport":
        return CostReport(provider=self.provider, total=self.total.scaled(factor),
                          groups={g: c.scaled(factor) for g, c in self.groups.items()})

    # The figures readers ask for most, under their usual names.
    @property
    def wall_s(self) -> float:
        return self.total.seconds

    @property
    def rounds(self) -> int:
        return int(self.total.rounds)

    @property
    def online_bytes(self) -> float:
        return self.total.bytes

    @property
    def dealer_rounds(self) -> int:
        return int(self.total.dealer_rounds)

    @property
    def dealer_bytes(self) -> float:
        return self.total.dealer_bytes

    def projected(self, network: str = "lan") -> float:
        """Projected seconds on a named network (:data:`NETWORKS`), online traffic only."""
        return self.total.projected(network)

    def phase(self) -> dict[str, Any]:
        """``{"total": {metric: value}, "groups": {group: {metric: value}}}``: the JSON form benchmarks store."""
        return {"total": self.total.to_dict(), "groups": {g: c.to_dict() for g, c in self.groups.items()}}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, with projections for every network in :data:`NETWORKS`."""
        return {"provider": self.provider, **self.phase(), "parties": [p.to_dict() for p in self.parties],
                "notes": dict(self.notes), "projected_s": {name: self.projected(name) for name in NETWORKS}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CostReport":
        """Inverse of :meth:`to_dict` (projections are recomputed, not read)."""
        return cls(provider=data.get("provider"), total=Cost.from_dict(data["total"]),
                   groups={g: Cost.from_dict(c) for g, c in data.get("groups", {}).items()},
                   parties=[PartyCost.from_dict(p) for p in data.get("parties", [])], notes=dict(data.get("notes", {})))


__all__ = ["GROUPS", "METRICS", "NETWORKS", "OTHER", "Cost", "CostReport", "GroupCost", "PartyCost",
           "project_time"]
