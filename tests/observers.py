"""Observers of a daemon from outside it, each a process of its own inside the
daemon's namespace, all stamping on CLOCK_MONOTONIC (nanoseconds):

- `netlink`: the kernel's RTM_NEWADDR/RTM_DELADDR notifications (groups
  RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR), stamped when read, decoded
  afterwards with pyroute2's ifaddrmsg;
- `capture`: the gratuitous ARPs and unsolicited NAs the namespace sends, on
  one packet socket (every interface) with a kernel BPF filter, stamped by the
  kernel (SO_TIMESTAMPNS, CLOCK_REALTIME, converted to CLOCK_MONOTONIC);
- `fifo`: a notify fifo's lines, stamped when read.

Run as `python observers.py KIND OUT [FIFO]`: the process prints "ready" once its
socket (or fifo) is open, records until SIGTERM, then writes its records to OUT
as JSON (`fifo` appends each read to OUT as it comes, so that a test can wait on
the lines).  Observers ask for SCHED_FIFO so that a busy daemon does not delay
their reads (the netlink and fifo stamps are read times).
The parent side is `Observer` (start in a namespace, ready, stop, records).
"""
from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTM_NEWADDR, RTM_DELADDR = 20, 21
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
SO_ATTACH_FILTER = 26
ETH_P_ALL = 3
PACKET_OUTGOING = 4
RCVBUF = 64 << 20

# Classic BPF: outgoing frames that are ARP, or IPv6 ICMPv6 type 136 (NA) without
# extension headers (as vrrpd and keepalived send them).  (code, jt, jf, k)
_SKF_AD_PKTTYPE = 0xfffff000 + 4
_FILTER = [
    (0x20, 0, 0, _SKF_AD_PKTTYPE),      # ld pkttype
    (0x15, 0, 8, PACKET_OUTGOING),      # jeq OUTGOING, else reject
    (0x28, 0, 0, 12),                   # ldh [12]: ethertype
    (0x15, 5, 0, 0x0806),               # ARP: accept
    (0x15, 0, 5, 0x86DD),               # IPv6, else reject
    (0x30, 0, 0, 20),                   # ldb [20]: next header
    (0x15, 0, 3, 58),                   # ICMPv6, else reject
    (0x30, 0, 0, 54),                   # ldb [54]: ICMPv6 type
    (0x15, 0, 1, 136),                  # NA: accept, else reject
    (0x06, 0, 0, 0xFFFF),               # accept
    (0x06, 0, 0, 0),                    # reject
]


class Stop(Exception):
    pass


def _on_term(signum, frame):
    raise Stop


