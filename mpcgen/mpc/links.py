"""Party links: one connection between every two parties of a computation, TLS 1.3 with a certificate per party.

CrypTen sends everything through ``torch.distributed`` (gloo), whose TCP transport has no encryption in this torch
build and whose rendezvous lets anyone who reaches the port join. This module replaces it (see
:mod:`mpcgen.mpc.communicator`, which puts CrypTen's communicator API on top):

* **Rendezvous.** Rank 0 (the server) listens at ``tcp://HOST:PORT`` (or, for local runs, on a loopback port it
  writes into a ``file://`` path). Every other party connects to it, proves who it is and says where it listens;
  once all have joined, rank 0 hands each the others' addresses and a fresh session id. Then every pair that does
  not yet have a link connects directly (the higher rank dials the lower): the dealer's randomness for the client
  never passes through the server.
* **Identity.** With :class:`TlsFiles` every link is TLS 1.3, both ends present a certificate signed by the
  deployment's CA (``python -m mpcgen.certs``), and the certificate's common name must be the role of the rank the
  peer claims (``server``, ``client``, ``dealer``). A peer that fails any check is refused before any share, seed
  or setting is exchanged; the refusing party logs it, and the refused party gets the reason. Hostnames are not
  checked: the parties are often addressed by IP, and the identity that matters is the role.
* **Faults.** Idle links carry a heartbeat (sent by a background thread, which also writes what a sender could
  not hand the kernel at once). A link that carries nothing, not even a heartbeat, for ``timeout`` seconds is
  declared dead: a party waiting on it raises :class:`LinkError` naming the peer. A long computation on the other
  side is not silence (its heartbeats go on); a killed process, a cut cable or a stopped (``SIGSTOP``) peer is.
  Frames are read by the waiting thread, from every link, so two parties sending large tensors to each other at
  once never deadlock (see :class:`Mesh`).
* **Orderly end.** Each party sends a close frame and waits (briefly) for the peers' own, so that no message in
  flight is lost to a reset and an unexpected end is told apart from a finished session.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

PROTOCOL = 1  # the hello's version: parties of different versions refuse each other
_HEADER = struct.Struct("!BBHIQ")  # protocol, kind, group, reserved, payload length
_DATA, _BEAT, _CLOSE = 1, 2, 3
_CHUNK = 1 << 22  # bytes per socket call: big enough for throughput, small enough to interleave links
_SMALL = 1 << 16  # payloads up to this size go out in one buffer with their header (one TLS record, one syscall)
_POOL_BYTES = 1 << 29  # most receive buffers kept for reuse, per link
_TICK_S = 0.25


class LinkError(MpcgenError):
    """A peer was lost, stopped answering, was refused, or broke the protocol."""


@dataclass(frozen=True)
class TlsFiles:
    """This party's certificate and key (PEM) and the deployment's CA certificate that every peer's must chain to."""

    cert: str
    key: str
    ca: str

    def __post_init__(self) -> None:
        for what, path in (("--tls-cert", self.cert), ("--tls-key", self.key), ("--tls-ca", self.ca)):
            if not Path(path).is_file():
                raise MpcgenError(f"{what} {path}: no such file")

    def context(self, server_side: bool) -> ssl.SSLContext:
        """A TLS 1.3-only context that presents our certificate and requires the peer's, signed by our CA."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        try:
            ctx.load_cert_chain(self.cert, self.key)
        except (ssl.SSLError, OSError) as err:
            raise MpcgenError(f"--tls-cert {self.cert} / --tls-key {self.key}: cannot load ({err})") from None
        try:
            ctx.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, OSError) as err:
            raise MpcgenError(f"--tls-ca {self.ca}: cannot load ({err})") from None
        ctx.check_hostname = False  # identity is the role in the certificate (checked after the handshake)
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


@dataclass(frozen=True)
class LinkSettings:
    """How one process joins: its rank, everyone's role names, where to meet, and the security and time limits."""

    rank: int
    names: tuple[str, ...]  # role name of every rank (dealer included)
    rendezvous: str  # tcp://HOST:PORT or file:///path
    tls: TlsFiles | None = None
    timeout: float = 60.0  # seconds of silence after which a link is dead
    connect_timeout: float = 60.0  # seconds for all parties to join
    listen: str | None = None  # HOST[:PORT] where this party accepts higher ranks (default: the interface to rank 0)

    @property
    def parties(self) -> int:
        return len(self.names)

    def who(self, rank: int) -> str:
        return f"the {self.names[rank]} (rank {rank})"


