"""Adverts as seen on the wire: a raw AF_PACKET capture in a namespace that
stamps every received IPv4 VRRP packet with the kernel's receive time
(SO_TIMESTAMPNS), and the largest interval between consecutive adverts (the
oracle for "no advert gap")."""
from __future__ import annotations

import json
import subprocess
import sys

# Runs inside a namespace: every received IPv4 VRRP packet as
# [kernel time, interface, source, vrid, priority, address count], for `seconds`.
CAPTURE = r"""
import json, socket, struct, sys, time
SO_TIMESTAMPNS = 35
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
s.settimeout(0.2)
print("ready", flush=True)
end, out = time.monotonic() + float(sys.argv[1]), []
while time.monotonic() < end:
    try:
        data, anc, _, addr = s.recvmsg(128, 64)
    except socket.timeout:
        continue
    if addr[2] == socket.PACKET_OUTGOING or len(data) < 24 or data[9] != 112:
        continue
    ihl = (data[0] & 15) * 4
    sec, nsec = struct.unpack("qq", anc[0][2][:16])
    out.append([sec + nsec / 1e9, addr[0], socket.inet_ntoa(data[12:16]),
                data[ihl + 1], data[ihl + 2], data[ihl + 3]])
json.dump(out, sys.stdout)
"""


class Capture:
    """CAPTURE running in namespace ns for `seconds`; packets() waits for its end."""

    def __init__(self, ns, seconds: float):
        self.proc = ns.popen(sys.executable, "-c", CAPTURE, str(seconds),
                             stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def packets(self) -> list:
        out, _ = self.proc.communicate(timeout=60)
        return json.loads(out)


def max_gaps(packets, srcs: set[str], ends: dict | None = None) -> dict:
    """(interface, vrid) -> largest interval between consecutive adverts from
    srcs; ends, if given, gets the time each of those intervals ended."""
    last, gaps = {}, {}
    for t, ifname, s, vrid, *_ in packets:
        if s not in srcs:
            continue
        key = (ifname, vrid)
        if key in last and t - last[key] > gaps.get(key, 0.0):
            gaps[key] = t - last[key]
            if ends is not None:
                ends[key] = t
        last[key] = t
    return gaps
