"""Joining a computation: the rendezvous at rank 0, identity checks, and one link to every other party.

See :mod:`mpcgen.mpc.links` for the design. Every check happens before any share, seed or setting is exchanged:
TLS 1.3 handshake with a certificate chaining to the deployment's CA, the certificate's common name equal to the
role of the claimed rank, the link protocol's version, the number of parties, and for the direct links between
non-server parties the session id that rank 0 handed out (so a party of another session on the same host cannot
cross over). A refused peer is told why; the refusing party logs it and goes on waiting until its connect timeout.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mpcgen.errors import MpcgenError
from mpcgen.mpc.links import PROTOCOL, LinkError, LinkSettings, Mesh, _close_quietly, _Link, _os_reason

logger = logging.getLogger(__name__)

_HELLO_MAX = 1 << 16
_HANDSHAKE_S = 10.0  # a peer gets this long to prove its identity, so a silent connection cannot stall the rest


def join(settings: LinkSettings) -> Mesh:
    """Join the computation described by ``settings``: rendezvous, identity checks, then a link to every party."""
    if not 0 <= settings.rank < settings.parties:
        raise MpcgenError(f"rank {settings.rank} is not one of the {settings.parties} parties")
    deadline = time.monotonic() + settings.connect_timeout
    if settings.rank == 0:
        return _host(settings, deadline)
    return _join(settings, deadline)


def _rendezvous_address(settings: LinkSettings, deadline: float) -> tuple[str, int]:
    url = urlparse(settings.rendezvous)
    if url.scheme == "tcp":
        return url.hostname or "127.0.0.1", int(url.port or 0)
    if url.scheme != "file":
        raise MpcgenError(f"rendezvous {settings.rendezvous!r}: use tcp://HOST:PORT or file:///abs/path")
    path = Path(url.path)
    while True:  # rank 0 writes its address there once it listens
        try:
            host, port = path.read_text().strip().rsplit(":", 1)
            return host, int(port)
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise LinkError(f"the server never announced itself at {settings.rendezvous} within "
                                f"{settings.connect_timeout:g} s") from None
            time.sleep(0.05)


def _host(settings: LinkSettings, deadline: float) -> Mesh:
    """Rank 0: listen at the rendezvous, admit every other party, hand out the directory."""
    from mpcgen.io import write_text

    url = urlparse(settings.rendezvous)
    host, port = ("127.0.0.1", 0) if url.scheme == "file" else _rendezvous_address(settings, deadline)
    listener = _listen(host if host not in ("*",) else "0.0.0.0", port, settings.rendezvous)
    if url.scheme == "file":
        write_text(Path(url.path), "%s:%d" % listener.getsockname()[:2])
    session = os.urandom(16).hex()
    links: dict[int, _Link] = {}
    try:
        hellos = _accept(listener, settings, links, range(1, settings.parties), None, deadline,
                         f"never joined at {settings.rendezvous}")
        addresses = {r: hello.get("listen") for r, hello in hellos.items()}
        for link in links.values():
            _send_json(link.sock, {"session": session, "listen": {str(r): a for r, a in addresses.items()}})
    except BaseException as err:
        for link in links.values():  # tell the parties that did join why there is no session
            try:
                _send_json(link.sock, {"error": str(err) or type(err).__name__})
            except OSError:
                pass
            _close_quietly(link.sock)
        raise
    finally:
        _close_quietly(listener)
    return Mesh(settings, links, session)


def _join(settings: LinkSettings, deadline: float) -> Mesh:
    """Rank r > 0: join at rank 0, learn the others' addresses, dial the lower ranks, accept the higher ones."""
    rank = settings.rank
    links: dict[int, _Link] = {}
    listener: socket.socket | None = None
    try:
        host, port = _rendezvous_address(settings, deadline)
        sock = _dial(host, port, 0, settings, deadline)
        link0 = _Link(sock, 0, settings.names[0], f"{host}:{port}")
        links[0] = link0
        advertise = None
        if rank < settings.parties - 1:  # some higher rank will dial this party
            local_ip = sock.getsockname()[0]
            lhost, _, lport = (settings.listen or "").partition(":")
            listener = _listen(lhost or local_ip, int(lport or 0), f"--listen {settings.listen or ''}")
            advertise = f"{lhost or local_ip}:{listener.getsockname()[1]}"
        _send_json(sock, {"protocol": PROTOCOL, "rank": rank, "parties": settings.parties, "listen": advertise})
        _expect_ok(sock, link0, deadline)
        # The server sends the directory, or why there is none, when its own connect timeout ends: wait past ours.
        directory = _recv_json(sock, link0, deadline + _HANDSHAKE_S)
        if "error" in directory:
            raise LinkError(f"the server stopped before the session began: {directory['error']}")
        session = directory["session"]
        for lower in range(1, rank):
            address = directory["listen"].get(str(lower))
            if not address:
                raise LinkError(f"{settings.who(lower)} gave the server no address to reach it at")
            lhost, _, lport = address.rpartition(":")
            peer = _dial(lhost, int(lport), lower, settings, deadline, session=session)
            links[lower] = _Link(peer, lower, settings.names[lower], address)
        if listener is not None:
            _accept(listener, settings, links, range(rank + 1, settings.parties), session, deadline,
                    "never connected to this party")
    except BaseException:
        for link in links.values():
            _close_quietly(link.sock)
        raise
    finally:
        if listener is not None:
            _close_quietly(listener)
    return Mesh(settings, links, session)


