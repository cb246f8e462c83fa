"""What a wire tap on a link sees: capture the frames of a network device, rebuild its TCP streams, read TLS records.

    ip netns exec NS python -m benchmark.capture --dev DEV --out FRAMES   # until SIGTERM; prints "ready"

The capture is a raw ``AF_PACKET`` socket (root; no tcpdump needed) that writes each frame, length-prefixed, to
``FRAMES``. :func:`tcp_streams` rebuilds every TCP stream (one per direction of a connection) from those frames by
sequence number, and :func:`tls_records` checks that a stream is nothing but TLS records, which is how the tests
show that a party link carries no plaintext.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
IPPROTO_TCP = 6
RCVBUF = 64 << 20  # frames arrive faster than Python writes them in bursts: a deep kernel queue loses none
SO_RCVBUFFORCE = 33
TLS_CONTENT_TYPES = (20, 21, 22, 23)  # change_cipher_spec, alert, handshake, application_data
TLS_MAX_RECORD = (1 << 14) + 256


def capture(dev: str, out: Path) -> None:
    """Write every frame seen on ``dev`` to ``out`` (4-byte length, then the frame) until SIGTERM or SIGINT."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    sock.bind((dev, 0))

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(out, "wb") as fh:
        print("ready", flush=True)
        try:
            while True:
                frame = sock.recv(1 << 17)
                fh.write(struct.pack("!I", len(frame)) + frame)
        finally:
            fh.flush()


def frames(path: Path) -> list[bytes]:
    """The frames a :func:`capture` wrote (a frame cut short by the end of the capture is dropped)."""
    data, out, i = path.read_bytes(), [], 0
    while i + 4 <= len(data):
        (n,) = struct.unpack_from("!I", data, i)
        if i + 4 + n > len(data):
            break
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out


@dataclass
class Stream:
    """One direction of a TCP connection: its payload in sequence order and whether any byte is missing."""

    src: tuple[str, int]
    dst: tuple[str, int]
    segments: dict[int, bytes] = field(default_factory=dict)
    start: int | None = None  # sequence number of the first payload byte (SYN + 1)

    def payload(self) -> tuple[bytes, int]:
        """The bytes in order, and how many were missing from the capture (gaps are left out)."""
        if not self.segments:
            return b"", 0
        seqs = sorted(self.segments, key=lambda s: (s - self.base()) % (1 << 32))
        out, pos, missing = bytearray(), self.base(), 0
        for seq in seqs:
            chunk = self.segments[seq]
            offset = (seq - pos) % (1 << 32)
            if offset >= 1 << 31:  # starts before pos: a retransmission overlapping what we have
                overlap = (pos - seq) % (1 << 32)
                chunk = chunk[overlap:]
                offset = 0
            missing += offset
            out += chunk
            pos = (pos + offset + len(chunk)) % (1 << 32)
        return bytes(out), missing

    def base(self) -> int:
        return self.start if self.start is not None else min(self.segments)


def tcp_streams(captured: Sequence[bytes]) -> dict[tuple[tuple[str, int], tuple[str, int]], Stream]:
    """Every TCP stream in Ethernet ``captured`` frames, keyed by ``((src, sport), (dst, dport))``."""
    streams: dict[tuple[tuple[str, int], tuple[str, int]], Stream] = {}
    for frame in captured:
        if len(frame) < 34 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IP:
            continue
        ip = frame[14:]
        ihl, total = (ip[0] & 0x0F) * 4, struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != IPPROTO_TCP:
            continue
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        tcp = ip[ihl:total]
        sport, dport, seq = struct.unpack_from("!HHI", tcp, 0)
        offset, flags = (tcp[12] >> 4) * 4, tcp[13]
        key = ((src, sport), (dst, dport))
        stream = streams.setdefault(key, Stream(key[0], key[1]))
        if flags & 0x02:  # SYN: the payload starts one past its sequence number
            stream.start = (seq + 1) % (1 << 32)
        body = tcp[offset:]
        if body:
            stream.segments.setdefault(seq, body)
    return streams


def tls_records(stream: bytes) -> list[int]:
    """Content types of the TLS records that make up ``stream``; ValueError if any byte is outside a record."""
    types, i = [], 0
    while i < len(stream):
        head = stream[i:i + 5]
        if len(head) < 5:
            raise ValueError(f"a truncated TLS record header at byte {i}: {head.hex()}")
        kind, major, length = head[0], head[1], int.from_bytes(head[3:5], "big")
        if kind not in TLS_CONTENT_TYPES or major != 3 or length > TLS_MAX_RECORD:
            raise ValueError(f"not a TLS record at byte {i}: {stream[i:i + 8].hex()}")
        types.append(kind)
        i += 5 + length
    if i != len(stream):
        raise ValueError(f"the last TLS record runs {i - len(stream)} bytes past the end of the stream")
    return types


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--dev", required=True, help="network device to capture on (in this namespace)")
    parser.add_argument("--out", required=True, type=Path, help="file the frames are written to")
    args = parser.parse_args(argv)
    try:
        capture(args.dev, args.out)
    except OSError as err:
        print(f"error: capture on {args.dev}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