# ------------------------------------------------------------------------------------------------ the mesh


@dataclass
class _Outgoing:
    views: list[memoryview]
    done: threading.Event = field(default_factory=threading.Event)
    index: int = 0
    offset: int = 0


class _Link:
    """One peer: its socket and the state of the frames moving in each direction."""

    def __init__(self, sock: socket.socket, rank: int, name: str, address: str) -> None:
        self.sock, self.rank, self.name, self.address = sock, rank, name, address
        self.out: collections.deque[_Outgoing] = collections.deque()
        self.inbox: dict[int, collections.deque[bytearray]] = collections.defaultdict(collections.deque)
        self.head = bytearray(_HEADER.size)
        self.body: bytearray | None = None
        self.group = 0
        self.got = 0
        self.error: str | None = None
        self.peer_closed = False  # the peer sent its close frame: an orderly end
        self.write_blocked = False
        # Serialises socket calls: the I/O thread and a sender's fast path (TLS objects are not thread-safe).
        self.lock = threading.Lock()
        # Receive buffers handed back by the consumer, by size: MPC repeats the same shapes every step, and fresh
        # memory costs a page fault per 4 KiB on first touch (more than the copy itself on a VM).
        self.pool: collections.OrderedDict[int, list[bytearray]] = collections.OrderedDict()
        self.pool_bytes = 0
        self.last_heard = self.last_sent = time.monotonic()

    def __str__(self) -> str:
        return f"the {self.name} (rank {self.rank}, {self.address})"


