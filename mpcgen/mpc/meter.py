"""Cost accounting for secure computation: rounds, bytes and time per op group, online and dealer apart.

What is counted. CrypTen's communicator keeps three counters per party when ``cfg.communicator.verbose`` is on
(off by default; :class:`CostMeter` turns it on): ``rounds`` (+1 per communication call: send, recv, broadcast,
all_reduce, ... -- a Beaver multiplication's batched opening is one round), ``bytes`` (8 per ring element the party
sends *or receives*, so a party's count is its sent + received traffic) and ``time`` (seconds inside those calls).

Online vs dealer. With the ``ttp`` provider, rank 0 fetches each correlated tuple from the dealer through the same
communicator (``TTPClient.ttp_request``: ``send_obj`` the request, ``recv_obj`` the size, ``broadcast`` the tuple),
so those calls land in the same counters. The meter wraps ``ttp_request`` on the party and books what happens
inside it as **dealer** traffic. Dealer bytes are rank 0's party-dealer link (rank 1 draws its tuple shares from a
seed it shares with the dealer and receives nothing). CrypTen sizes the request and size messages with
``sys.getsizeof`` of the Python object, a small constant per request; the tuple itself is counted exactly. With
``tfp`` there is no dealer traffic: rank 0 makes tuples itself and shares them with pseudo-random zero sharings.

Summing parties. Each party counts its sent + received bytes, so the two computing parties' counts summed and halved
is the traffic on their link (``online_bytes`` of :class:`CostReport`). Rounds are the same exchanges seen from both
ends: the report's ``rounds`` is the maximum over parties, not the sum.

Attribution. Forward pre/post hooks on every module with a ``cost_group`` class attribute, and ``meter.section()``
for code outside modules, maintain a stack of group names; at every push or pop, the counters' change since the
previous event is booked to the group on top of the stack (innermost wins). Time booked to a group is wall time
(compute + communication) on that party.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from torch import nn

from mpcgen.mpc.compat import crypten

logger = logging.getLogger(__name__)

GROUPS = ("embed", "linear", "attention", "activation", "norm", "lm_head", "sampling")
OTHER = "other"  # anything outside a tagged module or section

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


@dataclass
class GroupCost:
    """Cost booked to one op group (per party, or summed over parties in a :class:`CostReport`)."""

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


@dataclass
class PartyCost:
    """One party's counters over a metered run (bytes: what this party sent + received)."""

    rank: int
    wall_s: float
    groups: dict[str, GroupCost]

    def total(self) -> GroupCost:
        """Sum over groups."""
        out = GroupCost()
        for g in self.groups.values():
            out.add(g)
        return out