def _accept(listener: socket.socket, settings: LinkSettings, links: dict[int, _Link], expected: range,
            session: str | None, deadline: float, missing_why: str) -> dict[int, dict[str, Any]]:
    """Admit the ``expected`` ranks on ``listener`` into ``links`` (refusing and logging any other connection)
    until all have come or ``deadline`` passes; returns their hellos."""
    hellos: dict[int, dict[str, Any]] = {}
    refused: list[str] = []
    while any(r not in links for r in expected):
        if time.monotonic() >= deadline:
            missing = ", ".join(settings.names[r] for r in expected if r not in links)
            extra = f"; refused: {'; '.join(refused)}" if refused else ""
            raise LinkError(f"{missing} {missing_why} within {settings.connect_timeout:g} s{extra}")
        listener.settimeout(max(0.05, min(1.0, deadline - time.monotonic())))
        try:
            raw, peer = listener.accept()
        except socket.timeout:
            continue
        address = "%s:%d" % peer[:2]
        try:
            sock, hello = _admit(raw, address, settings, session, deadline)
            rank = hello["rank"]
            if rank in links:
                raise _Refused(f"a second party claims rank {rank} ({settings.names[rank]})")
            if rank not in expected:
                raise _Refused(f"rank {rank} does not connect to rank {settings.rank}")
        except _Refused as err:
            refused.append(f"{address}: {err}")
            logger.error("refused a connection from %s: %s", address, err)
            continue
        links[rank], hellos[rank] = _Link(sock, rank, settings.names[rank], address), hello
        logger.info("%s joined from %s%s", settings.who(rank), address, " (TLS)" if settings.tls else "")
    return hellos


class _Refused(Exception):
    """A connecting peer failed a check (the acceptor refuses it and goes on waiting)."""


