"""The party launcher: real processes on loopback, real CrypTen; failures must be loud and leave nothing behind."""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest
import torch

from mpcgen.errors import MpcgenError
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.launch import check_rendezvous, init_party, run_parties
from mpcgen.mpc.roles import PROVIDERS

# ------------------------------------------------------------------------------------- party functions (importable)


def _whoami(rank: int, tag: str) -> tuple:
    comm = crypten.communicator.get()
    x = crypten.cryptensor(torch.tensor([2.0]), src=0) * crypten.cryptensor(torch.tensor([3.0]), src=1)
    return rank, comm.get_rank(), comm.get_world_size(), crypten.cfg.mpc.provider, tag, x.get_plain_text().item()


def _raises_on_client(rank: int) -> None:
    x = crypten.cryptensor(torch.ones(4), src=0)
    if rank == 1:
        raise ValueError("boom from the client")
    (x * x).get_plain_text()  # the server blocks here until the client's failure reaches it


def _killed_on_client(rank: int) -> None:
    x = crypten.cryptensor(torch.ones(4), src=0)
    (x * x).get_plain_text()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    for _ in range(3):
        (x * x).get_plain_text()  # the server needs the client here


def _private_arg(rank: int, shared: str, *private: str) -> tuple:
    return rank, shared, private


# ----------------------------------------------------------------------------------------------------- helpers


def _leftover_processes(timeout: float = 10.0) -> list[psutil.Process]:
    """Descendants of this test process other than multiprocessing's fork server and resource tracker."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout
    while True:
        helpers = set()
        for child in me.children():
            try:
                cmd = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "forkserver" in cmd or "resource_tracker" in cmd:
                helpers.add(child.pid)
        left = []
        for proc in me.children(recursive=True):
            try:
                if proc.pid not in helpers and proc.status() != psutil.STATUS_ZOMBIE:
                    left.append(proc)
            except psutil.NoSuchProcess:
                pass
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_both_providers_initialise_and_results_come_in_rank_order(provider: str) -> None:
    results = run_parties(_whoami, provider=provider, args=("hi",), timeout=60)
    assert [r[:3] for r in results] == [(0, 0, 2), (1, 1, 2)]
    assert {r[3] for r in results} == {PROVIDERS[provider]}
    assert all(r[4] == "hi" and abs(r[5] - 6.0) < 1e-3 for r in results)
    assert _leftover_processes() == []


def test_party_args_reach_only_their_rank() -> None:
    results = run_parties(_private_arg, provider="tfp", args=("both",), party_args={1: ("client-only",)})
    assert results == [(0, "both", ()), (1, "both", ("client-only",))]


def test_a_party_that_raises_gives_its_traceback() -> None:
    with pytest.raises(MpcgenError) as info:
        run_parties(_raises_on_client, provider="ttp", timeout=60)
    message = str(info.value)
    assert "rank 1 (client) raised" in message
    assert "Traceback (most recent call last)" in message
    assert "ValueError: boom from the client" in message
    assert "_raises_on_client" in message  # the frame where it happened
    assert _leftover_processes() == []


def test_a_killed_party_stops_the_others_quickly() -> None:
    start = time.monotonic()
    with pytest.raises(MpcgenError, match=r"rank 1 \(client\) was killed by signal SIGKILL"):
        run_parties(_killed_on_client, provider="ttp", timeout=120)
    assert time.monotonic() - start < 60
    assert _leftover_processes() == []


def test_a_party_that_never_connects_times_out() -> None:
    start = time.monotonic()
    # Only rank 0 is started here; rank 1 would join from another host and never does.
    with pytest.raises(MpcgenError, match=r"rank 0 \(server\) never connected"):
        run_parties(_whoami, provider="tfp", args=("x",), ranks=[0], connect_timeout=3, timeout=30)
    assert time.monotonic() - start < 20
    assert _leftover_processes() == []


def test_user_errors_are_mpcgen_errors() -> None:
    with pytest.raises(MpcgenError, match=r"unknown provider 'he'.*\['tfp', 'ttp'\]"):
        run_parties(_whoami, provider="he")
    with pytest.raises(MpcgenError, match="module-level function"):
        run_parties(lambda rank: rank, provider="tfp")
    with pytest.raises(MpcgenError, match="tcp://HOST:PORT"):
        init_party("server", 0, 2, "http://127.0.0.1:1", "tfp")
    with pytest.raises(MpcgenError, match="role 'client' runs as rank 1"):
        init_party("client", 0, 2, "tcp://127.0.0.1:1", "tfp")
    assert _leftover_processes() == []


def test_a_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(MpcgenError, match=f"port {port} on 127.0.0.1 is in use"):
            init_party("server", 0, 2, f"tcp://127.0.0.1:{port}", "ttp")
    assert not crypten.is_initialized()


def test_a_port_left_in_time_wait_by_the_last_session_is_free() -> None:
    """The server of the last session closed its links first: their sockets wait in TIME_WAIT on its port, and the
    next session on that port (a benchmark's next run) must start."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        peer = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the active close: TIME_WAIT on the server's side
        peer.close()
    time.sleep(0.2)
    check_rendezvous(f"tcp://127.0.0.1:{port}")
