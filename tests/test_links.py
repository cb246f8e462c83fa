"""Party links (mpcgen.mpc.links): TLS 1.3 between real processes, refusals, what a wire tap sees, lost peers."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from model_helpers import alive, free_port, new_ca, party_cmd, seconds_since_log_line, tiny_student

from benchmark.capture import tls_records
from mpcgen.certs import main as certs_main
from mpcgen.certs import party_files
from mpcgen.errors import MpcgenError
from mpcgen.generation import generate_plain, generate_private
from mpcgen.mpc.compat import crypten
from mpcgen.mpc.launch import run_parties

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    assert certs_main(["init", "--out", str(folder), "--san", "server=127.0.0.1"]) == 0
    return folder


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory) -> Path:
    return new_ca(tmp_path_factory.mktemp("other-ca"))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return tiny_student(tmp_path_factory.mktemp("student") / "merge", "merge", seed=5, n_positions=32)


# ------------------------------------------------------------------------------------ party functions (importable)


def _collectives(rank: int, n: int) -> dict:
    """Big tensors both ways at once, a broadcast of an object, a gather: results must be exact."""
    comm = crypten.communicator.get()
    mine = torch.arange(n, dtype=torch.long) * (rank + 1) + (1 << 40)
    total = comm.all_reduce(mine)
    obj = comm.broadcast_obj({"from": "server", "blob": "x" * 100_000} if rank == 0 else None, 0)
    comm.barrier()
    gathered = comm.all_gather(torch.tensor([rank, 7 * rank]))
    expected = torch.arange(n, dtype=torch.long) * 3 + (2 << 40)
    return {"sum_ok": bool(torch.equal(total, expected)), "obj": obj["from"], "blob": len(obj["blob"]),
            "gathered": [t.tolist() for t in gathered], "backend": comm.get_distributed_backend()}


def _product(rank: int) -> float:
    x = crypten.cryptensor(torch.tensor([2.0]), src=0) * crypten.cryptensor(torch.tensor([3.0]), src=1)
    return x.get_plain_text().item()


# ------------------------------------------------------------------------------------------------------ helpers


class _Tap:
    """A TCP relay between a party and the server that records every byte it passes (a wire tap)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.data = {"up": bytearray(), "down": bytearray()}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        while True:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream))
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        for src, dst, key in ((conn, upstream, "up"), (upstream, conn, "down")):
            threading.Thread(target=self._pump, args=(src, dst, key), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, key: str) -> None:
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            self.data[key] += chunk
            dst.sendall(chunk)


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port
                  for c in psutil.Process(proc.pid).net_connections()):
        assert proc.poll() is None and time.monotonic() < deadline, "the server never listened"
        time.sleep(0.2)


# -------------------------------------------------------------------------------------------------------- tests


