"""Networks for the time projection: named ones (:data:`mpcgen.mpc.meter.NETWORKS`) and ``BW,RTT`` strings.

The projection is :func:`mpcgen.mpc.meter.project_time`: ``compute + rounds * RTT + bytes * 8 / bandwidth``, with
the online rounds and online bytes of a run (dealer traffic is offline and not projected). ``bytes`` is the traffic
on the link summed over both directions (CrypTen's convention, as in MERGE's tables), so on a full-duplex link where
both parties send at once (a Beaver opening) the formula charges the bandwidth term up to twice over; the
namespace check (:mod:`benchmark.netns`) measures how far that goes.

A network string is ``BW,RTT``: bandwidth with an optional unit ``bit``, ``kbit``, ``mbit``, ``gbit`` (also
``bps``, ``Kbps``, ``Mbit/s``...; a bare number is bit/s) and RTT with an optional unit ``s``, ``ms``, ``us`` (a
bare number is seconds). Examples: ``1Gbit,10ms``, ``200mbit,40ms``, ``1e9,0.01``. ``lan`` and ``wan`` name the
standard pair (10 Gbit/s, 0.5 ms; 200 Mbit/s, 40 ms).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from mpcgen.errors import MpcgenError
from mpcgen.mpc.costs import NETWORKS, project_time

_BW_UNITS = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


@dataclass(frozen=True)
class Network:
    """A link: ``bandwidth_bps`` bits per second, round-trip time ``rtt_s``; ``name`` labels it in records."""

    name: str
    bandwidth_bps: float
    rtt_s: float

    def project(self, compute_s: float, rounds: float, bytes_: float) -> float:
        """``compute + rounds * RTT + bytes * 8 / bandwidth`` (:func:`mpcgen.mpc.meter.project_time`)."""
        return project_time(compute_s, rounds, bytes_, bandwidth_bps=self.bandwidth_bps, rtt_s=self.rtt_s)

    def to_dict(self) -> dict[str, float | str]:
        return {"name": self.name, "bandwidth_bps": self.bandwidth_bps, "rtt_s": self.rtt_s}


def parse_bandwidth(text: str) -> float:
    """``"200mbit"`` -> 2e8 bit/s (bare numbers are bit/s)."""
    m = re.fullmatch(_NUMBER + r"\s*([kmgt]?)(?:bit|bps|b)?(?:/s)?", text.strip().lower())
    if not m:
        raise MpcgenError(f"bandwidth {text!r}: use a number of bit/s with an optional unit, e.g. 200mbit or 1gbit")
    value = float(m.group(1)) * _BW_UNITS[m.group(2)]
    if value <= 0:
        raise MpcgenError(f"bandwidth {text!r} must be > 0")
    return value


def parse_duration(text: str) -> float:
    """``"40ms"`` -> 0.04 s (bare numbers are seconds)."""
    m = re.fullmatch(_NUMBER + r"\s*(s|ms|us|)", text.strip().lower())
    if not m:
        raise MpcgenError(f"round-trip time {text!r}: use seconds with an optional unit, e.g. 40ms or 0.04")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_network(text: str) -> Network:
    """``lan``, ``wan`` or ``BW,RTT`` (see the module docstring) -> :class:`Network`."""
    text = text.strip()
    if text.lower() in NETWORKS:
        bandwidth, rtt = NETWORKS[text.lower()]
        return Network(text.lower(), bandwidth, rtt)
    parts = text.split(",")
    if len(parts) != 2:
        raise MpcgenError(f"network {text!r}: use lan, wan or BW,RTT (e.g. 1Gbit,10ms)")
    bandwidth, rtt = parse_bandwidth(parts[0]), parse_duration(parts[1])
    return Network(f"{format_bandwidth(bandwidth)},{format_duration(rtt)}", bandwidth, rtt)


def format_bandwidth(bps: float) -> str:
    """2e8 -> ``"200mbit"`` (tc's spelling)."""
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if bps >= scale and abs(bps / scale - round(bps / scale, 3)) < 1e-9:
            return f"{round(bps / scale, 3):g}{unit}"
    return f"{bps:g}bit"


def format_duration(seconds: float) -> str:
    """0.04 -> ``"40ms"``."""
    if seconds == 0:
        return "0ms"
    if seconds < 1e-3:
        return f"{seconds * 1e6:g}us"
    return f"{seconds * 1e3:g}ms"


def networks(extra: Iterable[str] = ()) -> list[Network]:
    """LAN and WAN, then every ``--net`` given (duplicates dropped)."""
    out = [Network(name, *NETWORKS[name]) for name in ("lan", "wan")]
    for text in extra:
        net = parse_network(text)
        if all(n.name != net.name for n in out):
            out.append(net)
    return out


def projections(nets: Iterable[Network], compute_s: float | None, rounds: float, bytes_: float) -> dict[str, float]:
    """``{name: projected seconds}`` for each network (empty when no compute time is known)."""
    if compute_s is None:
        return {}
    return {net.name: net.project(compute_s, rounds, bytes_) for net in nets}
