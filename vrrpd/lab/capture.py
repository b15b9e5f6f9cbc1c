"""First VRRP advert per (port, VRID) on the wire, with kernel timestamps.

Run inside the lab's switch namespace on the bridge ports of the host that
is about to take over (adverts entering the bridge), or with --outgoing in
that host's own namespace on its NICs (adverts it transmits; a direct link
has no switch in between):

    python -m vrrpd.lab.capture [--outgoing] --expect N --timeout S PORT...

It prints "ready" once its sockets are open and times adverts from the
moment given on stdin as "since UNIX_TIME" (just before the fault); when it has seen N
distinct (port, VRID) pairs (or on timeout, SIGTERM or stdin closing), one
JSON object: {"first": [[port, vrid, unix_time], ...], "packets": n}.

A separate process so that reading up to 100,000 adverts a second does
not compete with the lab's own threads for the GIL, and kernel receive
timestamps (SO_TIMESTAMPNS) so that when it reads them does not matter.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import signal
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35          # SCM_TIMESTAMPNS has the same value
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4
IPPROTO_VRRP = 112
SNAPLEN = 128


def _bpf_vrrp(outgoing: bool = False) -> list[tuple[int, int, int, int]]:
    """Classic BPF: VRRP over IPv4 or IPv6 entering the bridge from the port,
    or (outgoing) transmitted by the host on its NIC.

    The other direction (on a bridge port: the other router's adverts the
    bridge floods out; on a NIC: the adverts it receives) is dropped in the kernel.
    """
    ld_w_abs, ld_h_abs, ld_b_abs, jeq, ret = 0x20, 0x28, 0x30, 0x15, 0x06
    skf_ad_pkttype = (-0x1000 + 4) & 0xFFFFFFFF
    return [
        (ld_w_abs, 0, 0, skf_ad_pkttype),   # 0: A = pkttype
        (jeq, 0, 8, PACKET_OUTGOING) if outgoing else
        (jeq, 8, 0, PACKET_OUTGOING),       # 1: the other direction -> drop
        (ld_h_abs, 0, 0, 12),               # 2: A = ethertype
        (jeq, 0, 2, 0x0800),                # 3: IPv4 -> 4, else 6
        (ld_b_abs, 0, 0, 23),               # 4: A = IPv4 protocol
        (jeq, 3, 4, IPPROTO_VRRP),          # 5: -> accept / drop
        (jeq, 0, 3, 0x86DD),                # 6: IPv6 -> 7, else drop
        (ld_b_abs, 0, 0, 20),               # 7: A = IPv6 next header
        (jeq, 0, 1, IPPROTO_VRRP),          # 8: -> accept / drop
        (ret, 0, 0, SNAPLEN),               # 9: accept
        (ret, 0, 0, 0),                     # 10: drop
    ]


def open_port(port: str, outgoing: bool = False) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    prog = _bpf_vrrp(outgoing)
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in prog))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                 struct.pack("HL", len(prog), ctypes.addressof(buf)))
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    s.bind((port, 0))
    s.setblocking(False)
    return s


def vrid_of(frame: bytes) -> int | None:
    ethertype = frame[12:14]
    if ethertype == b"\x08\x00" and len(frame) > 14:
        off = 14 + (frame[14] & 0x0F) * 4 + 1
    elif ethertype == b"\x86\xdd":
        off = 14 + 40 + 1
    else:
        return None
    return frame[off] if len(frame) > off else None


def capture(ports: list[str], expect: int, timeout: float, out=sys.stdout,
            outgoing: bool = False) -> dict:
    socks = {open_port(p, outgoing): p for p in ports}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", file=out, flush=True)
    first: dict[tuple[str, int], float] = {}
    packets = 0
    since = None                # adverts before the fault (told on stdin) are no takeover
    deadline = time.monotonic() + timeout
    watch = list(socks) + [sys.stdin]
    cmsg_space = socket.CMSG_SPACE(16)
    while len(first) < expect and not stop and time.monotonic() < deadline:
        try:
            ready, _, _ = select.select(watch, [], [], 0.2)
        except InterruptedError:
            continue
        for s in ready:
            if not isinstance(s, socket.socket):      # stdin
                line = sys.stdin.readline()
                if not line:
                    stop.append(1)
                elif line.startswith("since "):
                    since = float(line.split()[1])
                continue
            port = socks[s]
            while True:
                try:
                    frame, anc, _, _ = s.recvmsg(SNAPLEN, cmsg_space)
                except BlockingIOError:
                    break
                packets += 1
                vrid = vrid_of(frame)
                if vrid is None or since is None or (port, vrid) in first:
                    continue
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", data[:16])
                        if sec + nsec / 1e9 >= since:
                            first[(port, vrid)] = sec + nsec / 1e9
    result = {"first": [[p, v, t] for (p, v), t in sorted(first.items(), key=lambda x: x[1])],
              "packets": packets}
    print(json.dumps(result), file=out, flush=True)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vrrpd.lab.capture")
    p.add_argument("ports", nargs="+")
    p.add_argument("--expect", type=int, required=True, help="stop after this many (port, VRID)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--outgoing", action="store_true", help="adverts the host sends on its NICs")
    a = p.parse_args(argv)
    # With kernel receive timestamps, when the packets are read does not
    # matter: read only on a CPU the routers leave idle, so that the
    # observer does not slow down the takeover it observes.
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    capture(a.ports, a.expect, a.timeout, outgoing=a.outgoing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