def test_certs_cli_makes_a_ca_and_one_certificate_per_role(certs: Path) -> None:
    from cryptography import x509

    for role in ("server", "client", "dealer"):
        cert = x509.load_pem_x509_certificate((certs / f"{role}.crt").read_bytes())
        assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == role
        assert stat.S_IMODE((certs / f"{role}.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((certs / "ca.key").stat().st_mode) == 0o600
    assert certs_main(["init", "--out", str(certs)]) == 2  # never overwrites a CA by accident
    assert certs_main(["init", "--out", str(certs), "--san", "nobody=1.2.3.4"]) == 2


def test_collectives_are_exact_over_tls(certs: Path) -> None:
    results = run_parties(_collectives, provider="ttp", args=(4_000_000,), tls=certs, timeout=120)
    for result in results:
        assert result == {"sum_ok": True, "obj": "server", "blob": 100_000, "gathered": [[0, 0], [1, 7]],
                          "backend": "mpcgen-tls"}


def test_tls_generation_equals_plaintext_links_and_plaintext_model(certs: Path, student: Path) -> None:
    prompts = [[5, 9, 11, 3], [7, 7, 2, 40]]
    over_tls = generate_private(student, prompts, max_new_tokens=5, decoding="client", tls=certs, batch_size=2)
    plain_links = generate_private(student, prompts, max_new_tokens=5, decoding="client", batch_size=2)
    reference = generate_plain(student, prompts, max_new_tokens=5, decoding="client")
    assert [g.all_tokens for g in over_tls] == [g.all_tokens for g in plain_links] == \
           [g.all_tokens for g in reference]
    # Same protocol, same counters: TLS changes the bytes on the wire, not the rounds or payload bytes.
    tls_total, plain_total = over_tls[0].stats.total, plain_links[0].stats.total
    assert tls_total.rounds == plain_total.rounds and tls_total.bytes == plain_total.bytes


@pytest.mark.parametrize("case", ["other-ca", "no-tls", "wrong-role"])
def test_an_impostor_dealer_is_refused_before_anything_is_exchanged(case: str, certs: Path, other_ca: Path) -> None:
    tls = {0: party_files(certs, "server"), 1: party_files(certs, "client")}
    if case == "other-ca":
        tls[2] = party_files(other_ca, "dealer")
    elif case == "wrong-role":
        tls[2] = party_files(certs, "client")  # a real certificate of this deployment, but not the dealer's
    start = time.monotonic()
    with pytest.raises(MpcgenError) as info:
        run_parties(_product, provider="ttp", tls=tls, connect_timeout=8, timeout=60)
    elapsed = time.monotonic() - start
    message = str(info.value)
    impostor = next(line for line in message.splitlines() if line.startswith("- rank 2 (dealer)"))
    assert "refused" in message and elapsed < 20, message
    expected = {"other-ca": "not signed by our CA", "no-tls": "closed the connection while joining",
                "wrong-role": "its certificate names 'client' but it claims rank 2"}[case]
    assert expected in message, message
    assert impostor


def test_the_legitimate_parties_report_a_refused_impostor(certs: Path, other_ca: Path, student: Path) -> None:
    """Per-host commands: an impostor dealer (another CA) is refused at once; the server logs it, and when no real
    dealer comes it ends with the refusal in its error, as does the client it had admitted."""
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    extra = ("--connect-timeout", "8")
    cmds = {"server": party_cmd("forward", "server", rendezvous, certs, "--model", str(student), *extra),
            "client": party_cmd("forward", "client", rendezvous, certs, "--ids", "5,9", *extra),
            "impostor": party_cmd("forward", "dealer", rendezvous, other_ca, *extra)}
    procs = {}
    for role, cmd in cmds.items():
        procs[role] = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5 if role == "server" else 0)
    try:
        _, impostor_err = procs["impostor"].communicate(timeout=60)
        # From its attempt to join (its log line; process start-up on a loaded machine is not the link's time).
        impostor_s = seconds_since_log_line(impostor_err, "joining at")
        errs = {role: procs[role].communicate(timeout=60)[1] for role in ("server", "client")}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert procs["impostor"].returncode == 2 and impostor_s < 10, impostor_err[-1500:]
    assert "not signed by our CA" in impostor_err
    assert "refused a connection from 127.0.0.1:" in errs["server"]  # logged as it happens
    for role in ("server", "client"):
        assert procs[role].returncode == 2, errs[role][-1500:]
        assert "dealer never joined" in errs[role] and "could not prove its identity" in errs[role], errs[role]
        assert "Traceback" not in errs[role]


def test_a_wire_tap_sees_only_tls_records_and_without_tls_it_sees_the_protocol(certs: Path, student: Path,
                                                                                tmp_path: Path) -> None:
    ids = "5,9,11,3,8"
    for use_tls in (True, False):
        port = free_port()
        tap = _Tap(port)
        folder = certs if use_tls else None
        server = party_cmd("forward", "server", f"tcp://127.0.0.1:{port}", folder, "--model", str(student))
        dealer = party_cmd("forward", "dealer", f"tcp://127.0.0.1:{port}", folder)
        client = party_cmd("forward", "client", f"tcp://127.0.0.1:{tap.port}", folder, "--ids", ids)
        # Logs go to files: a party blocked on a full stderr pipe would stall the others.
        logs = [tmp_path / f"{name}-{use_tls}.log" for name in ("server", "dealer", "client")]
        files = [open(log, "w") for log in logs]
        procs = [subprocess.Popen(server, env=ENV, stdout=files[0], stderr=subprocess.STDOUT)]
        _wait_listening(procs[0], port)  # the tap relays one connection: the server must be up before the client
        procs += [subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)
                  for cmd, f in ((dealer, files[1]), (client, files[2]))]
        try:
            for p in procs:
                p.wait(timeout=180)
        finally:
            for p, f in zip(procs, files):
                if p.poll() is None:
                    p.kill()
                    p.wait()
                f.close()
        assert all(p.returncode == 0 for p in procs), [log.read_text()[-1500:] for log in logs]
        up, down = bytes(tap.data["up"]), bytes(tap.data["down"])
        assert len(up) > 1000 and len(down) > 1000  # the client's openings and the revealed logits went through
        if use_tls:
            kinds = tls_records(up) + tls_records(down)
            assert kinds.count(23) > 10 and set(kinds) <= {20, 21, 22, 23}  # application data: encrypted
            assert b"rank" not in up and b"session" not in down  # not even the hello is readable
        else:
            with pytest.raises(ValueError):
                tls_records(down)
            assert b'"rank": 1' in up and b"session" in down  # a tap reads the plaintext protocol


