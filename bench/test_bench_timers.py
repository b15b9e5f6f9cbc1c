"""Cost of the engine's advert path: 10,000 masters at 100 ms.

    .venv/bin/python -m pytest -q bench/test_bench_timers.py -p no:cacheprovider

test_tick_discard: tick() in discard mode (fd -2: heap, queueing and batch
building, no syscall), ticking every 1 ms like the daemon's call_at would.
test_tick_raw_sockets: the same with real raw sockets and sendmmsg, run in a
network namespace of its own (subprocess under `ip netns exec`), reporting
the per-advert cost measured there.  Results are in extra_info.ns_per_advert.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from vrrpd import engine as E

HERE = os.path.dirname(os.path.abspath(__file__))
N = 10_000
ADV_CS = 10                                  # 100 ms
ADV_US = ADV_CS * 10_000
T0 = 1_000_000_000


def build(fds):
    """N owner instances spread over sockets (255 VRIDs each), MASTER, phases staggered."""
    e = E.Engine(N)
    socks = [e.add_socket(fd, socket.AF_INET, 1) for fd in fds]
    src = socket.inet_aton("192.0.2.10")
    grp = socket.inet_aton("224.0.0.18")
    for n in range(N):
        i = e.add_instance(sock_id=socks[(n // 255) % len(socks)], vrid=n % 255 + 1,
                           version=3, priority=255, advert_int_cs=ADV_CS, src=src,
                           dsts=[grp], vips=[socket.inet_aton(f"198.51.100.{n % 250 + 1}")],
                           owner=True)
        e.start(i, T0 + (n * 37) % ADV_US, want_master=True)   # spread over 100 ms
    return e, socks


def one_interval(e, clock):
    """Tick every 1 ms for one advert interval (100 ticks) -> adverts sent."""
    t = clock[0]
    for _ in range(ADV_US // 1000):
        t += 1000
        e.tick(t)
    clock[0] = t


def sent(e, socks):
    return sum(e.socket_counters(s)["tx_packets"] for s in socks)


def test_tick_discard(benchmark):
    need = (N + 254) // 255
    e, socks = build([-2] * need)
    clock = [T0 + ADV_US]
    e.tick(clock[0])
    before = sent(e, socks)
    benchmark.pedantic(one_interval, args=(e, clock), rounds=30, iterations=1)
    adverts = sent(e, socks) - before
    assert adverts == 30 * N                     # every master once per interval
    ns = benchmark.stats.stats.mean * 1e9 / N
    best = benchmark.stats.stats.min * 1e9 / N
    benchmark.extra_info["ns_per_advert"] = round(ns, 1)
    benchmark.extra_info["ns_per_advert_min"] = round(best, 1)
    print(f"\ntick() discard mode: {ns:.0f} ns/advert mean, {best:.0f} best "
          f"({N} masters, 100 ms, 100 ticks per interval)")


def _raw_socket_worker():
    """Runs inside a namespace: veth pair, real sendmmsg, wall-clock ticks."""
    from vrrpd.net.sockets import open_vrrp_socket
    subprocess.run(["ip", "link", "add", "va", "type", "veth", "peer", "name", "vb"], check=True)
    subprocess.run(["ip", "link", "set", "va", "up"], check=True)
    subprocess.run(["ip", "link", "set", "vb", "up"], check=True)
    subprocess.run(["ip", "addr", "add", "192.0.2.10/24", "dev", "va"], check=True)
    ifindex = socket.if_nametoindex("va")
    need = (N + 254) // 255
    keep = [open_vrrp_socket(socket.AF_INET, "va", ifindex, groups=()) for _ in range(need)]
    e, socks = build([s.fileno() for s in keep])
    clock = [T0 + ADV_US]
    e.tick(clock[0])
    before = sent(e, socks)
    rounds = 20
    t = time.perf_counter()
    for _ in range(rounds):
        one_interval(e, clock)
    dt = time.perf_counter() - t
    errors = sum(e.socket_counters(s)["tx_errors"] for s in socks)
    batches = sum(e.socket_counters(s)["tx_batches"] for s in socks)
    print(json.dumps({"adverts": sent(e, socks) - before, "seconds": dt, "errors": errors,
                      "batches": batches}))


@pytest.mark.netns
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root")
def test_tick_raw_sockets(benchmark):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
    from netns import Netns, new_name

    ns = Netns(new_name("bench"))
    try:
        def run():
            out = ns.run(sys.executable, __file__, "worker", timeout=120).stdout
            return json.loads(out.splitlines()[-1])
        res = benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        ns.delete()
    assert res["errors"] == 0 and res["adverts"] == 20 * N
    ns_per = res["seconds"] * 1e9 / res["adverts"]
    benchmark.extra_info["ns_per_advert"] = round(ns_per, 1)
    benchmark.extra_info["sendmmsg_calls"] = res["batches"]
    print(f"\ntick() with raw sockets: {ns_per:.0f} ns/advert "
          f"({res['adverts']} adverts, {res['batches']} sendmmsg calls)")


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    _raw_socket_worker()
