"""The cost meter of one party: rounds, bytes and time per op group, online and dealer apart.

The figures it fills are those of :mod:`mpcgen.mpc.costs` (:class:`PartyCost` per party, combined over parties by
:meth:`CostReport.from_parties`); this module is the part that needs CrypTen.

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

Summing parties: see :mod:`mpcgen.mpc.costs` (bytes summed and halved, rounds the maximum over parties).

Attribution. Forward pre/post hooks on every module with a ``cost_group`` class attribute, and ``meter.section()``
for code outside modules, maintain a stack of group names; at every push or pop, the counters' change since the
previous event is booked to the group on top of the stack (innermost wins). Time booked to a group is wall time
(compute + communication) on that party. :meth:`CostMeter.snapshot` returns the cumulative counters (and the
process's CPU time) at any point, so a caller can cut a run into phases without a second meter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from typing import Any, Iterator

from torch import nn

from mpcgen.mpc.compat import crypten
from mpcgen.mpc.costs import OTHER, GroupCost, PartyCost

logger = logging.getLogger(__name__)


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
        self._cpu_start = 0.0
        self._wall = 0.0
        self._cpu = 0.0
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
        self._cpu_start = time.process_time()
        self._last = self._snapshot()
        self._running = True
        return self

    def stop(self) -> PartyCost:
        """Stop booking (the time since the last event goes to the group on top) and return the result."""
        if self._running:
            self._book()
            self._wall = time.perf_counter() - self._start
            self._cpu = time.process_time() - self._cpu_start
            self._unwrap_ttp()
            self._running = False
        return self.result()

    def __enter__(self) -> "CostMeter":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def snapshot(self) -> PartyCost:
        """This party's cumulative costs since :meth:`start`, up to now, wall and CPU time included. The
        :meth:`PartyCost.since` of two snapshots is what happened in between, online and dealer traffic apart."""
        if not self._running:
            return self.result()
        self._book()  # close the open interval; booking it now or at the next event gives the same sums
        groups = {k: dataclasses.replace(v) for k, v in self._groups.items()}
        return PartyCost(rank=self._rank, wall_s=time.perf_counter() - self._start, groups=groups,
                         cpu_s=time.process_time() - self._cpu_start)

    def result(self) -> PartyCost:
        """This party's costs so far (a copy)."""
        groups = {k: dataclasses.replace(v) for k, v in self._groups.items()}
        return PartyCost(rank=self._rank, wall_s=self._wall, groups=groups, cpu_s=self._cpu)

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
