"""Server, client and dealer on three hosts (network namespaces on one switch): TLS sessions generate what a local
run does, a tap at the switch sees only TLS records, impostors are refused, and a cut link ends every party."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from model_helpers import alive, new_ca, party_cmd, seconds_since_log_line, tiny_student

from benchmark.capture import frames, tcp_streams, tls_records
from benchmark.netns import Hosts
from mpcgen.generation import generate_plain, generate_private

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin") is None,
                                reason="network namespaces need root and iproute2")

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
ROLES = ("server", "client", "dealer")
PORT = 29600
PROMPTS = [[5, 9, 11, 3], [7, 7, 2, 40, 6]]


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return new_ca(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return tiny_student(tmp_path_factory.mktemp("student") / "mpcformer", "mpcformer", seed=7, n_positions=64)


@pytest.fixture(scope="module")
def local_tokens(student: Path) -> list[list[int]]:
    """What a local run (all parties spawned on this host) generates; it equals the plaintext model's tokens."""
    local = generate_private(student, PROMPTS, max_new_tokens=5, decoding="client", batch_size=2)
    plain = generate_plain(student, PROMPTS, max_new_tokens=5, decoding="client")
    assert [g.all_tokens for g in local] == [g.all_tokens for g in plain]
    return [g.all_tokens for g in local]


def _commands(hosts: Hosts, certs: Path | None, student: Path, prompts: Path, out: Path, *extra: str,
              max_new_tokens: int = 5) -> dict[str, list[str]]:
    rendezvous = f"tcp://{hosts.addr['server']}:{PORT}"
    security = () if certs is not None else ("--insecure",)
    cmds = {"server": party_cmd("generate", "server", rendezvous, certs, "--model", str(student), *security, *extra),
            "dealer": party_cmd("generate", "dealer", rendezvous, certs, *security, *extra),
            "client": party_cmd("generate", "client", rendezvous, certs, "--prompt-ids", str(prompts),
                                "--max-new-tokens", str(max_new_tokens), "--decoding", "client", "--batch-size", "2",
                                "--no-progress", "--out", str(out), *security, *extra)}
    return {role: hosts.command(role, cmd) for role, cmd in cmds.items()}


