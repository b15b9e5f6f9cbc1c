"""The engine on real raw sockets between two namespace hosts.

Each host runs this file as a script (`peer` mode): vrrpd.net.sockets + Engine on
a uvloop loop with one add_reader per socket and one call_at timer, a few
IPv4 VRRPv3 instances and one IPv6 instance.  tshark in the switch namespace
is the independent judge of what goes on the wire.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from netns import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
N4 = 3                                      # IPv4 instances, VRIDs 1..N4
VRID6 = 50


def peer(conf: dict) -> None:
    """Run the engine until killed; rewrite conf['status'] as states change."""
    import uvloop
    from vrrpd import engine as E
    from vrrpd.net.sockets import open_vrrp_socket

    ifindex = socket.if_nametoindex("eth0")
    s4 = open_vrrp_socket(socket.AF_INET, "eth0", ifindex)
    s6 = open_vrrp_socket(socket.AF_INET6, "eth0", ifindex)
    eng = E.Engine(64)
    sid4 = eng.add_socket(s4.fileno(), socket.AF_INET, ifindex)
    sid6 = eng.add_socket(s6.fileno(), socket.AF_INET6, ifindex)
    a4 = socket.inet_pton(socket.AF_INET, conf["addr4"])
    a6 = socket.inet_pton(socket.AF_INET6, conf["addr6"])
    idx = {}
    for vrid in range(1, N4 + 1):
        idx[f"v4-{vrid}"] = eng.add_instance(
            sock_id=sid4, vrid=vrid, version=3, priority=conf["prio"], advert_int_cs=10,
            src=a4, dsts=[socket.inet_aton("224.0.0.18")],
            vips=[socket.inet_aton(f"192.0.2.{100 + vrid}")])
    idx["v6"] = eng.add_instance(
        sock_id=sid6, vrid=VRID6, version=3, priority=conf["prio"], advert_int_cs=10,
        src=a6, dsts=[socket.inet_pton(socket.AF_INET6, "ff02::12")],
        vips=[socket.inet_pton(socket.AF_INET6, "2001:db8::50")])

    loop = uvloop.new_event_loop()
    us = lambda: int(loop.time() * 1_000_000)        # noqa: E731
    handle = None

    def report():
        status = {name: E.STATE_NAMES[eng.state(i)] for name, i in idx.items()}
        status["rejects"] = {k: v for sid in (sid4, sid6)
                             for k, v in eng.socket_counters(sid).items()
                             if k.startswith("reject") and v}
        status["received"] = sum(eng.counters(i)["adverts_received"] for i in idx.values())
        tmp = conf["status"] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(status, f)
        os.replace(tmp, conf["status"])

    def rearm():
        nonlocal handle
        if handle:
            handle.cancel()
        d = eng.next_deadline()
        handle = loop.call_at(d / 1_000_000, on_timer) if d >= 0 else None
        events = eng.pop_events()
        if events:
            report()

    def on_timer():
        eng.tick(us())
        rearm()

    def on_readable(sid):
        eng.on_readable(sid, us())
        rearm()

    loop.add_reader(s4.fileno(), on_readable, sid4)
    loop.add_reader(s6.fileno(), on_readable, sid6)
    for i in idx.values():
        eng.start(i, us())
    rearm()
    def periodic():
        report()
        loop.call_later(0.2, periodic)

    periodic()
    loop.run_forever()


def _status(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _all(path, state):
    st = _status(path)
    return st and all(st.get(k) == state for k in [f"v4-{v}" for v in range(1, N4 + 1)] + ["v6"])


@pytest.mark.netns
@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_two_hosts_elect_send_good_adverts_and_fail_over(lan, tmp_path):
    net = lan(hosts=2)
    peers, status = [], []
    for n, (host, prio) in enumerate(zip(net.hosts, (150, 100))):
        conf = {"addr4": net.host_ip(n), "addr6": host.link_local(), "prio": prio,
                "status": str(tmp_path / f"status{n}.json")}
        status.append(conf["status"])
        log = open(tmp_path / f"peer{n}.log", "w")
        peers.append(host.popen(PY, os.path.join(HERE, "test_engine_sockets.py"), "peer",
                                json.dumps(conf), stdout=log, stderr=subprocess.STDOUT,
                                cwd=os.path.dirname(HERE)))
    wait_for(lambda: _all(status[0], "MASTER") and _all(status[1], "BACKUP"),
             timeout=10, what="host0 MASTER and host1 BACKUP")
    wait_for(lambda: _status(status[1])["received"] > 0, timeout=5, what="adverts received")

    pcap = tmp_path / "wire.pcap"
    net.switch.run("tshark", "-q", "-i", "br0", "-a", "duration:2", "-w", str(pcap),
                   timeout=30)
    os.chmod(tmp_path, 0o755)
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-Y", "vrrp", "-T", "fields", "-e", "ip.src",
         "-e", "ipv6.src", "-e", "ip.ttl", "-e", "ipv6.hlim", "-e", "vrrp.virt_rtr_id",
         "-e", "vrrp.prio", "-e", "vrrp.checksum.status", "-o", "vrrp.v3_checksum_as_in_v2:FALSE"],
        capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) > 40                      # 4 instances x 10/s x 2 s, allow losses
    for src4, src6, ttl, hlim, vrid, prio, cksum in rows:
        assert (src4 or src6) in (net.host_ip(0), net.hosts[0].link_local())
        assert (ttl or hlim) == "255"
        assert prio == "150"
        assert cksum == "1", f"tshark says checksum status {cksum} for VRID {vrid}"
    assert {r[4] for r in rows} == {"1", "2", "3", str(VRID6)}
    assert not _status(status[1])["rejects"]

    os.killpg(peers[0].pid, signal.SIGKILL)    # kill -9 the master
    # Master_Down_Interval is ~0.34 s; the timeout only bounds the test
    wait_for(lambda: _all(status[1], "MASTER"), timeout=5, what="host1 takes over")


if __name__ == "__main__" and sys.argv[1:2] == ["peer"]:
    sys.path.insert(0, os.path.dirname(HERE))
    peer(json.loads(sys.argv[2]))
