"""Check the time projection against a real shaped link: the parties in two Linux network namespaces.

Layout (root only; ``ip`` and ``tc`` from iproute2)::

    namespace mpcb<pid>s: server (rank 0) + dealer   10.77.0.1/24  veth --netem delay RTT/2, rate BW--+
    namespace mpcb<pid>c: client (rank 1)            10.77.0.2/24  veth --netem delay RTT/2, rate BW--+

Each end of the veth pair gets a ``netem`` qdisc with half the round-trip time as delay and the bandwidth as rate,
so each direction is shaped on its own (a full-duplex link). Kernels built without netem (this project's machine:
``CONFIG_NET_SCH_NETEM`` is not set) get the same link from TUN devices and the user-space emulator
:mod:`benchmark.linkem` (``shaper="tun"``; ``auto`` picks netem where it exists). The dealer sits beside the
server: its traffic with the server is loopback (offline traffic, which the projection leaves out too); the client
reaches it, and the server's rendezvous, over the shaped link (the client listens on its link address for the
dealer). Links are TLS 1.3 with the job's ``tls``, else plaintext (``--insecure``). Each party is ``ip netns exec NS python -m mpcgen.cli.party generate ...``; the
namespaces (and with them the devices) are deleted on the way out, also after an error, Ctrl-C or SIGTERM.

The comparison (:func:`check_windows`): for each window the same job runs once more over the link; its measured
wall time is set against the projection from the loopback run's compute, rounds and bytes (``projected_s``), the
same with the bandwidth term on one direction's bytes (``projected_duplex_s``: both parties send at once in an
opening, so half the bytes cross each way), and the projection from the shaped run's own compute.

:class:`Hosts` builds the other layout the tests need: any number of hosts, each a namespace, on one switched LAN
(a bridge in a namespace of its own), with a capture tap on each host's switch port and a cable to pull.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from benchmark.costs import compute_of
from benchmark.network import Network
from mpcgen.errors import MpcgenError

logger = logging.getLogger(__name__)

SERVER_ADDR, CLIENT_ADDR, PREFIX = "10.77.0.1", "10.77.0.2", 24
PORT = 29500
QUEUE_LIMIT = 100000  # netem's queue in packets; the default 1000 drops at LAN bandwidth-delay products
REPO_ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise MpcgenError(f"--netns needs the {name!r} command (iproute2), which is not installed")
    return path


def _sh(*cmd: str) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise MpcgenError(f"--netns: `{' '.join(cmd)}` failed: {result.stderr.strip() or result.returncode}")


SHAPERS = ("auto", "netem", "tun")


class ShapedLink:
    """Two namespaces joined by a shaped link; a context manager that always removes them.

    ``shaper``: ``netem`` (a veth pair with a netem qdisc on each end), ``tun`` (TUN devices and the user-space
    emulator :mod:`benchmark.linkem`, for kernels built without netem) or ``auto`` (netem where the kernel has it).
    """

    def __init__(self, net: Network, shaper: str = "auto", mtu: int = 1500) -> None:
        if shaper not in SHAPERS:
            raise MpcgenError(f"unknown shaper {shaper!r}: use one of {list(SHAPERS)}")
        if not 576 <= mtu <= 65000:
            raise MpcgenError(f"--netns-mtu {mtu}: use 576 .. 65000")
        self.net, self.shaper, self.mtu = net, shaper, mtu
        tag = f"{os.getpid() % 100000}"
        self.ns = {"server": f"mpcb{tag}s", "client": f"mpcb{tag}c"}
        self.dev = {"server": f"mb{tag}s", "client": f"mb{tag}c"}
        self.addr = {"server": SERVER_ADDR, "client": CLIENT_ADDR}
        self.ip = self.tc = ""
        self._made: list[str] = []
        self._emulator: subprocess.Popen | None = None

    def __enter__(self) -> "ShapedLink":
        if os.geteuid() != 0:
            raise MpcgenError("--netns creates network namespaces and needs root (run as root, or drop --netns)")
        self.ip, self.tc = _tool("ip"), _tool("tc")
        try:
            for role in ("server", "client"):
                _sh(self.ip, "netns", "add", self.ns[role])
                self._made.append(self.ns[role])
                _sh(self.ip, "-n", self.ns[role], "link", "set", "lo", "up")
            if self.shaper in ("auto", "netem") and self._veth_netem():
                self.shaper = "netem"
            else:
                self.shaper = "tun"
                self._tun_emulator()
        except BaseException:
            self.close()
            raise
        logger.info("netns: %s <-> %s shaped to %s by %s", self.ns["server"], self.ns["client"], self.net.name,
                    self.shaper)
        return self

    def _veth_netem(self) -> bool:
        """A veth pair with netem on both ends; False (veth removed) where the kernel has no netem and the shaper is
        ``auto``."""
        _sh(self.ip, "link", "add", self.dev["server"], "netns", self.ns["server"], "type", "veth", "peer",
            "name", self.dev["client"], "netns", self.ns["client"])
        for role in ("server", "client"):
            ns, dev = self.ns[role], self.dev[role]
            _sh(self.ip, "-n", ns, "addr", "add", f"{self.addr[role]}/{PREFIX}", "dev", dev)
            _sh(self.ip, "-n", ns, "link", "set", dev, "mtu", str(self.mtu), "up")
            cmd = (self.ip, "netns", "exec", ns, self.tc, "qdisc", "add", "dev", dev, "root", "netem", "delay",
                   f"{self.net.rtt_s / 2.0 * 1e6:.0f}us", "rate", f"{self.net.bandwidth_bps:.0f}bit", "limit",
                   str(QUEUE_LIMIT))
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if result.returncode != 0:
                unknown = "unknown" in result.stderr.lower()
                if unknown and self.shaper == "auto":
                    logger.info("netns: this kernel has no netem qdisc; using the TUN emulator (benchmark.linkem)")
                    _sh(self.ip, "-n", self.ns["server"], "link", "del", self.dev["server"])
                    return False
                hint = " (the kernel has no netem: use --netns-shaper tun)" if unknown else ""
                raise MpcgenError(f"--netns: `{' '.join(cmd)}` failed: {result.stderr.strip()}{hint}")
        return True

    def _tun_emulator(self) -> None:
        """Start :mod:`benchmark.linkem` (it creates and configures the TUN devices) and wait for ``ready``."""
        if not os.path.exists("/dev/net/tun"):
            raise MpcgenError("--netns: neither netem nor /dev/net/tun is available; cannot shape a link here")
        cmd = [sys.executable, "-m", "benchmark.linkem", "--ns", self.ns["server"], self.ns["client"], "--dev",
               self.dev["server"], self.dev["client"], "--addr", SERVER_ADDR, CLIENT_ADDR, "--bandwidth",
               repr(self.net.bandwidth_bps), "--rtt", repr(self.net.rtt_s), "--ip", self.ip, "--mtu", str(self.mtu)]
        self._emulator = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True)
        line = self._emulator.stdout.readline().strip()
        if line != "ready":
            self._emulator.wait(10)
            raise MpcgenError(f"--netns: the link emulator did not start: {self._emulator.stderr.read().strip()}")

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Stop the emulator and delete the namespaces (their devices go with them); errors are logged."""
        if self._emulator is not None:
            if self._emulator.poll() is None:
                self._emulator.terminate()
                try:
                    self._emulator.wait(10)
                except subprocess.TimeoutExpired:
                    self._emulator.kill()
                    self._emulator.wait(10)
            self._emulator = None
        while self._made:
            ns = self._made.pop()
            result = subprocess.run([self.ip or "ip", "netns", "del", ns], capture_output=True, text=True)
            if result.returncode != 0:
                logger.warning("netns: could not delete %s: %s", ns, result.stderr.strip())

    def tcp_rtt(self, pings: int = 10) -> float | None:
        """Median round trip of a 1-byte TCP echo server -> client over the link (seconds; None on failure)."""
        echo = ("import socket as S\ns=S.socket();s.setsockopt(S.SOL_SOCKET,S.SO_REUSEADDR,1)\n"
                f"s.bind(('{CLIENT_ADDR}',{PORT + 1}));s.listen(1);c,_=s.accept()\n"
                "c.setsockopt(S.IPPROTO_TCP,S.TCP_NODELAY,1)\nwhile True:\n d=c.recv(1)\n if not d: break\n"
                " c.sendall(d)\n")
        probe = ("import socket as S,time,statistics\nfor i in range(50):\n try:\n"
                 f"  c=S.create_connection(('{CLIENT_ADDR}',{PORT + 1}),timeout=5);break\n"
                 " except OSError: time.sleep(0.1)\nc.setsockopt(S.IPPROTO_TCP,S.TCP_NODELAY,1);t=[]\n"
                 f"for i in range({pings}):\n a=time.perf_counter();c.sendall(b'x');c.recv(1)\n"
                 " t.append(time.perf_counter()-a)\nprint(statistics.median(t))\n")
        server = subprocess.Popen([self.ip, "netns", "exec", self.ns["client"], sys.executable, "-c", echo],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            out = subprocess.run([self.ip, "netns", "exec", self.ns["server"], sys.executable, "-c", probe],
                                 capture_output=True, text=True, timeout=60)
            return float(out.stdout.strip()) if out.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError):
            return None
        finally:
            if server.poll() is None:
                server.kill()
            server.wait(10)

    def launch(self, job: dict[str, Any], prompt: list[int], provider: str, timeout: float) -> dict[str, Any]:
        """One run with each party in its namespace (``python -m mpcgen.cli.party generate``); the client's
        generation stats, as ``launch_local`` returns them."""
        from mpcgen.checkpoint import write_json

        tmp = Path(tempfile.mkdtemp(prefix="mpcgen-netns-"))
        procs: dict[str, subprocess.Popen] = {}
        logs: dict[str, Any] = {}
        try:
            write_json(tmp / "config.json", job["config"])
            write_json(tmp / "prompt.json", [prompt])
            rendezvous = f"tcp://{SERVER_ADDR}:{PORT}"
            roles = ["server", "client"] + (["dealer"] if provider == "ttp" else [])
            for role in roles:
                side = "client" if role == "client" else "server"
                cmd = [self.ip, "netns", "exec", self.ns[side],
                       sys.executable, "-m", "mpcgen.cli.party", "generate", "--role", role,
                       "--rendezvous", rendezvous, "--provider", provider, "--weights", job["weights"],
                       "--fixed-weights", "on" if job["fixed_weights"] else "off", "--timeout", str(timeout),
                       "--threads", "1", "--no-progress"]
                if job.get("tls"):
                    from benchmark.harness import bench_certs

                    from mpcgen.certs import tls_flags

                    cmd += tls_flags(bench_certs(), role)
                else:
                    cmd += ["--insecure"]
                holds = role == "server" or (role == "client" and job["weights"] == "public")
                if holds:
                    cmd += (["--model", job["checkpoint"], "--preset", job["config"]["preset"]] if job["checkpoint"]
                            else ["--random-config", str(tmp / "config.json"), "--seed-weights", str(job["seed"])])
                if role == "client":
                    cmd += ["--prompt-ids", str(tmp / "prompt.json"), "--max-new-tokens", str(job["max_new_tokens"]),
                            "--batch-size", "1", "--out", str(tmp / "client.json")]
                    if job["decoding"]:
                        cmd += ["--decoding", job["decoding"]]
                logs[role] = open(tmp / f"{role}.log", "w+")
                procs[role] = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=logs[role], stderr=subprocess.STDOUT)
                if role == "server":
                    time.sleep(1.0)  # let the server open the rendezvous before the others knock
            self._wait(procs, logs, timeout)
            return json.loads((tmp / "client.json").read_text())["results"][0]["stats"]
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(10)
            for fh in logs.values():
                fh.close()
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def _wait(procs: dict[str, subprocess.Popen], logs: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout + 120
        while True:
            codes = {role: p.poll() for role, p in procs.items()}
            failed = [role for role, c in codes.items() if c not in (None, 0)]
            if failed or time.monotonic() > deadline:
                why = []
                for role in failed or list(procs):
                    logs[role].seek(0)
                    tail = [line for line in logs[role].read().splitlines() if line.strip()][-3:]
                    why.append(f"{role} (exit {codes[role]}): {' | '.join(tail)}")
                raise MpcgenError("--netns run failed: " + "; ".join(why))
            if all(c == 0 for c in codes.values()):
                return
            time.sleep(0.2)


class Hosts:
    """Hosts on one LAN, each a network namespace: a context manager that always removes them.

    Every host gets ``eth0`` with ``10.78.0.<i+1>/24``, the peer end of a veth pair whose other end is a port of a
    bridge in a namespace of its own (a switch): traffic between any two hosts crosses their two ports, where
    :meth:`start_capture` taps it, and :meth:`cut` takes a host's link down as a pulled cable would.
    """

    PREFIX_ADDR = "10.78.0."

    def __init__(self, names: Sequence[str]) -> None:
        if len(set(names)) != len(names) or not 1 <= len(names) <= 200:
            raise MpcgenError(f"hosts need 1 .. 200 distinct names, got {list(names)}")
        tag = f"{os.getpid() % 100000}"
        self.names = list(names)
        self.switch = f"mpch{tag}w"
        self.ns = {name: f"mpch{tag}h{i}" for i, name in enumerate(self.names)}
        self.port = {name: f"mh{tag}p{i}" for i, name in enumerate(self.names)}
        self.addr = {name: f"{self.PREFIX_ADDR}{i + 1}" for i, name in enumerate(self.names)}
        self.ip = ""
        self._made: list[str] = []
        self._captures: dict[str, tuple[subprocess.Popen, Path]] = {}

    def __enter__(self) -> "Hosts":
        if os.geteuid() != 0:
            raise MpcgenError("hosts in network namespaces need root")
        self.ip = _tool("ip")
        try:
            for ns in (self.switch, *self.ns.values()):
                _sh(self.ip, "netns", "add", ns)
                self._made.append(ns)
                _sh(self.ip, "-n", ns, "link", "set", "lo", "up")
            _sh(self.ip, "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _sh(self.ip, "-n", self.switch, "link", "set", "br0", "up")
            for name in self.names:
                _sh(self.ip, "-n", self.switch, "link", "add", self.port[name], "type", "veth", "peer", "name",
                    "eth0", "netns", self.ns[name])
                _sh(self.ip, "-n", self.switch, "link", "set", self.port[name], "master", "br0", "up")
                _sh(self.ip, "-n", self.ns[name], "addr", "add", f"{self.addr[name]}/24", "dev", "eth0")
                _sh(self.ip, "-n", self.ns[name], "link", "set", "eth0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def command(self, host: str, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run on ``host`` (inside its namespace)."""
        return [self.ip, "netns", "exec", self.ns[host], *cmd]

    def cut(self, host: str) -> None:
        """Take ``host``'s link down at the switch: its packets go nowhere, and nothing reaches it."""
        _sh(self.ip, "-n", self.switch, "link", "set", self.port[host], "down")

    def start_capture(self, host: str, out: Path) -> None:
        """Capture, at the switch port, every frame to and from ``host`` into ``out`` (:mod:`benchmark.capture`)."""
        proc = subprocess.Popen([self.ip, "netns", "exec", self.switch, sys.executable, "-m", "benchmark.capture",
                                 "--dev", self.port[host], "--out", str(out)], cwd=REPO_ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if proc.stdout.readline().strip() != "ready":
            proc.wait(10)
            raise MpcgenError(f"capture on {host}'s port did not start: {proc.stderr.read().strip()}")
        self._captures[host] = (proc, out)

    def stop_captures(self) -> dict[str, Path]:
        """Stop every capture; the frame file of each captured host."""
        done = {}
        for host, (proc, out) in self._captures.items():
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            done[host] = out
        self._captures.clear()
        return done

    def close(self) -> None:
        """Stop the captures and delete the namespaces (their devices go with them); errors are logged."""
        self.stop_captures()
        while self._made:
            ns = self._made.pop()
            result = subprocess.run([self.ip or "ip", "netns", "del", ns], capture_output=True, text=True)
            if result.returncode != 0:
                logger.warning("netns: could not delete %s: %s", ns, result.stderr.strip())


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit inside the block, so the namespaces are removed on the way out."""
    def handler(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def compare(loopback: dict[str, Any], shaped: dict[str, Any], net: Network) -> dict[str, Any]:
    """Measured wall time over the link against the projections, for one window's total (see the module)."""
    lo, sh = loopback["total"]["total"], shaped["total"]["total"]
    lo_c, sh_c = compute_of(lo), compute_of(sh)
    duplex = Network(net.name, net.bandwidth_bps * 2.0, net.rtt_s)  # bytes / 2 each way
    out = {
        "measured_s": sh["seconds"], "measured_comm_s": sh["comm_s"], "measured_compute_s": sh["compute_s"],
        "measured_cpu_s": sh.get("cpu_s"), "loopback_s": lo["seconds"], "loopback_compute_s": lo["compute_s"],
        "loopback_cpu_s": lo.get("cpu_s"), "rounds": lo["rounds"], "bytes": lo["bytes"],
        "same_rounds_and_bytes": lo["rounds"] == sh["rounds"] and lo["bytes"] == sh["bytes"],
        "projected_s": net.project(lo_c, lo["rounds"], lo["bytes"]),
        "projected_duplex_s": duplex.project(lo_c, lo["rounds"], lo["bytes"]),
        "projected_own_compute_s": net.project(sh_c, sh["rounds"], sh["bytes"]),
        "latency_term_s": lo["rounds"] * net.rtt_s,
        "bandwidth_term_s": lo["bytes"] * 8.0 / net.bandwidth_bps,
        "measured_minus_loopback_s": sh["seconds"] - lo["seconds"],
        # the shaped run's time beyond its own compute: what the network (and waiting for the peer) cost
        "measured_network_s": sh["seconds"] - sh_c,
    }
    out["network_term_s"] = out["latency_term_s"] + out["bandwidth_term_s"]
    out["measured_over_projected"] = out["measured_s"] / out["projected_s"] if out["projected_s"] else None
    out["measured_over_projected_own_compute"] = out["measured_s"] / out["projected_own_compute_s"]
    # round trips a round really cost, once the bandwidth term is taken off (the formula assumes 1)
    if lo["rounds"] and net.rtt_s > 0:
        latency = lo["rounds"] * net.rtt_s
        out["rtts_per_round"] = (out["measured_network_s"] - out["bandwidth_term_s"]) / latency
        # the same with half the bytes each way (both parties send at once in an opening)
        out["rtts_per_round_duplex"] = (out["measured_network_s"] - out["bandwidth_term_s"] / 2.0) / latency
    if loopback.get("steady") and shaped.get("steady"):
        lo_s, sh_s = loopback["steady"]["total"], shaped["steady"]["total"]
        out["step"] = {"measured_s": sh_s["seconds"], "rounds": lo_s["rounds"], "bytes": lo_s["bytes"],
                       "projected_s": net.project(compute_of(lo_s), lo_s["rounds"], lo_s["bytes"]),
                       "projected_duplex_s": duplex.project(compute_of(lo_s), lo_s["rounds"], lo_s["bytes"])}
    return out


def check_windows(spec: Any, config: Any, job: dict[str, Any], plan: Sequence[tuple[str, int]],
                  windows: dict[str, Any], net: Network, runs: int = 1, shaper: str = "auto",
                  mtu: int = 1500) -> dict[str, Any]:
    """Run every window of ``plan`` over a link shaped to ``net``; the comparison per window (for the record)."""
    import dataclasses

    from benchmark.harness import measure_window

    out: dict[str, Any] = {"network": net.to_dict(), "windows": {}, "mtu": mtu}
    with _terminate_as_exit(), ShapedLink(net, shaper, mtu) as link:
        out["shaper"] = link.shaper
        out["tcp_rtt_s"] = link.tcp_rtt()
        for name, length in plan:
            shaped = measure_window(dataclasses.replace(spec, runs=runs), config, name, length, job, [net],
                                    launcher=link.launch)
            check = compare(windows[name], shaped, net)
            check["shaped_window"] = {k: shaped[k] for k in ("total", "steady", "runs")}
            out["windows"][name] = check
            logger.info("netns %s window %s: measured %.2f s, projected %.2f s (duplex %.2f s), loopback %.2f s",
                        net.name, name, check["measured_s"], check["projected_s"], check["projected_duplex_s"],
                        check["loopback_s"])
    return out


__all__ = ["Hosts", "ShapedLink", "check_windows", "compare"]