def _realtime_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few samples."""
    best = None
    for _ in range(20):
        m0 = time.monotonic_ns()
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.monotonic_ns()
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    return best[1]


def _realtime_priority() -> bool:
    """SCHED_FIFO at OBSERVER_PRIO, on OBSERVER_CPU if given (the test says which
    CPU, and why: on the daemon's CPU the observer runs between the daemon's
    system calls; on another, when that CPU has been woken)."""
    if os.environ.get("OBSERVER_CPU"):
        os.sched_setaffinity(0, {int(os.environ["OBSERVER_CPU"])})
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO,
                              os.sched_param(int(os.environ.get("OBSERVER_PRIO", "10"))))
        return True
    except (OSError, AttributeError):
        return False


def _netlink(out: str) -> None:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
    rt = _realtime_priority()
    raw: list[tuple[int, bytes]] = []
    overruns = 0
    print("ready", flush=True)
    try:
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:             # ENOBUFS: the kernel dropped notifications
                overruns += 1
                continue
            raw.append((time.monotonic_ns(), data))
    except Stop:
        pass
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    events = []
    for t, data in raw:
        off = 0
        while off + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind in (RTM_NEWADDR, RTM_DELADDR):
                msg = ifaddrmsg(data[off:off + length])
                msg.decode()
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                events.append((t, "new" if kind == RTM_NEWADDR else "del",
                               socket.if_indextoname(msg["index"]), addr))
            off += (length + 3) & ~3 if length else len(data)
    with open(out, "w") as f:
        json.dump({"realtime": rt, "overruns": overruns, "events": events}, f)


def _capture(out: str) -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    code = b"".join(struct.pack("=HBBI", *insn) for insn in _FILTER)
    buf = ctypes.create_string_buffer(code, len(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack("HL", len(_FILTER), ctypes.addressof(buf)))
    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    sock.setblocking(False)
    try:                    # frames queued before the filter was attached
        while True:
            sock.recv(1 << 16)
    except BlockingIOError:
        pass
    sock.setblocking(True)
    rt = _realtime_priority()
    offset0 = _realtime_offset_ns()
    rt0 = time.clock_gettime_ns(time.CLOCK_REALTIME)
    raw: list[tuple[int, str, bytes]] = []
    cmsg_space = socket.CMSG_SPACE(16)
    print("ready", flush=True)
    try:
        while True:
            data, anc, _, addr = sock.recvmsg(2048, cmsg_space)
            stamp = None
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("=qq", value[:16])
                    stamp = sec * 1_000_000_000 + nsec
            raw.append((stamp, addr[0], data))
    except Stop:
        pass
    offset1 = _realtime_offset_ns()
    rt1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
    # A clock being disciplined (NTP, a VM's host) slews CLOCK_REALTIME at a steady
    # rate against CLOCK_MONOTONIC: the offset is interpolated between its two readings.
    slew = (offset1 - offset0) / max(1, rt1 - rt0)
    frames = []
    for stamp, ifname, data in raw:
        if stamp is None:
            continue
        if data[12:14] == b"\x08\x06" and len(data) >= 32:
            kind, addr = "arp", socket.inet_ntop(socket.AF_INET, data[28:32])
        elif len(data) >= 78:
            kind, addr = "na", socket.inet_ntop(socket.AF_INET6, data[62:78])
        else:
            continue
        frames.append((stamp - offset0 - round(slew * (stamp - rt0)), kind, ifname, addr))
    with open(out, "w") as f:
        json.dump({"realtime": rt, "clock_step_ns": offset1 - offset0,
                   "clock_slew_ppm": slew * 1e6, "frames": frames}, f)


def _fifo(out: str, path: str) -> None:
    if not os.path.exists(path):
        os.mkfifo(path, 0o600)
    # O_RDWR: open never waits for a writer, and no EOF when the daemon dies.
    fd = os.open(path, os.O_RDWR)
    rt = _realtime_priority()
    log = open(out, "w")
    log.write(json.dumps({"realtime": rt}) + "\n")
    log.flush()
    print("ready", flush=True)
    try:
        while True:
            data = os.read(fd, 1 << 20)
            t = time.monotonic_ns()
            log.write("".join(f"{t} {line}\n" for line in data.decode(errors="replace")
                              .splitlines()))
            log.flush()
    except Stop:
        pass
    log.close()


class Observer:
    """One observer process in a namespace (vrrpd.lab.net.Netns)."""

    def __init__(self, ns, kind: str, out: str, *args: str, cpu: int | None = None,
                 priority: int = 10):
        """cpu: the one CPU to run on; priority: its SCHED_FIFO priority."""
        self.kind, self.out = kind, out
        env = dict(os.environ, OBSERVER_PRIO=str(priority),
                   OBSERVER_CPU="" if cpu is None else str(cpu))
        self.proc = ns.popen(sys.executable, os.path.abspath(__file__), kind, out, *args,
                             stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"observer {kind} did not start (exit {self.proc.wait()})")

    def stop(self) -> dict:
        """Stop recording; -> the records (fifo: {"realtime": .., "lines": [(t, line)]})."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        if rc != 0:
            raise RuntimeError(f"observer {self.kind} failed (exit {rc})")
        if self.kind == "fifo":
            return fifo_records(self.out)
        with open(self.out) as f:
            return json.load(f)


def fifo_records(out: str) -> dict:
    """What the fifo observer wrote so far (it may still be running)."""
    with open(out) as f:
        head, *rest = f.read().split("\n")
    lines = []
    for line in rest[:-1]:          # the last one is unfinished (or empty)
        t, _, text = line.partition(" ")
        if text:
            lines.append((int(t), text))
    return {**json.loads(head), "lines": lines}


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, _on_term)
    kind, out, *rest = argv
    {"netlink": _netlink, "capture": _capture, "fifo": _fifo}[kind](out, *rest)


if __name__ == "__main__":
    main(sys.argv[1:])
