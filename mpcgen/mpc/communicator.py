"""CrypTen's communicator API over :mod:`mpcgen.mpc.links` (TLS 1.3 party links), in place of ``torch.distributed``.

CrypTen reaches the network through ``crypten.communicator.get()`` (a ``DistributedCommunicator`` on gloo) and,
in its TTP provider, through three direct ``torch.distributed`` calls (the dealer's seeds and a barrier).
:func:`install` points both at this module: :class:`SocketCommunicator` implements every method CrypTen calls, with
CrypTen's own ``_logging`` decorator, so rounds and bytes are counted exactly as before; ``_TtpDist`` stands in
for ``torch.distributed`` inside the TTP provider. Call :func:`configure` with the process's
:class:`~mpcgen.mpc.links.LinkSettings` before ``crypten.init()`` (:func:`mpcgen.mpc.launch.init_party` does).

Groups are the ones CrypTen creates: ``main`` (the computing parties), ``ttp`` (everyone) and ``ttp_comm`` (rank 0
and the dealer). Messages of different groups between the same two parties are kept apart, as gloo does.
"""

from __future__ import annotations

import pickle
from typing import Any

import torch
from torch.distributed import ReduceOp

from mpcgen.errors import MpcgenError
import mpcgen.mpc.compat  # noqa: F401  (CrypTen needs its import shim first)
from mpcgen.mpc.links import LinkError, LinkSettings, Mesh, connect

from crypten.common import serial  # noqa: E402  (after compat: crypten needs its shim)
from crypten.communicator.communicator import Communicator, _logging  # noqa: E402

_settings: LinkSettings | None = None


def configure(settings: LinkSettings | None) -> None:
    """The links the next ``crypten.init()`` of this process builds (None: forget them)."""
    global _settings
    _settings = settings


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    return memoryview(tensor.detach().contiguous().numpy()).cast("B")


def _view(buf: bytearray, like: torch.Tensor, peer: str) -> torch.Tensor:
    expected = like.numel() * like.element_size()
    if len(buf) != expected:
        raise LinkError(f"{peer} sent {len(buf)} bytes where this party expected {expected} "
                        f"({tuple(like.shape)} {like.dtype}): the parties disagree on the computation")
    if expected == 0:
        return torch.empty_like(like)
    return torch.frombuffer(buf, dtype=like.dtype).view(like.shape)


class _Work:
    """What ``isend`` / ``irecv`` return: ``wait()`` completes the transfer (CrypTen only ever waits)."""

    def __init__(self, finish: Any) -> None:
        self._finish, self._done = finish, False

    def wait(self) -> bool:
        if not self._done:
            self._finish()
            self._done = True
        return True


