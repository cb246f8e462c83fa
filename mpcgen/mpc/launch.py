"""Start the parties of one secure computation: locally as processes, or one party per host.

Roles: rank 0 is the **server** (holds the weights), rank 1 the **client** (holds the prompt), and with the ``ttp``
provider rank ``world_size`` is the **dealer** (CrypTen's ``TTPServer``: it hands out correlated randomness and
never sees inputs). :func:`init_party` is the one way a process joins a computation; the local launcher
:func:`run_parties` and the separate-host entry point ``python -m mpcgen.cli.party`` both go through it. The
parties talk over :mod:`mpcgen.mpc.links` (TLS 1.3 with a certificate per party, or plaintext on loopback), not
over ``torch.distributed``.

Local processes are started with ``forkserver``: ``fork`` would copy the caller's threads and any CrypTen
state into the parties (CrypTen's own launcher has to ``uninit`` around its forks for that
reason), while ``spawn`` re-imports torch and CrypTen in every party of every launch (seconds each on a small
machine). The fork server is a clean process that imports torch and CrypTen once and then forks each party.
The price is the one ``spawn`` also has: ``fn`` must be importable (a module-level function).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import socket
import tempfile
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import urlparse

import torch

from mpcgen.errors import MpcgenError
from mpcgen.mpc import communicator, fixed
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.links import LinkSettings, TlsFiles
from mpcgen.mpc.roles import DEFAULT_LINK_TIMEOUT_S, DEFAULT_TIMEOUT_S, PROVIDERS, ROLES, SERVER, check_provider, rank_role, role_rank

logger = logging.getLogger(__name__)

# CrypTen's approximation settings that every party uses (they must agree across parties).
# - sqrt_nr_iters 3 -> 12: CrypTen's inverse square root (exact LayerNorm/RMSNorm) starts its Newton iteration from
#   an initial guess that is accurate only for variances in ~[1e-2, 1e2]. 6 iterations cut the vanilla/mpcformer
#   forward error on random test models from 4.4e-2 to ~1e-2, but a scratch-trained GPT-2's first LayerNorm sees
#   variances ~1e-3 (small token embeddings): there 6 iterations left ~1.1 of logit error and changed 9 of 24 greedy
#   generations, while 12 are accurate down to ~3e-4 and made all 24 equal to plaintext, for ~4 more rounds a norm.
FUNCTION_SETTINGS: dict[str, object] = {"sqrt_nr_iters": 12, "reciprocal_all_pos": True}

DEFAULT_CONNECT_TIMEOUT_S = 60.0
_GRACE_S = 1.0  # after a first failure, how long to wait for the other parties' own error reports
_KILL_AFTER_S = 3.0  # SIGTERM, then SIGKILL if a party is still alive this much later


# ----------------------------------------------------------------------------------------------------------------
# One party


def _check_rendezvous(rendezvous: str, rank: int) -> None:
    """Validate a ``tcp://HOST:PORT`` or ``file:///path`` address; on the store host, check the port is free."""
    url = urlparse(rendezvous)
    if url.scheme == "file":
        if not url.path or not os.path.isdir(os.path.dirname(url.path) or "/"):
            raise MpcgenError(f"rendezvous {rendezvous!r}: the folder of the file must exist (file:///abs/path)")
        return
    if url.scheme != "tcp":
        raise MpcgenError(f"rendezvous {rendezvous!r}: use tcp://HOST:PORT or file:///abs/path")
    try:
        host, port = url.hostname, url.port
    except ValueError as err:  # a port that is not a number
        raise MpcgenError(f"rendezvous {rendezvous!r}: {err}") from None
    if not host or not port:
        raise MpcgenError(f"rendezvous {rendezvous!r}: give both host and port, e.g. tcp://127.0.0.1:29500")
    if rank != SERVER:
        return  # only rank 0 listens for the rendezvous; the others connect to it
    # Bind-test the port so that "in use" is a one-line error before any process starts. The same options as the
    # real listener (mpcgen.mpc.joining): without SO_REUSEADDR the last session's TIME_WAIT sockets would read as
    # "in use" although the listener could bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("" if host in ("0.0.0.0", "*") else host, port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise MpcgenError(f"port {port} on {host} is in use: choose another port in --rendezvous") from None
            raise MpcgenError(f"cannot listen on {host}:{port} for the rendezvous: {err.strerror}") from None