class Mesh:
    """The links of one process to every other party.

    ``send`` queues a payload and returns a handle to :meth:`wait` on; ``recv`` returns the next payload from a
    peer in a group (payloads of different groups are kept apart, as gloo does). Both raise :class:`LinkError`
    once the link is dead, with the reason.

    Who moves the bytes: a sender writes its frame itself when the link is idle (most frames); what the kernel
    does not take at once, and the heartbeats, a background thread writes. Frames are read by the thread that
    waits for one (in :meth:`recv`, :meth:`wait` and :meth:`close`), from every link that has data, so no peer
    is ever blocked on this party while it waits, and a frame is in the waiter's hands without a thread switch
    (on a loaded machine each switch can cost a scheduler time slice). Between waits nothing is read: a peer's
    frames wait in the kernel's buffers, and silence is judged when this party next waits.
    """

    def __init__(self, settings: LinkSettings, links: dict[int, _Link], session: str) -> None:
        self.settings, self.links, self.session = settings, links, session
        self._stop = False
        self._wake_r, self._wake_w = socket.socketpair()  # main -> writer: new frames queued
        self._done_r, self._done_w = socket.socketpair()  # writer -> main: a queued frame went out (or failed)
        for sock in (self._wake_r, self._wake_w, self._done_r, self._done_w):
            sock.setblocking(False)
        for link in links.values():
            link.sock.setblocking(False)
        self._beat = min(5.0, settings.timeout / 4)
        self._thread = threading.Thread(target=self._run, name="mpcgen-links", daemon=True)
        self._thread.start()

    # ---- the calling thread

    def send(self, dst: int, group: int, payload: bytes | bytearray | memoryview) -> _Outgoing:
        """Queue one payload for rank ``dst``; the payload must not change until :meth:`wait` returns."""
        link = self._link(dst)
        self._check_alive(link, sending=True)
        view = memoryview(payload).cast("B")
        header = _HEADER.pack(PROTOCOL, _DATA, group, 0, view.nbytes)
        views = [memoryview(header + bytes(view))] if view.nbytes <= _SMALL else [memoryview(header), view]
        item = _Outgoing(views)
        if not link.out and link.lock.acquire(blocking=False):
            try:  # an idle link takes the frame now, from this thread
                link.out.append(item)
                self._write(link)
            finally:
                link.lock.release()
            if item.done.is_set():
                return item
        else:
            link.out.append(item)
        _poke(self._wake_w)
        return item

    def wait(self, item: _Outgoing, dst: int) -> None:
        """Block until ``item`` is handed to the kernel (reading meanwhile, so that peers never wait on us)."""
        link = self._link(dst)
        while not item.done.is_set():
            self._check_alive(link, sending=True)
            self._pump()
        if link.error is not None and item.index < len(item.views):
            raise LinkError(f"lost the link to {link}: {link.error}")

    def recv(self, src: int, group: int) -> bytearray:
        """The next payload from rank ``src`` in ``group``."""
        link = self._link(src)
        inbox = link.inbox[group]
        while not inbox:
            self._check_alive(link, sending=False)
            self._pump()
        return inbox.popleft()

    def recycle(self, src: int, buf: bytearray) -> None:
        """Hand a payload from :meth:`recv` back once it is no longer used: a later frame of its size reuses it."""
        if len(buf) < _SMALL:
            return  # small buffers are cheap to make
        link = self._link(src)
        link.pool.setdefault(len(buf), []).append(buf)
        link.pool.move_to_end(len(buf))
        link.pool_bytes += len(buf)
        while link.pool_bytes > _POOL_BYTES and link.pool:  # forget the sizes unused the longest
            size, spares = link.pool.popitem(last=False)
            link.pool_bytes -= size * len(spares)

    def close(self, linger: float | None = None) -> None:
        """End the session: a close frame to every live peer, wait up to ``linger`` s for theirs, stop, close."""
        if self._stop:
            return
        linger = min(10.0, self.settings.timeout) if linger is None else linger
        for link in self.links.values():
            if link.error is None:
                link.out.append(_Outgoing([memoryview(_HEADER.pack(PROTOCOL, _CLOSE, 0, 0, 0))]))
        _poke(self._wake_w)
        deadline = time.monotonic() + linger
        while time.monotonic() < deadline and not all(
                (link.peer_closed or link.error is not None) for link in self.links.values()):
            self._pump()
        for link in self.links.values():
            if not link.peer_closed and link.error is None:
                logger.warning("%s did not end the session within %.0f s of this party", link, linger)
        self._stop = True
        _poke(self._wake_w)
        self._thread.join(5.0)
        for sock in [link.sock for link in self.links.values()] + [self._wake_r, self._wake_w, self._done_r,
                                                                   self._done_w]:
            _close_quietly(sock)

    def _link(self, rank: int) -> _Link:
        try:
            return self.links[rank]
        except KeyError:
            raise LinkError(f"no link to rank {rank} (ranks {sorted(self.links)})") from None

    def _check_alive(self, link: _Link, *, sending: bool) -> None:
        if self._stop:
            raise LinkError("the links of this party are closed")
        if link.error is not None:
            raise LinkError(f"lost the link to {link}: {link.error}")
        if link.peer_closed:
            verb = "sending to" if sending else "expecting a message from"
            raise LinkError(f"{link} ended the session while this party was still {verb} it")

    def _pump(self) -> None:
        """Wait (at most a tick) until a link has data or a queued frame went out; read what arrived; judge
        silence."""
        live = [link for link in self.links.values() if link.error is None]
        try:
            ready, _, _ = select.select([link.sock for link in live] + [self._done_r], [], [], _TICK_S)
        except (OSError, ValueError):  # a socket closed under us: its link's error says why
            ready = []
        for sock in ready:
            if sock is self._done_r:
                _drain(self._done_r)
                continue
            link = next(link for link in live if link.sock is sock)
            with link.lock:
                self._read(link)
        now = time.monotonic()
        for link in live:
            if link.error is None and not link.peer_closed and now - link.last_heard > self.settings.timeout:
                self._fail(link, f"nothing received for {self.settings.timeout:g} s, not even a heartbeat (the "
                                 "link is down, or the party is stopped or overloaded)")

    # ---- both threads (under the link's lock)

    def _fail(self, link: _Link, why: str) -> None:
        if link.error is None:
            link.error = why
            logger.debug("link to %s failed: %s", link, why)
        for item in list(link.out):
            item.done.set()
        link.out.clear()
        _poke(self._done_w)

    def _write(self, link: _Link) -> None:
        while link.out:
            item = link.out[0]
            view = item.views[item.index]
            try:
                # After a would-block, TLS needs the same bytes again: the same offset and length are retried.
                sent = link.sock.send(view[item.offset:item.offset + _CHUNK])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                link.write_blocked = True
                return
            except (OSError, ssl.SSLError) as err:
                self._fail(link, _os_reason(err))
                return
            link.last_sent = time.monotonic()
            item.offset += sent
            if item.offset >= view.nbytes:
                item.index, item.offset = item.index + 1, 0
                if item.index == len(item.views):
                    link.out.popleft()
                    item.done.set()
                    if threading.current_thread() is self._thread:
                        _poke(self._done_w)
        link.write_blocked = False

    def _read(self, link: _Link) -> None:
        while link.error is None:
            if link.body is None:
                target, want = memoryview(link.head)[link.got:], _HEADER.size - link.got
            else:
                target, want = memoryview(link.body)[link.got:], min(_CHUNK, len(link.body) - link.got)
            try:
                n = link.sock.recv_into(target, want)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                return
            except (OSError, ssl.SSLError) as err:
                self._fail(link, _os_reason(err))
                return
            if n == 0:
                self._fail(link, "it has ended the session" if link.peer_closed else
                           "it closed the connection without ending the session (its process exited or was killed)")
                return
            link.last_heard = time.monotonic()
            link.got += n
            if link.body is None and link.got == _HEADER.size:
                version, kind, group, _, length = _HEADER.unpack(link.head)
                link.got = 0
                if version != PROTOCOL or kind not in (_DATA, _BEAT, _CLOSE):
                    self._fail(link, f"it sent a malformed frame (version {version}, kind {kind})")
                    return
                if kind == _CLOSE:
                    link.peer_closed = True
                elif kind == _DATA:
                    spare = link.pool.get(length)
                    if spare:
                        body = spare.pop()
                        link.pool_bytes -= length
                    else:
                        body = bytearray(length)
                    link.group, link.body = group, body
                    if length == 0:
                        self._deliver(link)
            elif link.body is not None and link.got == len(link.body):
                self._deliver(link)

    @staticmethod
    def _deliver(link: _Link) -> None:
        link.inbox[link.group].append(link.body)  # type: ignore[arg-type]
        link.body, link.got = None, 0

    # ---- the writer thread

    def _run(self) -> None:
        """Write what senders could not, and heartbeats on idle links, until :meth:`close`."""
        try:
            while not self._stop:
                pending = [link for link in self.links.values() if link.error is None and link.out]
                try:
                    _, writable, _ = select.select([self._wake_r], [link.sock for link in pending], [], _TICK_S)
                except (OSError, ValueError):
                    writable = []
                _drain(self._wake_r)
                for link in pending:
                    if link.sock in writable or not link.write_blocked:
                        with link.lock:
                            self._write(link)
                now = time.monotonic()
                for link in self.links.values():
                    if link.error is None and not link.peer_closed and not link.out \
                            and now - link.last_sent > self._beat:
                        link.out.append(_Outgoing([memoryview(_HEADER.pack(PROTOCOL, _BEAT, 0, 0, 0))]))
        except BaseException as err:  # noqa: BLE001 - a bug here must fail the waiters, not hang them
            logger.exception("party links: writer thread failed")
            for link in self.links.values():
                self._fail(link, f"this party's writer thread failed ({type(err).__name__}: {err})")


def _poke(sock: socket.socket) -> None:
    try:
        sock.send(b"x")
    except OSError:
        pass  # already poked (buffer full) or closing


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def connect(settings: LinkSettings) -> Mesh:
    """Join the computation described by ``settings``: rendezvous, identity checks, then a link to every party
    (:mod:`mpcgen.mpc.joining`)."""
    from mpcgen.mpc.joining import join

    return join(settings)


def _os_reason(err: BaseException) -> str:
    """A short reason for a socket or TLS failure, for messages that name the peer."""
    if isinstance(err, ssl.SSLError):
        return getattr(err, "reason", None) or str(err)
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return str(err) or type(err).__name__


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


__all__ = ["LinkError", "LinkSettings", "Mesh", "PROTOCOL", "TlsFiles", "connect"]