@dataclass
class CostReport:
    """Costs of one run over all computing parties.

    ``rounds``: online rounds (max over parties). ``online_bytes``: bytes on the link between the computing parties
    (sum of the parties' sent + received, halved). ``dealer_rounds`` / ``dealer_bytes``: party-dealer traffic (rank
    0's link; zero for ``tfp``). ``wall_s``: the slowest party's wall time. ``groups``: the same figures per op group.
    """

    provider: str
    wall_s: float
    rounds: int
    online_bytes: float
    dealer_rounds: int
    dealer_bytes: float
    groups: dict[str, dict[str, float]]
    parties: list[PartyCost] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_parties(cls, parties: Sequence[PartyCost], *, provider: str, **notes: Any) -> "CostReport":
        """Combine the computing parties' :class:`PartyCost` s (any order) into one report."""
        parties = sorted(parties, key=lambda p: p.rank)
        names = [g for g in (*GROUPS, OTHER) if any(g in p.groups for p in parties)]
        names += sorted({g for p in parties for g in p.groups} - set(names))
        groups = {}
        for name in names:
            per = [p.groups.get(name, GroupCost()) for p in parties]
            groups[name] = _combine(per)
        totals = _combine([p.total() for p in parties])
        return cls(
            provider=provider,
            wall_s=max((p.wall_s for p in parties), default=0.0),
            rounds=int(totals["rounds"]),
            online_bytes=totals["online_bytes"],
            dealer_rounds=int(totals["dealer_rounds"]),
            dealer_bytes=totals["dealer_bytes"],
            groups=groups,
            parties=list(parties),
            notes=dict(notes),
        )

    def projected(self, network: str = "lan", compute_s: float | None = None) -> float:
        """Projected seconds on a named network (:data:`NETWORKS`), online traffic only.

        ``compute_s`` defaults to the measured wall time, an upper bound for compute (it includes the loopback
        communication, which is small next to compute at these sizes).
        """
        bandwidth, rtt = NETWORKS[network]
        return project_time(self.wall_s if compute_s is None else compute_s, self.rounds, self.online_bytes,
                            bandwidth_bps=bandwidth, rtt_s=rtt)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (per-party counters included; projections for every network in :data:`NETWORKS`)."""
        out = dataclasses.asdict(self)
        out["projected_s"] = {name: self.projected(name) for name in NETWORKS}
        return out


def _combine(per_party: Sequence[GroupCost]) -> dict[str, float]:
    return {
        "seconds": max((g.seconds for g in per_party), default=0.0),
        "comm_seconds": max((g.comm_seconds for g in per_party), default=0.0),
        "rounds": max((g.rounds for g in per_party), default=0),
        "online_bytes": sum(g.bytes for g in per_party) / 2.0,
        "dealer_rounds": sum(g.dealer_rounds for g in per_party),
        "dealer_bytes": sum(g.dealer_bytes for g in per_party),
    }


class CostMeter:
    """Meters one party's communication and time per op group. Use one per party and run::

        meter = CostMeter().attach(model)
        with meter:                       # turns counting on and resets CrypTen's counters
            with meter.section("embed"):
                x = encrypt_input(...)
            out = model(...)              # module hooks book to each module's ``cost_group``
        party_cost = meter.result()
    """

    def __init__(self) -> None:
        self._stack: list[str] = [OTHER]
        self._groups: dict[str, GroupCost] = {}
        self._handles: list[Any] = []
        self._last: tuple[float, float, float, float] | None = None
        self._in_dealer = False
        self._start = 0.0
        self._wall = 0.0
        self._rank = -1
        self._ttp_client: Any = None
        self._running = False

    # ----------------------------------------------------------------------------------------------- wiring

    def attach(self, model: nn.Module) -> "CostMeter":
        """Hook every submodule of ``model`` that declares a ``cost_group``."""
        for module in model.modules():
            group = getattr(type(module), "cost_group", None)
            if group is None:
                continue
            self._handles.append(module.register_forward_pre_hook(lambda *_, g=group: self._push(g)))
            self._handles.append(module.register_forward_hook(lambda *_, g=group: self._pop(g)))
        return self

    def detach(self) -> None:
        """Remove the module hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """Book everything inside the block to group ``name`` (unless a tagged module inside claims it)."""
        self._push(name)
        try:
            yield
        finally:
            self._pop(name)

    # ------------------------------------------------------------------------------------------ start / stop

    def start(self) -> "CostMeter":
        """Turn CrypTen's counters on, reset them, and start booking."""
        crypten.cfg.communicator.verbose = True
        comm = crypten.communicator.get()
        comm.reset_communication_stats()
        self._rank = comm.get_rank()
        self._groups = {}
        self._stack = [OTHER]
        self._wrap_ttp()
        self._start = time.perf_counter()
        self._last = self._snapshot()
        self._running = True
        return self

    def stop(self) -> PartyCost:
        """Stop booking (the time since the last event goes to the group on top) and return the result."""
        if self._running:
            self._book()
            self._wall = time.perf_counter() - self._start
            self._unwrap_ttp()
            self._running = False
        return self.result()

    def __enter__(self) -> "CostMeter":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def totals(self) -> GroupCost:
        """This party's costs since :meth:`start`, summed over groups, up to now (for per-step accounting: the
        difference of two calls is what happened in between, online and dealer traffic kept apart)."""
        if self._running:
            self._book()  # close the open interval; booking it now or at the next event gives the same sums
        total = self.result().total()
        if self._running:
            total.seconds = time.perf_counter() - self._start
        return total

    def result(self) -> PartyCost:
        """This party's costs so far (a copy)."""
        groups = {k: dataclasses.replace(v) for k, v in self._groups.items()}
        return PartyCost(rank=self._rank, wall_s=self._wall, groups=groups)

    # ------------------------------------------------------------------------------------------------ booking

    def _snapshot(self) -> tuple[float, float, float, float]:
        stats = crypten.communicator.get().get_communication_stats()
        return (time.perf_counter(), stats["rounds"], stats["bytes"], stats["time"])

    def _book(self) -> None:
        """Book the counters' change since the last event to the group on top of the stack."""
        if self._last is None:
            return
        now = self._snapshot()
        d_t, d_rounds, d_bytes, d_comm = (a - b for a, b in zip(now, self._last))
        self._last = now
        cost = self._groups.setdefault(self._stack[-1], GroupCost())
        cost.seconds += d_t
        cost.comm_seconds += d_comm
        if self._in_dealer:
            cost.dealer_rounds += int(d_rounds)
            cost.dealer_bytes += d_bytes
        else:
            cost.rounds += int(d_rounds)
            cost.bytes += d_bytes

    def _push(self, group: str) -> None:
        if self._running:
            self._book()
        self._stack.append(group)

    def _pop(self, group: str) -> None:
        if self._running:
            self._book()
        if len(self._stack) > 1 and self._stack[-1] == group:
            self._stack.pop()
        else:  # an exception skipped a post-hook somewhere: resynchronise rather than book to the wrong group
            logger.warning("cost meter: unbalanced section %r (stack %s)", group, self._stack)
            while len(self._stack) > 1 and self._stack.pop() != group:
                pass

    # ------------------------------------------------------------------------------------------- dealer link

    def _wrap_ttp(self) -> None:
        """Book TTP requests as dealer traffic (CrypTen sends them through the same, counted, communicator)."""
        if not crypten.mpc.ttp_required():
            return
        from crypten.mpc.provider.ttp_provider import TTPClient

        client = TTPClient.get()
        original = type(client).ttp_request

        def metered_request(*args: Any, **kwargs: Any) -> Any:
            self._book()  # close the online interval before the request
            self._in_dealer = True
            try:
                return original(client, *args, **kwargs)
            finally:
                self._book()
                self._in_dealer = False

        client.ttp_request = metered_request  # instance attribute: shadows the method until _unwrap_ttp
        self._ttp_client = client

    def _unwrap_ttp(self) -> None:
        if self._ttp_client is not None:
            self._ttp_client.__dict__.pop("ttp_request", None)
            self._ttp_client = None
