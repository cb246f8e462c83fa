"""A user-space link emulator between two network namespaces, for kernels without ``netem``.

    python -m benchmark.linkem --ns SERVER_NS CLIENT_NS --dev DEV_S DEV_C --addr 10.77.0.1 10.77.0.2 \\
        --bandwidth 2e8 --rtt 0.04

Creates one TUN device per namespace (point-to-point addresses), prints ``ready`` on stdout, then forwards every IP
packet from one device to the other like netem's ``delay RTT/2 rate BW``: each direction is a queue that serialises
packets at the bandwidth (a packet leaves when the link has sent the ones before it, ``len * 8 / BW`` each) and
delivers each one RTT/2 after it left; nothing is dropped. Runs until killed (SIGTERM); the TUN devices vanish with
the process. The MTU is ``--mtu`` (default 1500, as on a WAN). A Python forwarder moves some ten thousand packets a
second: at MTU 1500 it keeps up with about 200 Mbit/s on a small busy CPU, faster links need jumbo frames (9000);
its timers have ~1 ms resolution, so it is meant for RTTs of milliseconds.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import math
import os
import selectors
import struct
import subprocess
import sys
import time
from typing import Sequence

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MTU = 1500


def open_tun(name: str) -> int:
    """A TUN device ``name`` in this namespace; its non-blocking file descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def configure(ip: str, ns: str, dev: str, addr: str, peer: str, mtu: int = MTU) -> None:
    """Move ``dev`` into ``ns`` and give it a point-to-point address (the fd keeps working across the move)."""
    for cmd in (["link", "set", dev, "netns", ns], ["-n", ns, "link", "set", dev, "mtu", str(mtu), "up"],
                ["-n", ns, "addr", "add", addr, "peer", peer, "dev", dev]):
        subprocess.run([ip, *cmd], check=True, capture_output=True, text=True, timeout=30)


def forward(fd_a: int, fd_b: int, bandwidth_bps: float, one_way_s: float) -> None:
    """Forward packets both ways forever, each direction serialised at the bandwidth and delayed ``one_way_s``."""
    other = {fd_a: fd_b, fd_b: fd_a}
    queues: dict[int, collections.deque] = {fd_a: collections.deque(), fd_b: collections.deque()}
    free_at = {fd_a: 0.0, fd_b: 0.0}  # when each direction's link has sent everything queued on it
    sel = selectors.DefaultSelector()
    for fd in (fd_a, fd_b):
        sel.register(fd, selectors.EVENT_READ)
    while True:
        now = time.monotonic()
        timeout = math.inf
        for src, queue in queues.items():
            while queue and queue[0][0] <= now:
                os.write(other[src], queue.popleft()[1])
            if queue:
                timeout = min(timeout, queue[0][0] - now)
        for key, _ in sel.select(None if timeout == math.inf else max(0.0, timeout)):
            src = key.fd
            for _ in range(256):
                try:
                    packet = os.read(src, 65536)  # a whole packet whatever the MTU
                except BlockingIOError:
                    break
                t = time.monotonic()
                free_at[src] = max(t, free_at[src]) + len(packet) * 8.0 / bandwidth_bps
                queues[src].append((free_at[src] + one_way_s, packet))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmark.linkem", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ns", nargs=2, required=True, metavar=("NS_A", "NS_B"))
    parser.add_argument("--dev", nargs=2, required=True, metavar=("DEV_A", "DEV_B"))
    parser.add_argument("--addr", nargs=2, required=True, metavar=("ADDR_A", "ADDR_B"))
    parser.add_argument("--bandwidth", type=float, required=True, help="bit/s, each direction")
    parser.add_argument("--rtt", type=float, required=True, help="round-trip time, seconds")
    parser.add_argument("--ip", default="ip", help="path of the ip command")
    parser.add_argument("--mtu", type=int, default=MTU, help=f"device MTU (default {MTU})")
    args = parser.parse_args(argv)
    try:
        os.nice(-10)  # a late forwarder adds delay the projection does not know about
    except OSError:
        pass
    try:
        fds = [open_tun(dev) for dev in args.dev]
        for i in (0, 1):
            configure(args.ip, args.ns[i], args.dev[i], args.addr[i], args.addr[1 - i], args.mtu)
    except (OSError, subprocess.CalledProcessError) as err:
        detail = getattr(err, "stderr", "") or err
        print(f"error: cannot set up the TUN link: {detail}", file=sys.stderr, flush=True)
        return 2
    print("ready", flush=True)
    forward(fds[0], fds[1], args.bandwidth, args.rtt / 2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