def _listen(host: str, port: int, what: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise MpcgenError(f"port {port} on {host} is in use: choose another port in {what}") from None
        raise MpcgenError(f"cannot listen on {host}:{port} ({what}): {err.strerror}") from None
    sock.listen(16)
    return sock


def _dial(host: str, port: int, rank: int, settings: LinkSettings, deadline: float,
          session: str | None = None) -> socket.socket:
    """Connect to ``rank`` (retrying until it listens), verify it, and for a peer link say hello."""
    who = settings.who(rank)
    while True:
        try:
            raw = socket.create_connection((host, port), timeout=max(0.1, min(5.0, deadline - time.monotonic())))
            break
        except (ConnectionRefusedError, socket.timeout, OSError) as err:
            if time.monotonic() >= deadline:
                raise LinkError(f"could not reach {who} at {host}:{port} within {settings.connect_timeout:g} s: "
                                f"{_os_reason(err)}") from None
            time.sleep(0.1)
    _tune(raw)
    raw.settimeout(max(0.1, min(_HANDSHAKE_S, deadline - time.monotonic())))
    sock: socket.socket = raw
    if settings.tls is not None:
        try:
            sock = settings.tls.context(server_side=False).wrap_socket(raw)
        except ssl.SSLCertVerificationError as err:
            _close_quietly(raw)
            raise LinkError(f"refused {who} at {host}:{port}: its certificate is not signed by our CA "
                            f"({err.verify_message})") from None
        except (ssl.SSLError, OSError) as err:
            _close_quietly(raw)
            raise LinkError(f"TLS with {who} at {host}:{port} failed: {_os_reason(err)} (is it running with "
                            "--tls-cert/--tls-key/--tls-ca of this deployment?)") from None
        name = _common_name(sock)
        if name != settings.names[rank]:
            _close_quietly(sock)
            raise LinkError(f"refused the party at {host}:{port}: its certificate names {name!r}, not "
                            f"{settings.names[rank]!r}")
    if session is not None:
        link = _Link(sock, rank, settings.names[rank], f"{host}:{port}")
        _send_json(sock, {"protocol": PROTOCOL, "rank": settings.rank, "parties": settings.parties,
                          "session": session})
        _expect_ok(sock, link, deadline)
    return sock


def _admit(raw: socket.socket, address: str, settings: LinkSettings, session: str | None,
           deadline: float) -> tuple[socket.socket, dict[str, Any]]:
    """Accept one incoming connection: TLS handshake and identity, then the hello; refusals are told to the peer."""
    _tune(raw)
    raw.settimeout(max(0.1, min(_HANDSHAKE_S, deadline - time.monotonic())))
    sock: socket.socket = raw
    if settings.tls is not None:
        try:
            sock = settings.tls.context(server_side=True).wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as err:
            _close_quietly(raw)
            raise _Refused(f"it could not prove its identity ({_os_reason(err)})") from None
    try:
        hello = _recv_json(sock, None, deadline)
        problem = _check_hello(hello, settings, session)
        if problem is None and settings.tls is not None:
            name = _common_name(sock)
            if name != settings.names[hello["rank"]]:
                problem = f"its certificate names {name!r} but it claims rank {hello['rank']} " \
                          f"({settings.names[hello['rank']]})"
        if problem is not None:
            _send_json(sock, {"ok": False, "error": problem})
            raise _Refused(problem)
        _send_json(sock, {"ok": True})
    except (LinkError, OSError) as err:
        _close_quietly(sock)
        raise _Refused(str(err)) from None
    except _Refused:
        _close_quietly(sock)
        raise
    return sock, hello


def _check_hello(hello: Any, settings: LinkSettings, session: str | None) -> str | None:
    if not isinstance(hello, dict) or not isinstance(hello.get("rank"), int):
        return "its hello is malformed"
    if hello.get("protocol") != PROTOCOL:
        return f"it speaks link protocol {hello.get('protocol')}, this party {PROTOCOL} (mismatched versions)"
    if hello.get("parties") != settings.parties:
        return f"it expects {hello.get('parties')} parties, this computation has {settings.parties} " \
               "(mismatched --provider?)"
    if not 0 < hello["rank"] < settings.parties:
        return f"rank {hello['rank']} does not exist"
    if session is not None and hello.get("session") != session:
        return "it belongs to another session"
    return None


def _expect_ok(sock: socket.socket, link: _Link, deadline: float) -> None:
    reply = _recv_json(sock, link, deadline)
    if not isinstance(reply, dict) or not reply.get("ok"):
        raise LinkError(f"{link} refused this party: {reply.get('error') if isinstance(reply, dict) else reply}")


def _send_json(sock: socket.socket, obj: Any) -> None:
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_json(sock: socket.socket, link: _Link | None, deadline: float) -> Any:
    """One length-prefixed JSON message of the joining phase (blocking, until ``deadline``)."""
    peer = str(link) if link is not None else "the peer"

    def exact(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = sock.recv(n - len(buf))
            except socket.timeout:
                raise LinkError(f"{peer} did not answer within the connect timeout") from None
            except ssl.SSLError as err:
                raise LinkError(f"{peer} refused this party's certificate ({_os_reason(err)})") from None
            except OSError as err:
                chunk, reason = b"", f" ({_os_reason(err)})"
            else:
                reason = ""
            if not chunk:
                raise LinkError(f"{peer} closed the connection while joining{reason}: refused, or running with "
                                "other TLS settings than this party")
            buf += chunk
        return bytes(buf)

    head = exact(4)
    if head[0] == 0x16:  # a TLS record where a hello should be
        raise LinkError(f"{peer} speaks TLS but this party runs without it: give every party the same --tls-* "
                        "settings")
    (size,) = struct.unpack("!I", head)
    if size > _HELLO_MAX:
        raise LinkError(f"{peer} sent something other than an mpcgen hello")
    try:
        return json.loads(exact(size))
    except ValueError:
        raise LinkError(f"{peer} sent a malformed hello") from None


def _common_name(sock: socket.socket) -> str | None:
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def _tune(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # one round is often one small message
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


__all__ = ["join"]