def _start(cmds: dict[str, list[str]], logs: Path) -> dict[str, subprocess.Popen]:
    """Each party on its host, its output in a file (a full pipe would stall it); the server first."""
    procs = {}
    for role in ("server", "dealer", "client"):
        with open(logs / f"{role}.log", "w") as log:
            procs[role] = subprocess.Popen(cmds[role], cwd=REPO_ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    return procs


def _finish(procs: dict[str, subprocess.Popen], logs: Path, timeout: float) -> dict[str, str]:
    try:
        for proc in procs.values():
            proc.wait(timeout=timeout)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    return {role: (logs / f"{role}.log").read_text() for role in procs}


@pytest.mark.parametrize("secure", [True, False], ids=["tls", "insecure"])
def test_three_hosts_generate_what_a_local_run_does_and_a_tap_sees_only_tls(secure: bool, certs: Path,
                                                                            student: Path, local_tokens: list,
                                                                            tmp_path: Path) -> None:
    prompts, out = tmp_path / "prompts.json", tmp_path / "client.json"
    prompts.write_text(json.dumps(PROMPTS))
    with Hosts(ROLES) as hosts:
        for role in ROLES:
            hosts.start_capture(role, tmp_path / f"{role}.frames")
        procs = _start(_commands(hosts, certs if secure else None, student, prompts, out), tmp_path)
        logs = _finish(procs, tmp_path, timeout=240)
        captured = hosts.stop_captures()
    assert all(p.returncode == 0 for p in procs.values()), {r: log[-1500:] for r, log in logs.items()}
    assert [r["all_tokens"] for r in json.loads(out.read_text())["results"]] == local_tokens
    if not secure:
        assert all("INSECURE" in logs[role] for role in ROLES)  # --insecure across hosts warns
    # Every link crossed the switch: server-client, server-dealer and dealer-client (direct), each both ways.
    streams = {}
    for role, path in captured.items():
        for key, stream in tcp_streams(frames(path)).items():
            payload, missing = stream.payload()
            if payload:
                assert missing == 0, f"the capture on {role}'s port lost {missing} bytes of {key}"
                streams[key] = payload
    hosts_seen = {frozenset((src[0], dst[0])) for src, dst in streams}
    assert hosts_seen == {frozenset((hosts.addr[a], hosts.addr[b])) for a, b in
                          (("server", "client"), ("server", "dealer"), ("dealer", "client"))}
    wire = b"".join(streams.values())
    assert len(wire) > 20_000
    if secure:
        for key, payload in streams.items():
            kinds = tls_records(payload)  # raises on any byte outside a TLS record
            assert kinds.count(23) >= 2 and set(kinds) <= {20, 21, 22, 23}, key
        assert b"rank" not in wire and b"session" not in wire and b"terminate" not in wire
    else:  # the control: the same tap reads the plaintext protocol
        assert b'"rank": 2' in wire and b"session" in wire
        with pytest.raises(ValueError):
            for payload in streams.values():
                tls_records(payload)


def test_an_impostor_on_the_lan_is_refused_within_10_s_and_the_parties_say_so(certs: Path, student: Path,
                                                                               tmp_path: Path) -> None:
    other = new_ca(tmp_path / "other-ca")
    with Hosts(ROLES) as hosts:
        rendezvous = f"tcp://{hosts.addr['server']}:{PORT}"
        extra = ("--connect-timeout", "8")
        cmds = {"server": party_cmd("forward", "server", rendezvous, certs, "--model", str(student), *extra),
                "client": party_cmd("forward", "client", rendezvous, certs, "--ids", "5,9", *extra),
                "dealer": party_cmd("forward", "dealer", rendezvous, other, *extra)}  # another CA's dealer
        procs = _start({role: hosts.command(role, cmd) for role, cmd in cmds.items()}, tmp_path)
        logs = _finish(procs, tmp_path, timeout=120)
    impostor = logs["dealer"]
    assert procs["dealer"].returncode == 2 and "not signed by our CA" in impostor, impostor[-1500:]
    # From its attempt to join to its refusal, on its own clock (its exit is the last thing it logs).
    refused_after = seconds_since_log_line(impostor, "joining at") - (time.time() - os.path.getmtime(
        tmp_path / "dealer.log"))
    assert refused_after < 10, refused_after
    assert f"refused a connection from {hosts.addr['dealer']}:" in logs["server"]
    for role in ("server", "client"):
        assert procs[role].returncode == 2, logs[role][-1500:]
        assert "dealer never joined" in logs[role] and "could not prove its identity" in logs[role], logs[role]
        assert "Traceback" not in logs[role]


def test_a_cut_link_ends_every_party_within_the_timeout(certs: Path, student: Path, tmp_path: Path) -> None:
    prompts, out = tmp_path / "prompts.json", tmp_path / "client.json"
    prompts.write_text(json.dumps([([5, 9, 11, 3, 7] * 8)[:n] for n in range(2, 30)]))  # 28 batches
    timeout = 6.0
    with Hosts(ROLES) as hosts:
        hosts.start_capture("client", tmp_path / "client.frames")
        cmds = _commands(hosts, certs, student, prompts, out, "--timeout", str(timeout), "--connect-timeout", "180",
                         max_new_tokens=12)
        procs = _start(cmds, tmp_path)
        frames_file = tmp_path / "client.frames"
        deadline = time.monotonic() + 180
        while frames_file.stat().st_size < 200_000:  # the session is up and generating
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs.values()), \
                {r: (tmp_path / f"{r}.log").read_text()[-1500:] for r in procs}
            time.sleep(0.2)
        hosts.stop_captures()
        hosts.cut("client")
        cut = time.monotonic()
        logs = _finish(procs, tmp_path, timeout=timeout + 40)
        elapsed = time.monotonic() - cut
        left = {role: subprocess.run([hosts.ip, "netns", "pids", hosts.ns[role]], capture_output=True,
                                     text=True).stdout.split() for role in ROLES}
    assert elapsed < timeout + 15, elapsed
    for role, proc in procs.items():
        assert proc.returncode == 2, f"{role}: {logs[role][-1500:]}"
        assert "Traceback" not in logs[role]
    # The server and the dealer name the client they lost; the client names a peer it lost.
    assert "the client (rank 1" in logs["server"], logs["server"][-1500:]
    assert "the client (rank 1" in logs["dealer"] or "the server (rank 0" in logs["dealer"], logs["dealer"][-1500:]
    assert "the server (rank 0" in logs["client"] or "the dealer (rank 2" in logs["client"], logs["client"][-1500:]
    assert not out.exists()  # no half-written result
    assert left == {role: [] for role in ROLES} and alive([p.pid for p in procs.values()]) == []
