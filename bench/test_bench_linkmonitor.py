"""Cost of the link monitor's event path: the RTM_NEWADDR the kernel sends for
each VIP a takeover adds, decoded by LinkMonitor and seen by VipWatch, on the
loop, once the takeover lets it read them (Transitions holds it meanwhile).

    .venv/bin/python -m pytest -q bench/test_bench_linkmonitor.py -p no:cacheprovider

Messages carry the attributes the kernel sends for an IPv4 address
(IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_FLAGS, IFA_CACHEINFO).  No socket:
the receive itself is not counted.  Results: extra_info.us_per_event.
"""
from __future__ import annotations

import socket
import time
from types import SimpleNamespace

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from vrrpd.core.vipwatch import VipWatch
from vrrpd.net import netlink as nl
from vrrpd.net.links import Link, LinkMonitor

N = 10_000
LINKS = 40


def new_addr(i: int) -> bytes:
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = socket.AF_INET, 32, 2 + i % LINKS
    address = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
    msg["attrs"] = [("IFA_ADDRESS", address), ("IFA_LOCAL", address),
                    ("IFA_LABEL", f"eth{i % LINKS}"), ("IFA_FLAGS", 0x80),
                    ("IFA_CACHEINFO", {"ifa_preferred": 0xffffffff, "ifa_valid": 0xffffffff,
                                       "cstamp": 1000, "tstamp": 1000})]
    msg["header"]["type"] = nl.RTM_NEWADDR
    msg.encode()
    return bytes(msg.data)


def monitor() -> LinkMonitor:
    daemon = SimpleNamespace(plan=None, instances={}, stopping=False, electing=True)
    watch = VipWatch(daemon, time.monotonic)
    watch.expect_deleted([SimpleNamespace(ifindex=1, address="192.0.2.1")])    # as after start-up
    m = LinkMonitor(on_address=watch)
    m._quiet = False                    # past the initial dump
    for k in range(LINKS):
        m.links[2 + k] = Link(2 + k, f"eth{k}", 0x10043, bytes(6))
    return m


def test_new_addresses_of_a_takeover(benchmark):
    events = [memoryview(new_addr(i)) for i in range(N)]

    def one_takeover(m):
        for buf in events:
            m._handle(buf, False)

    benchmark.pedantic(one_takeover, setup=lambda: ((monitor(),), {}), rounds=10)
    m = monitor()
    one_takeover(m)
    assert sum(len(link.addresses) for link in m.links.values()) == N
    benchmark.extra_info["us_per_event"] = round(benchmark.stats.stats.mean * 1e6 / N, 2)
