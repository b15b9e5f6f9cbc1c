"""Capture VRRP adverts on every interface of this namespace and report, per
(interface, VRID), the gaps between consecutive adverts.

Run inside a namespace: `python wire_gaps.py SECONDS OUT.json`.  Arrival times
are the kernel's (SO_TIMESTAMPNS), so this process's own scheduling does not
widen the gaps; packets the socket dropped are counted (PACKET_STATISTICS)
so that a lossy capture cannot pass for a good one.
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import time

ETH_P_IP = 0x0800
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
IPPROTO_VRRP = 112


def capture(seconds: float) -> tuple[dict[str, list[int]], dict]:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.settimeout(0.2)
    times: dict[str, list[int]] = {}
    end = time.monotonic() + seconds
    print("ready", flush=True)
    while time.monotonic() < end:
        try:
            data, anc, _flags, addr = s.recvmsg(128, socket.CMSG_SPACE(16))
        except socket.timeout:
            continue
        if len(data) < 22 or data[9] != IPPROTO_VRRP:
            continue
        ihl = (data[0] & 0x0F) * 4
        vrid = data[ihl + 1]
        ts = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                   if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
        if ts is None:
            continue
        times.setdefault(f"{addr[0]}/{vrid}", []).append(ts[0] * 1_000_000_000 + ts[1])
    packets, drops = struct.unpack("II", s.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))
    return times, {"packets": packets, "drops": drops}


def main() -> None:
    seconds, out = float(sys.argv[1]), sys.argv[2]
    times, stats = capture(seconds)
    gaps = {k: [(b - a) / 1e6 for a, b in zip(v, v[1:])] for k, v in times.items()}
    with open(out, "w") as f:
        json.dump({"stats": stats, "first_ns": {k: v[0] for k, v in times.items()},
                   "gaps_ms": gaps}, f)


if __name__ == "__main__":
    main()
