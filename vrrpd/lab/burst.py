"""The lab's own forwarding rate: a burst the size of a takeover's, sent through the wire.

A takeover puts an advert and the GARPs of every instance on the wire at once.
The lab sends that many minimum-size frames (local experimental ethertype
0x88B5, spread over the NICs as the instances are) from the backup's NICs and
counts them arriving on the master's, with kernel receive timestamps:

    python -m vrrpd.lab.burst recv --expect K --timeout S NIC...   (master's namespace)
    python -m vrrpd.lab.burst send --frames K NIC...               (backup's namespace)

recv prints "ready", then one JSON object {"received", "first", "last"} (wall
clock); send prints {"sent", "first", "last"}.  A send that finds the device
queue full is retried, as a daemon's blocking socket would wait, so the rate
is what the wire drains, not what it drops.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import json
import select
import socket
import struct
import sys
import time

ETHERTYPE = 0x88B5
SO_ATTACH_FILTER = 26
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
PACKET_OUTGOING = 4


def _open(nic: str, receive: bool) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    if receive:
        # Only frames arriving (not the host's own), only ours.
        ld_w_abs, ld_h_abs, jeq, ret = 0x20, 0x28, 0x15, 0x06
        prog = [(ld_w_abs, 0, 0, (-0x1000 + 4) & 0xFFFFFFFF),   # A = pkttype
                (jeq, 3, 0, PACKET_OUTGOING),
                (ld_h_abs, 0, 0, 12),                            # A = ethertype
                (jeq, 0, 1, ETHERTYPE),
                (ret, 0, 0, 64),
                (ret, 0, 0, 0)]
        buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
        s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                     struct.pack("HL", len(prog), ctypes.addressof(buf)))
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 32 << 20)
    s.bind((nic, ETHERTYPE if receive else 0))
    s.setblocking(False)
    return s


def send(nics: list[str], frames: int) -> dict:
    socks = [_open(n, False) for n in nics]
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + struct.pack("!H", ETHERTYPE) + bytes(46)
    per = [frames // len(socks) + (i < frames % len(socks)) for i in range(len(socks))]
    first = time.time()
    sent = 0
    for s, n in zip(socks, per):                # a burst per NIC, as a takeover's batches
        k = 0
        while k < n:
            try:
                s.send(frame)
                k += 1
            except OSError as e:
                if e.errno not in (errno.ENOBUFS, errno.EAGAIN):
                    raise
                select.select([], [s], [], 0.001)   # queue full: wait for it to drain
        sent += k
    return {"sent": sent, "first": first, "last": time.time()}


def recv(nics: list[str], expect: int, timeout: float, out=sys.stdout) -> dict:
    socks = [_open(n, True) for n in nics]
    print("ready", file=out, flush=True)
    got, first, last = 0, None, None
    deadline = time.monotonic() + timeout
    cmsg = socket.CMSG_SPACE(16)
    while got < expect and time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        for s in ready:
            while True:
                try:
                    _, anc, _, _ = s.recvmsg(64, cmsg)
                except BlockingIOError:
                    break
                got += 1
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = struct.unpack("qq", data[:16])
                        t = sec + nsec / 1e9
                        first = t if first is None else min(first, t)
                        last = t if last is None else max(last, t)
    result = {"received": got, "first": first, "last": last}
    print(json.dumps(result), file=out, flush=True)
    return result


def rate(sent: dict, received: dict) -> dict:
    """frames/s through the wire: frames received over first send to last arrival."""
    span = (received["last"] or sent["first"]) - sent["first"]
    return {"frames": sent["sent"], "received": received["received"],
            "lost": sent["sent"] - received["received"],
            "drain_s": round(span, 6),
            "frames_per_s": round(received["received"] / span) if span > 0 else None,
            "send_frames_per_s": round(sent["sent"] / (sent["last"] - sent["first"]))
            if sent["last"] > sent["first"] else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vrrpd.lab.burst")
    sub = p.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("recv")
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--timeout", type=float, default=10.0)
    r.add_argument("nics", nargs="+")
    s = sub.add_parser("send")
    s.add_argument("--frames", type=int, required=True)
    s.add_argument("nics", nargs="+")
    a = p.parse_args(argv)
    if a.mode == "recv":
        recv(a.nics, a.expect, a.timeout)
    else:
        print(json.dumps(send(a.nics, a.frames)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
