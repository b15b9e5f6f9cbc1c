"""Capture VRRP adverts on every interface of this namespace and report, per
(interface, VRID), the gaps between consecutive adverts.

Run inside a namespace: `python wire_gaps.py SECONDS OUT.json`.  Arrival times
are the kernel's (SO_TIMESTAMPNS), so this process's own scheduling does not
widen the gaps; packets the socket dropped are counted (PACKET_STATISTICS)
so that a lossy capture cannot pass for a good one.

Meanwhile one probe per CPU, pinned and SCHED_FIFO above any daemon, wakes
every millisecond and records when it could not run for over STALL_MS: the CPU
itself stalled (the hypervisor took the vCPU, or the kernel ran with preemption
off, e.g. inside a long netlink send).  A daemon's loop busy in user space never
delays these probes, so a late advert can be told apart from a stalled CPU.
"""
from __future__ import annotations

import gc
import json
import os
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
PROBE_PERIOD_NS = 1_000_000
STALL_MS = 2.0
PROBE_PRIORITY = 50         # above vrrp_rt_priority / SCHED_RR daemons under test


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


def probe(cpu: int, seconds: float) -> list[list[int]]:
    """[start_ns, end_ns] (CLOCK_REALTIME, as the packet timestamps) of each
    time this CPU ran nothing of ours for over STALL_MS."""
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(PROBE_PRIORITY))
    gc.disable()
    to_realtime = time.time_ns() - time.monotonic_ns()
    stalls = []
    due = time.monotonic_ns()
    end = due + int(seconds * 1e9)
    while due < end:
        due += PROBE_PERIOD_NS
        wait = due - time.monotonic_ns()
        if wait > 0:
            time.sleep(wait / 1e9)
        woke = time.monotonic_ns()
        if woke - due > STALL_MS * 1e6:
            stalls.append([due + to_realtime, woke + to_realtime])
            due = woke
    return stalls


def start_probes(seconds: float) -> list[tuple[int, int]]:
    """Fork one probe per CPU; each writes its stalls as JSON to a pipe."""
    probes = []
    for cpu in sorted(os.sched_getaffinity(0)):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            with os.fdopen(w, "w") as f:
                json.dump(probe(cpu, seconds), f)
            os._exit(0)
        os.close(w)
        probes.append((pid, r))
    return probes


def collect_probes(probes: list[tuple[int, int]]) -> list[list[int]]:
    stalls = []
    for pid, r in probes:
        with os.fdopen(r) as f:
            stalls.append(json.load(f))
        _, status = os.waitpid(pid, 0)
        if status:
            raise SystemExit(f"stall probe {pid} failed ({status:#x})")
    return stalls


def main() -> None:
    seconds, out = float(sys.argv[1]), sys.argv[2]
    probes = start_probes(seconds)
    times, stats = capture(seconds)
    with open(out, "w") as f:
        json.dump({"stats": stats, "times_ns": times, "stalls_ns": collect_probes(probes)}, f)


if __name__ == "__main__":
    main()
