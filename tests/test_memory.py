"""What vrrpd keeps per instance (issue 14: RSS at 10,000 instances <= 60 MiB;
bench/rss.py measures the whole daemon).  Bounds are per instance, from
resident memory or object counts, generous enough that no allocator detail
fails them, tight enough that the per-instance waste each test names does."""
from __future__ import annotations

import socket
import subprocess
import sys

from vrrpd import _engine as E


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_engine_advert_buffers_are_sized_to_the_advert():
    # Each instance's two advert variants used to get the largest advert's
    # room (255 IPv6 addresses, 4 kB) each: ~8 kB per instance, 80 MB at 10,000.
    n = 4000
    e = E.Engine(n, defer_sends=True)
    socks = [e.add_socket(-2, socket.AF_INET, 10 + k) for k in range(-(-n // 250))]
    src = socket.inet_pton(socket.AF_INET, "192.0.2.10")
    dst = [socket.inet_pton(socket.AF_INET, "224.0.0.18")]
    before = rss_kb()
    for i in range(n):
        vip = socket.inet_pton(socket.AF_INET, f"198.19.{i // 250}.{i % 250 + 1}")
        e.add_instance(sock_id=socks[i // 250], vrid=i % 250 + 1, version=3, priority=100,
                       advert_int_cs=10, src=src, dsts=dst, vips=[vip])
    per_instance = (rss_kb() - before) * 1024 / n
    assert per_instance < 1500, f"{per_instance:.0f} bytes resident per engine instance"
    # Re-encoding (a reload's new address list) still fits the longer advert.
    idx = 0
    more = [socket.inet_pton(socket.AF_INET, f"198.51.100.{k}") for k in range(1, 201)]
    e.set_advert_addrs(idx, more)
    e.set_priority(idx, 150, 0)


def test_daemon_loads_only_the_pyroute2_message_classes():
    # pyroute2's __init__ imports the whole library (~18 MB resident; sqlite3
    # through NDB): the daemon imports only its netlink message classes, and
    # the rest of pyroute2 still loads on demand.
    code = """
import sys
from vrrpd import daemon
daemon.defer_imports()
import vrrpd.runtime, vrrpd.reload, vrrpd.reporting, vrrpd.dumps, vrrpd.control, vrrpd.routes
heavy = sorted(m for m in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.iproute", "sqlite3")
               if m in sys.modules)
assert not heavy, heavy
from pyroute2 import IPRoute
import pyroute2
assert pyroute2.__version__ and IPRoute.__name__ == "IPRoute"
"""
    subprocess.run([sys.executable, "-c", code], check=True)