def test_a_stopped_client_ends_every_other_party_within_the_timeout(certs: Path, student: Path) -> None:
    port = free_port()
    rendezvous = f"tcp://127.0.0.1:{port}"
    extra = ("--timeout", "6", "--connect-timeout", "180")
    cmds = {"server": party_cmd("generate", "server", rendezvous, certs, "--model", str(student), *extra),
            "dealer": party_cmd("generate", "dealer", rendezvous, certs, *extra),
            "client": party_cmd("generate", "client", rendezvous, certs, "--prompt-ids", "PROMPTS",
                                 "--max-new-tokens", "10", "--decoding", "tokens", "--no-progress", *extra)}
    prompts = Path(os.environ.get("TMPDIR", "/tmp")) / f"mpcgen-links-{os.getpid()}.json"
    prompts.write_text(json.dumps([([5, 9, 11, 3, 7] * 4)[:n] for n in range(2, 21)]))  # 19 batches
    cmds["client"] = [str(prompts) if a == "PROMPTS" else a for a in cmds["client"]]
    procs = {role: subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role, cmd in cmds.items()}
    try:
        deadline = time.monotonic() + 180
        while not any(c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr[1] == port
                      for c in psutil.Process(procs["client"].pid).net_connections()):
            assert time.monotonic() < deadline and procs["client"].poll() is None, "the client never joined"
            time.sleep(0.2)
        time.sleep(2)  # joined and generating (19 batches of 10 tokens take far longer than this)
        assert procs["client"].poll() is None, procs["client"].communicate()[1][-2000:]
        os.kill(procs["client"].pid, signal.SIGSTOP)  # alive but silent: no data, no heartbeats
        stopped = time.monotonic()
        errs = {}
        for role in ("server", "dealer"):
            _, errs[role] = procs[role].communicate(timeout=40)
        elapsed = time.monotonic() - stopped
        assert elapsed < 6 + 12, elapsed
        for role in ("server", "dealer"):
            assert procs[role].returncode == 2, errs[role][-2000:]
        # The server names the silent client; the dealer, whose session the server then ends, names the server.
        assert "the client (rank 1" in errs["server"] and "not even a heartbeat" in errs["server"], errs["server"]
        assert "the server (rank 0" in errs["dealer"], errs["dealer"][-2000:]
        for role in ("server", "dealer"):
            assert "Traceback" not in errs[role]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(10)
        prompts.unlink(missing_ok=True)
    assert alive([p.pid for p in procs.values()]) == []


def test_plaintext_links_to_another_host_need_insecure() -> None:
    from mpcgen.mpc.launch import init_party

    with pytest.raises(MpcgenError, match="--insecure"):
        init_party("client", 1, 2, "tcp://10.99.0.1:29500", "ttp")
    assert not crypten.is_initialized()
    from mpcgen.cli.party import main

    assert main(["forward", "--role", "client", "--rendezvous", "tcp://10.99.0.1:1", "--ids", "1",
                 "--tls-cert", "x"]) == 2  # all three --tls-* or none