class SocketCommunicator(Communicator):
    """CrypTen's communicator on mpcgen's party links (one per process, like ``DistributedCommunicator``)."""

    BYTES_PER_ELEMENT = 8
    instance: "SocketCommunicator | None" = None

    def __init__(self, settings: LinkSettings, init_ttp: bool) -> None:
        expected = settings.parties
        world_size = expected - (1 if init_ttp else 0)
        if world_size < 1:
            raise MpcgenError(f"{expected} parties cannot include a dealer and a computing party")
        self.settings = settings
        self.rank = settings.rank
        self.world_size = world_size
        self.ttp_initialized = init_ttp
        self.main_group = tuple(range(world_size))
        self.ttp_group = tuple(range(expected))
        self.ttp_comm_group = (0, expected - 1)
        # Without a dealer the three groups are the same two ranks: the first id wins, on both sides alike.
        self._groups: dict[tuple[int, ...], int] = {}
        for gid, group in enumerate((self.main_group, self.ttp_group, self.ttp_comm_group)):
            self._groups.setdefault(group, gid)
        self._name = f"rank{self.rank}"
        self.reset_communication_stats()
        self.mesh: Mesh = connect(settings)

    # ---- lifecycle (classmethods, as crypten.communicator calls them)

    @classmethod
    def is_initialized(cls) -> bool:
        return cls.instance is not None

    @classmethod
    def initialize(cls, rank: int = 0, world_size: int = 1, init_ttp: bool = False) -> None:
        """Connect this process's links (``rank`` / ``world_size`` are CrypTen's defaults, unused: as for
        ``DistributedCommunicator``, the process's own settings decide)."""
        if _settings is None:
            raise MpcgenError("no party links configured: join a computation with mpcgen.mpc.launch.init_party()")
        cls.instance = cls(_settings, init_ttp)

    @classmethod
    def get(cls) -> "SocketCommunicator | None":
        return cls.instance

    @classmethod
    def shutdown(cls) -> None:
        comm, cls.instance = cls.instance, None
        if comm is None:
            return
        try:
            # A session that lost a party ends without "terminate": the dealer then reports the server's end as a
            # failure instead of a normal stop.
            healthy = all(link.error is None and not link.peer_closed for link in comm.mesh.links.values())
            if comm.rank == 0 and comm.ttp_initialized and healthy:
                comm._send_bytes(pickle.dumps("terminate"), comm.get_ttp_rank(), comm.ttp_group)
        except LinkError:
            pass  # the dealer is gone already: nothing to stop
        finally:
            comm.mesh.close()

    # ---- transport

    def _gid(self, group: Any) -> int:
        group = self.main_group if group is None else tuple(group)
        try:
            return self._groups[group]
        except KeyError:
            raise MpcgenError(f"unknown communication group {group}") from None

    def _members(self, group: Any) -> tuple[int, ...]:
        return self.main_group if group is None else tuple(group)

    def _send_bytes(self, payload: Any, dst: int, group: Any = None) -> None:
        self.mesh.wait(self.mesh.send(dst, self._gid(group), payload), dst)

    def _receive(self, like: torch.Tensor, src: int, group: Any = None, out: torch.Tensor | None = None,
                 add: Any = None) -> torch.Tensor:
        """The next tensor from ``src`` shaped like ``like``: copied into ``out`` (default a new tensor), or
        combined into it with ``add(out, received)``; the receive buffer goes back to the links' pool."""
        buf = self.mesh.recv(src, self._gid(group))
        view = _view(buf, like, self.settings.who(src))
        if add is not None and out is not None:
            add(out, view)
        elif out is not None:
            out.copy_(view)
        else:
            out = view.clone()
        self.mesh.recycle(src, buf)
        return out

    def _exchange(self, tensor: torch.Tensor, group: Any = None, add: Any = None) -> list[torch.Tensor]:
        """Send ``tensor`` to every other member of ``group`` and receive theirs: one tensor per member, or with
        ``add`` one tensor, ``tensor`` combined with every other member's."""
        members = self._members(group)
        gid = self._gid(group)
        mine = _tensor_bytes(tensor)
        pending = [(r, self.mesh.send(r, gid, mine)) for r in members if r != self.rank]
        if add is not None:
            total = tensor.clone()
            for r in members:
                if r != self.rank:
                    self._receive(tensor, r, group, out=total, add=add)
            out = [total]
        else:
            out = [tensor if r == self.rank else self._receive(tensor, r, group) for r in members]
        for r, item in pending:
            self.mesh.wait(item, r)
        return out

    # ---- CrypTen's API

    @_logging
    def send(self, tensor: torch.Tensor, dst: int) -> None:
        self._send_bytes(_tensor_bytes(tensor), dst)

    @_logging
    def recv(self, tensor: torch.Tensor, src: int | None = None) -> torch.Tensor:
        if src is None:
            raise MpcgenError("recv from any source is not supported: name the source rank")
        return self._receive(tensor, src)

    @_logging
    def isend(self, tensor: torch.Tensor, dst: int) -> _Work:
        item = self.mesh.send(dst, self._gid(None), _tensor_bytes(tensor))
        return _Work(lambda: self.mesh.wait(item, dst))

    @_logging
    def irecv(self, tensor: torch.Tensor, src: int | None = None) -> _Work:
        if src is None:
            raise MpcgenError("irecv from any source is not supported: name the source rank")
        return _Work(lambda: self._receive(tensor, src, out=tensor))

    @_logging
    def scatter(self, scatter_list: list[torch.Tensor], src: int, size: Any = None, device: Any = None
                ) -> torch.Tensor:
        if src == self.rank:
            for r in self.main_group:
                if r != self.rank:
                    self._send_bytes(_tensor_bytes(scatter_list[r]), r)
            return scatter_list[self.rank]
        if size is None:
            size = scatter_list[self.rank].size()
        return self._receive(torch.empty(size=size, dtype=torch.long), src)

    def _reduce_many(self, tensors: list[torch.Tensor], op: Any, dst: int | None) -> list[torch.Tensor | None]:
        if op == ReduceOp.SUM:
            add = torch.Tensor.add_  # int64 wraps around: the ring arithmetic of the shares
        elif op == ReduceOp.BXOR:
            add = torch.Tensor.bitwise_xor_
        else:
            raise MpcgenError(f"reduce op {op} is not supported (CrypTen uses SUM and BXOR)")
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            if dst is None:
                out.append(self._exchange(tensor, add=add)[0])
            elif dst == self.rank:
                total = tensor.clone()
                for r in self.main_group:
                    if r != self.rank:
                        self._receive(tensor, r, out=total, add=add)
                out.append(total)
            else:
                self._send_bytes(_tensor_bytes(tensor), dst)
                out.append(None)
        return out

    @_logging
    def reduce(self, input: Any, dst: int, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        result = self._reduce_many(list(input) if batched else [input], op, dst)
        if dst != self.rank:
            return None
        return result if batched else result[0]

    @_logging
    def all_reduce(self, input: Any, op: Any = ReduceOp.SUM, batched: bool = False) -> Any:
        result = self._reduce_many(list(input) if batched else [input], op, None)
        return result if batched else result[0]

    @_logging
    def gather(self, tensor: torch.Tensor, dst: int) -> list[Any]:
        if dst != self.rank:
            self._send_bytes(_tensor_bytes(tensor), dst)
            return [None]
        return [tensor.clone() if r == self.rank else self._receive(tensor, r) for r in self.main_group]

    @_logging
    def all_gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        return [t.clone() if r == self.rank else t for r, t in zip(self.main_group, self._exchange(tensor))]

    @_logging
    def broadcast(self, input: Any, src: int, group: Any = None, batched: bool = False) -> Any:
        for tensor in (input if batched else [input]):
            if src == self.rank:
                payload = _tensor_bytes(tensor)
                for r in self._members(group):
                    if r != self.rank:
                        self._send_bytes(payload, r, group)
            else:
                self._receive(tensor, src, group, out=tensor)
        return input

    def _barrier(self, group: Any = None) -> None:
        token = torch.zeros(1, dtype=torch.long)
        self._exchange(token, group)

    @_logging
    def barrier(self) -> None:
        self._barrier()

    @_logging
    def send_obj(self, obj: Any, dst: int, group: Any = None) -> None:
        self._send_bytes(pickle.dumps(obj), dst, group)

    @_logging
    def recv_obj(self, src: int, group: Any = None) -> Any:
        return serial.restricted_loads(bytes(self.mesh.recv(src, self._gid(group))))

    @_logging
    def broadcast_obj(self, obj: Any, src: int, group: Any = None) -> Any:
        if self.rank == src:
            if obj is None:
                raise MpcgenError("the source of a broadcast must provide the object")
            buf = pickle.dumps(obj)
            for r in self._members(group):
                if r != self.rank:
                    self._send_bytes(buf, r, group)
            return obj
        return serial.restricted_loads(bytes(self.mesh.recv(src, self._gid(group))))

    def get_world_size(self) -> int:
        return self.world_size

    def get_rank(self) -> int:
        return self.rank

    def get_ttp_rank(self) -> int:
        return self.world_size

    def set_name(self, name: str) -> None:
        self._name = name

    def get_name(self) -> str:
        return self._name

    def get_distributed_backend(self) -> str:
        return "mpcgen-tls" if self.settings.tls is not None else "mpcgen-tcp"


class _TtpDist:
    """The three ``torch.distributed`` calls of CrypTen's TTP provider (seeds to each party, then a barrier)."""

    @staticmethod
    def isend(tensor: torch.Tensor, dst: int, group: Any = None) -> _Work:
        comm = SocketCommunicator.instance
        assert comm is not None
        item = comm.mesh.send(dst, comm._gid(group), _tensor_bytes(tensor))
        return _Work(lambda: comm.mesh.wait(item, dst))

    @staticmethod
    def irecv(tensor: torch.Tensor, src: int, group: Any = None) -> _Work:
        comm = SocketCommunicator.instance
        assert comm is not None
        return _Work(lambda: comm._receive(tensor, src, group, out=tensor))

    @staticmethod
    def barrier(group: Any = None) -> None:
        comm = SocketCommunicator.instance
        assert comm is not None
        comm._barrier(group)


def install() -> None:
    """Make CrypTen use :class:`SocketCommunicator` (idempotent; in-process thread mode is left as it is)."""
    import crypten.communicator as cc
    from crypten.mpc.provider import ttp_provider

    cc.DistributedCommunicator = SocketCommunicator  # crypten.communicator.get/_init/uninit look it up per call
    ttp_provider.dist = _TtpDist


__all__ = ["SocketCommunicator", "configure", "install"]