def check_rendezvous(rendezvous: str, rank: int = SERVER) -> None:
    """Raise :class:`MpcgenError` for a malformed rendezvous address or, on the rank that hosts it, a port in use
    (so a launcher can fail with one line before it starts any process)."""
    _check_rendezvous(rendezvous, rank)


def init_party(
    role: str,
    rank: int,
    world_size: int,
    rendezvous: str,
    provider: str = "ttp",
    *,
    timeout: float = DEFAULT_LINK_TIMEOUT_S,
    connect_timeout: float | None = None,
    tls: TlsFiles | None = None,
    listen: str | None = None,
    insecure: bool = False,
) -> None:
    """Join a secure computation in this process: connect the party links (:mod:`mpcgen.mpc.links`), configure
    CrypTen and ``crypten.init()``; a computing party then installs its fixed-weight session
    (:func:`mpcgen.mpc.fixed.install`; the dealer serves its requests instead, :func:`serve_dealer`).
    :func:`shutdown_party` undoes both.

    Args:
        role: ``"server"`` (rank 0), ``"client"`` (rank 1) or ``"dealer"`` (rank ``world_size``, ``ttp`` only).
        rank: this process's rank; must match the role.
        world_size: number of computing parties (the dealer is not counted, as in CrypTen).
        rendezvous: ``tcp://HOST:PORT`` (rank 0 listens there) or ``file:///abs/path`` (one host: rank 0 listens
            on a loopback port and writes it there).
        provider: ``"ttp"`` (dealer process) or ``"tfp"`` (parties make their own triples; insecure).
        timeout: seconds of silence (not even a heartbeat) after which a peer counts as lost.
        connect_timeout: seconds for every party to join (default ``timeout``).
        tls: this party's certificate, key and the deployment's CA: every link is then TLS 1.3 with mutual
            authentication, and each peer's certificate must name its role.
        listen: ``HOST[:PORT]`` where this party accepts the parties that dial it (default: the address it reaches
            the server from, a free port).
        insecure: allow plaintext links to another host (a warning is logged); without it a ``tcp://`` rendezvous
            on a non-loopback address needs ``tls``.
    """
    check_provider(provider)
    if role != "dealer" and role in ROLES and role_rank(role, world_size) != rank:
        raise MpcgenError(f"role {role!r} runs as rank {role_rank(role, world_size)}, not {rank}")
    if role == "dealer":
        if provider != "ttp":
            raise MpcgenError("a dealer process is only used with --provider ttp")
        if rank != world_size:
            raise MpcgenError(f"the dealer runs as rank {world_size} (= world size), not {rank}")
    elif role not in ROLES:
        role_rank(role, world_size)  # raises the error listing the roles
    if crypten.is_initialized():
        raise MpcgenError("CrypTen is already initialised in this process: call shutdown_party() first")
    _check_rendezvous(rendezvous, rank)
    check_security(rendezvous, tls, insecure, role)

    parties = world_size + (1 if provider == "ttp" else 0)
    names = tuple(rank_role(r, world_size) for r in range(parties))
    communicator.install()
    communicator.configure(LinkSettings(rank=rank, names=names, rendezvous=rendezvous, tls=tls, timeout=timeout,
                                        connect_timeout=timeout if connect_timeout is None else connect_timeout,
                                        listen=listen))
    crypten.cfg.mpc.provider = PROVIDERS[provider]
    for key, value in FUNCTION_SETTINGS.items():
        setattr(crypten.cfg.functions, key, value)
    # The TTP server seeds the generators it shares with each party from torch's global RNG, and TFP draws triples
    # from it: left at torch's fixed default seed, another party could predict them. Seed it from the OS instead.
    torch.manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
    logger.info("%s (rank %d of %d, provider %s) joining at %s%s", role, rank, world_size, provider, rendezvous,
                " over TLS" if tls else "")
    try:
        crypten.init()
    finally:
        communicator.configure(None)
    if role != "dealer":
        fixed.uninstall()  # a session left from an earlier computation of this process (its dealer is gone)
        fixed.install()  # one session per computation: fresh keys, counters and masks


def check_security(rendezvous: str, tls: TlsFiles | None, insecure: bool, role: str = "party") -> None:
    """Refuse plaintext links to other hosts unless ``insecure`` (then warn): loopback and ``file://`` are local."""
    if tls is not None:
        return
    url = urlparse(rendezvous)
    host = url.hostname if url.scheme == "tcp" else "127.0.0.1"
    local = host in ("localhost", "127.0.0.1", "::1") or (host or "").startswith("127.")
    if local:
        return
    if not insecure:
        raise MpcgenError(f"rendezvous {rendezvous} reaches other hosts: give --tls-cert/--tls-key/--tls-ca (see "
                          "python -m mpcgen.certs), or --insecure to send shares and seeds in plaintext")
    logger.warning("%s: INSECURE: links to other hosts carry shares, seeds and results in plaintext (--insecure)",
                   role)


def shutdown_party() -> None:
    """Leave the computation (rank 0 also tells the dealer to stop) and end this process's fixed-weight session
    (CrypTen's product functions are restored); safe to call when not initialised."""
    try:
        if crypten.is_initialized():
            crypten.uninit()
    finally:
        fixed.uninstall()


def serve_dealer() -> dict[str, float]:
    """Run the TTP server in this (initialised, dealer) process until rank 0 shuts down: CrypTen's, plus the
    fixed-weight requests (:class:`mpcgen.mpc.fixed.FixedTTPServer`, which holds this session's masks).

    Returns the dealer's own communication counters (what it sent to and received from the parties).
    """
    crypten.cfg.communicator.verbose = True
    crypten.communicator.get().reset_communication_stats()
    with warnings.catch_warnings():
        # TTPServer calls crypten.init() itself; we already did (with our timeout and checks).
        warnings.filterwarnings("ignore", message="CrypTen is already initialized")
        fixed.FixedTTPServer()
    return dict(crypten.communicator.get().get_communication_stats())


# ----------------------------------------------------------------------------------------------------------------
# Local launcher


@dataclass
class _Party:
    """Bookkeeping for one launched process."""

    rank: int
    role: str
    process: Any
    conn: Any
    state: str = "starting"  # starting -> ready -> done | failed
    result: Any = None
    why: str = ""
    order: float = field(default=0.0)  # when it failed, to report the first failure first


def _send(conn: Any, kind: str, payload: Any) -> None:
    # Plain pickle, not Connection.send: torch registers reducers with multiprocessing's pickler that pass tensors
    # through shared memory owned by the sender, which is gone by the time the parent reads a party's result.
    conn.send_bytes(pickle.dumps((kind, payload), protocol=pickle.HIGHEST_PROTOCOL))


def _party_main(
    conn: Any,
    role: str,
    rank: int,
    world_size: int,
    rendezvous: str,
    provider: str,
    link_timeout: float,
    connect_timeout: float,
    tls: TlsFiles | None,
    threads: int,
    job: bytes,
) -> None:
    """Body of each launched process: init, run ``job`` (pickled ``(fn, args)``), report through ``conn``."""
    _exit_with_launcher()
    # The launcher stops the other parties with SIGTERM after a failure: unwind (closing a progress bar's line, so
    # the launcher's error starts on a line of its own) rather than vanish mid-write.
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        torch.set_num_threads(threads)
        fn, args = pickle.loads(job)
        init_party(role, rank, world_size, rendezvous, provider, timeout=link_timeout,
                   connect_timeout=connect_timeout, tls=tls)
        _send(conn, "ready", None)
        result = serve_dealer() if role == "dealer" else fn(rank, *args)
        shutdown_party()
        _send(conn, "ok", result)
    except BaseException:  # noqa: BLE001 - every failure must reach the parent, with its traceback
        try:
            _send(conn, "error", traceback.format_exc())
        finally:
            # Skip interpreter teardown: nothing of a failed party is worth flushing, and it must not linger.
            os._exit(1)


def _raise_exit(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _exit_with_launcher() -> None:
    """Exit when the launching process goes away, even if it was killed without cleaning up: the parties are
    children of the fork server, which outlives the launcher while they run, so watch the launcher itself."""
    launcher = multiprocessing.parent_process()
    if launcher is None:
        return

    def watch() -> None:
        # The sentinel is a pipe whose other end only the launcher holds: readable (EOF) once it is gone.
        multiprocessing.connection.wait([launcher.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="mpcgen-launcher-watch", daemon=True).start()


def _describe_exit(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code} without reporting a result"


def _stop(parties: Sequence[_Party]) -> None:
    """SIGTERM every live party, SIGKILL what is left after a grace period, and reap them all."""
    for party in parties:
        if party.process.is_alive():
            party.process.terminate()
    deadline = time.monotonic() + _KILL_AFTER_S
    for party in parties:
        party.process.join(max(0.0, deadline - time.monotonic()))
        if party.process.is_alive():
            party.process.kill()
            party.process.join(5.0)
    for party in parties:
        party.conn.close()
        if party.process.exitcode is not None:
            party.process.close()


# mpcgen.mpc.links' words for "the other end went away": a party failing with these reacts to another's failure.
_PEER_LOST = ("lost the link to", "ended the session while")


def _failure_report(parties: Sequence[_Party], provider: str, world_size: int) -> str:
    # Root cause first: failures that only report a lost peer come after the others, then by time of arrival.
    failed = sorted((p for p in parties if p.state == "failed"),
                    key=lambda p: (any(s in p.why for s in _PEER_LOST), p.order))
    lines = [f"secure computation failed (provider {provider}, {world_size} parties):"]
    first = failed[0] if failed else None
    for party in failed:
        after = f" [after rank {first.rank} failed]" if party is not first else ""
        lines.append(f"- rank {party.rank} ({party.role}){after} {party.why}")
    for party in parties:
        if party.state in ("starting", "ready") and first is not None:
            lines.append(f"- rank {party.rank} ({party.role}): stopped after rank {first.rank} failed")
    return "\n".join(lines)


def run_parties(
    fn: Callable[..., Any],
    *,
    provider: str = "ttp",
    args: tuple = (),
    party_args: Mapping[int, tuple] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S,
    world_size: int = 2,
    ranks: Sequence[int] | None = None,
    rendezvous: str | None = None,
    threads: int | None = None,
    tls: str | os.PathLike | Mapping[int, TlsFiles] | None = None,
    link_timeout: float = DEFAULT_LINK_TIMEOUT_S,
) -> list:
    """Run ``fn(rank, *args, *party_args[rank])`` in every computing party, each a separate process.

    With ``provider="ttp"`` a dealer process (CrypTen's TTP server) is started too. Each party is initialised with
    :func:`init_party` and shut down after ``fn`` returns.

    Args:
        fn: a module-level (importable) function; its return values must be picklable.
        provider: ``"ttp"`` or ``"tfp"``.
        args: positional arguments given to every party.
        party_args: extra positional arguments sent only to the process of that rank (e.g. the client's prompt:
            other processes never receive them).
        timeout: seconds for the whole run; then every party is stopped and :class:`MpcgenError` raised.
        connect_timeout: seconds for all processes to rendezvous.
        world_size: number of computing parties.
        ranks: the ranks to start here (default all, plus the dealer for ``ttp``); the others are expected to join
            the same ``rendezvous`` from elsewhere (``python -m mpcgen.mpc.party``).
        rendezvous: ``tcp://HOST:PORT`` or ``file://...``; default a file in a fresh temporary folder.
        threads: torch threads per process; default the CPU count shared out over the processes.
        tls: TLS 1.3 links: a folder made by ``python -m mpcgen.certs`` (each role's files are taken from it) or
            one :class:`~mpcgen.mpc.links.TlsFiles` per rank. Default: plaintext loopback links.
        link_timeout: seconds of silence after which a party counts a peer as lost.

    Returns:
        The return values of the computing parties started here, in rank order.

    Raises:
        MpcgenError: a party raised (its traceback is in the message), died, never connected or ran out of time.
            All processes started here are stopped before it is raised.
    """
    check_provider(provider)
    party_args = dict(party_args or {})
    all_ranks = list(range(world_size)) + ([world_size] if provider == "ttp" else [])
    local = sorted(all_ranks if ranks is None else ranks)
    unknown = [r for r in local + list(party_args) if r not in all_ranks]
    if unknown:
        raise MpcgenError(f"ranks {unknown} do not exist with world size {world_size} and provider {provider}")
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // len(local))
    if tls is not None and not isinstance(tls, Mapping):
        from mpcgen.certs import party_files

        tls = {r: party_files(tls, rank_role(r, world_size)) for r in local}

    tmpdir = tempfile.mkdtemp(prefix="mpcgen-rdv-")
    if rendezvous is None:
        rendezvous = f"file://{os.path.join(tmpdir, 'rendezvous')}"
    ctx = multiprocessing.get_context("forkserver")
    # Imported once in the fork server, so that each party starts in a fraction of a second.
    ctx.set_forkserver_preload(["mpcgen.mpc.compat", "mpcgen.mpc.launch"])
    parties: list[_Party] = []
    try:
        for rank in local:
            role = rank_role(rank, world_size)
            job = (None, ()) if role == "dealer" else (fn, tuple(args) + tuple(party_args.get(rank, ())))
            try:
                # Plain pickle (see _send): multiprocessing's pickler would pass every tensor as a shared-memory
                # file descriptor, and the fork server accepts only a few hundred of those.
                job_bytes = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, AttributeError, TypeError) as err:
                raise MpcgenError(
                    f"cannot send the party function or its arguments to the {role} process ({err}): "
                    "use a module-level function and picklable arguments"
                ) from err
            recv_end, send_end = ctx.Pipe(duplex=False)
            process = ctx.Process(
                target=_party_main,
                args=(send_end, role, rank, world_size, rendezvous, provider, min(link_timeout, timeout),
                      connect_timeout, (tls or {}).get(rank), threads, job_bytes),
                name=f"mpcgen-{role}",
            )
            try:
                process.start()
            finally:
                send_end.close()  # the child holds its own copy; EOF on ours then means the child is gone
            parties.append(_Party(rank, role, process, recv_end))
        _supervise(parties, timeout, connect_timeout)
        if any(p.state == "failed" for p in parties):
            raise MpcgenError(_failure_report(parties, provider, world_size))
        for party in parties:  # success: rank 0 has told the dealer to stop; let it exit on its own
            if party.role == "dealer":
                party.process.join(_KILL_AFTER_S)
        return [p.result for p in parties if p.role != "dealer"]
    finally:
        _stop(parties)
        shutil.rmtree(tmpdir, ignore_errors=True)


def _supervise(parties: list[_Party], timeout: float, connect_timeout: float) -> None:
    """Collect messages until every computing party is done, or one fails / time runs out (then mark them)."""
    start = time.monotonic()
    failed_at: float | None = None
    by_conn = {id(p.conn): p for p in parties}
    by_sentinel = {p.process.sentinel: p for p in parties}

    def fail(party: _Party, why: str) -> None:
        nonlocal failed_at
        if party.state in ("done", "failed"):
            return
        party.state, party.why, party.order = "failed", why, time.monotonic()
        failed_at = failed_at or party.order

    def receive(party: _Party) -> None:
        try:
            kind, payload = pickle.loads(party.conn.recv_bytes())
        except (EOFError, OSError):
            party.process.join(1.0)
            fail(party, _describe_exit(party.process))
            return
        if kind == "ready":
            party.state = "ready"
        elif kind == "ok":
            party.state, party.result = "done", payload
        else:
            fail(party, f"raised:\n{payload}")

    while True:
        computing = [p for p in parties if p.role != "dealer"]
        if all(p.state == "done" for p in computing):
            return
        now = time.monotonic()
        if failed_at is not None and now - failed_at >= _GRACE_S:
            return
        if now - start >= timeout:
            for p in parties:
                if p.state in ("starting", "ready"):
                    fail(p, f"did not finish within the timeout of {timeout:g} s")
            return
        if now - start >= connect_timeout:
            for p in parties:
                if p.state == "starting":
                    fail(p, f"never connected: no rendezvous with the other parties within {connect_timeout:g} s")
            if failed_at is not None:
                return
        deadlines = [start + timeout]
        if any(p.state == "starting" for p in parties):
            deadlines.append(start + connect_timeout)
        if failed_at is not None:
            deadlines.append(failed_at + _GRACE_S)
        live = [p for p in parties if p.state in ("starting", "ready")]
        if not live:  # every process has finished or failed: nothing more can arrive
            return
        waitables = [p.conn for p in live] + [p.process.sentinel for p in live]
        for obj in multiprocessing.connection.wait(waitables, timeout=max(0.0, min(deadlines) - time.monotonic())):
            is_sentinel = isinstance(obj, int)  # process sentinels are file descriptors; the rest are our pipes
            party = by_sentinel.get(obj) if is_sentinel else by_conn.get(id(obj))
            if party is None:
                continue
            if is_sentinel:
                # The process ended: read what it sent before it did, then decide.
                while party.state in ("starting", "ready") and party.conn.poll():
                    receive(party)
                if party.state in ("starting", "ready"):
                    party.process.join(1.0)
                    fail(party, _describe_exit(party.process))
            else:
                receive(party)
