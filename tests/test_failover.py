"""Two vrrpd hosts in namespaces: election, crash and graceful failover,
preemption, nopreempt and preempt_delay; v2/v3, IPv4/IPv6, multicast/unicast.

Timing bounds are the protocol's (RFC 5798 6.1): a backup takes over at
most Master_Down_Interval after the master's last advert, so at most that
long after a kill -9; after a priority-0 advert (SIGTERM), within
Skew_Time.  The slack covers the notify fifo's delivery only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from daemons import DaemonProc, vips_on
from netns import wait_for
from rfc_timers import SLACK, master_down_interval, skew_time
from vrrpd.lab.conf import LabSpec, host_config, vip

pytestmark = [pytest.mark.netns]


class Pair:
    """host 0 (priority 200) and host 1 (priority 100) running one instance VI_0."""

    def __init__(self, lan, tmp_path, version, family, unicast, extra0="", extra1=""):
        self.lan = lan(hosts=2)
        self.version, self.family = version, family
        self.advert_int = 1.0 if version == 2 else 0.1
        self.spec = LabSpec(instances=1, version=version, advert_int=self.advert_int,
                            family=family, unicast=unicast, notify_fifo="@FIFO@")
        self.tmp = str(tmp_path)
        self.prios = (200, 100)
        self.extra = (extra0, extra1)
        self.procs: list[DaemonProc | None] = [None, None]
        self.vip = vip(self.spec, 0) + ("/128" if family == 6 else "/32")

    def config(self, i: int) -> str:
        other = 1 - i
        peers = [{0: self.lan.host_ip(other, self.family)}]
        src = {0: self.lan.host_ip(i, self.family)}
        self.spec.extra_instance = self.extra[i]
        return host_config(self.spec, i, peers=peers, src=src, priority=self.prios[i])

    def start(self, i: int, tag: str = "", args: tuple = ()) -> DaemonProc:
        d = DaemonProc(self.lan.hosts[i], "vrrpd", self.config(i), self.tmp, tag=tag,
                       extra_args=args)
        self.procs[i] = d.start()
        return d

    def has_vip(self, i: int) -> bool:
        return self.vip in vips_on(self.lan.hosts[i])

    def mdi(self, i: int) -> float:
        return master_down_interval(self.version, self.prios[i], self.advert_int)

    def skew(self, i: int) -> float:
        return skew_time(self.version, self.prios[i], self.advert_int)

    def close(self):
        for d in self.procs:
            if d is not None:
                d.stop()


@pytest.fixture
def pair(lan, tmp_path):
    made = []

    def make(*args, **kw):
        p = Pair(lan, tmp_path, *args, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


CASES = [
    pytest.param(3, 4, False, id="v3-ipv4-multicast"),
    pytest.param(3, 6, False, id="v3-ipv6-multicast"),
    pytest.param(3, 4, True, id="v3-ipv4-unicast"),
    pytest.param(3, 6, True, id="v3-ipv6-unicast"),
    pytest.param(2, 4, False, id="v2-ipv4-multicast"),
    pytest.param(2, 4, True, id="v2-ipv4-unicast"),
]


@pytest.mark.parametrize("version,family,unicast", CASES)
def test_election_crash_preempt_graceful(pair, version, family, unicast):
    p = pair(version, family, unicast)
    m = p.start(0)
    m.wait_state("VI_0", "MASTER", timeout=10)
    b = p.start(1)
    b.wait_state("VI_0", "BACKUP")
    time.sleep(2 * p.advert_int)
    assert b.state("VI_0") == "BACKUP", "the lower-priority host must stay BACKUP"
    assert p.has_vip(0) and not p.has_vip(1)

    # kill -9 of the master: takeover within Master_Down_Interval.
    t_kill = m.signal(signal.SIGKILL)
    t_master = b.wait_state("VI_0", "MASTER", timeout=p.mdi(1) + 5)
    assert t_master - t_kill <= p.mdi(1) + SLACK, (t_master - t_kill, p.mdi(1))
    assert p.has_vip(1)

    # The old master comes back and preempts (priority 200 > 100).
    m = p.start(0, tag="r")
    m.wait_state("VI_0", "MASTER", timeout=p.mdi(0) + 5)
    b.wait_state("VI_0", "BACKUP", timeout=5)
    time.sleep(0.3)
    assert p.has_vip(0) and not p.has_vip(1)

    # SIGTERM: priority 0 advert, takeover within Skew_Time.
    t_term = m.signal(signal.SIGTERM)
    t_master = b.wait_state("VI_0", "MASTER", timeout=5)
    assert t_master - t_term <= p.skew(1) + SLACK, (t_master - t_term, p.skew(1))
    assert m.wait_exit() == 0
    assert p.has_vip(1) and not p.has_vip(0), "a stopped master removes its VIPs"
    assert m.state("VI_0") == "STOP"


def test_graceful_stop_does_not_wait_for_the_metrics_server(pair):
    """Shutting the metrics server down waits out its poll interval (up to
    0.5 s, wherever it was in it): the priority-0 advert must not wait for
    that, nor the backup's takeover after it."""
    p = pair(3, 4, False)
    m = p.start(0, args=("--metrics", "127.0.0.1:9650"))
    m.wait_state("VI_0", "MASTER", timeout=10)
    b = p.start(1)
    b.wait_state("VI_0", "BACKUP")
    time.sleep(0.3)
    t_term = m.signal(signal.SIGTERM)
    t_master = b.wait_state("VI_0", "MASTER", timeout=5)
    assert t_master - t_term <= p.skew(1) + SLACK, (t_master - t_term, p.skew(1))
    assert m.wait_exit() == 0


def test_nopreempt_keeps_lower_priority_master(pair):
    p = pair(3, 4, False, extra0="nopreempt")
    b = p.start(1)
    b.wait_state("VI_0", "MASTER", timeout=5)
    m = p.start(0)
    m.wait_state("VI_0", "BACKUP")
    time.sleep(3 * p.mdi(0))
    assert m.state("VI_0") == "BACKUP" and b.state("VI_0") == "MASTER"
    assert p.has_vip(1) and not p.has_vip(0)


def test_preempt_delay(pair):
    delay = 1.5
    p = pair(3, 4, False, extra0=f"preempt_delay {delay}")
    b = p.start(1)
    b.wait_state("VI_0", "MASTER", timeout=5)
    m = p.start(0)
    t0 = m.wait_state("VI_0", "BACKUP")
    t_master = m.wait_state("VI_0", "MASTER", timeout=delay + 5)
    # keepalived: preempt_delay runs from start-up; then the lower-priority
    # master's adverts are discarded and the down timer runs out.
    assert t_master - t0 >= delay - 0.05
    assert t_master - t0 <= delay + p.mdi(0) + 0.2
    b.wait_state("VI_0", "BACKUP", timeout=5)


@pytest.mark.parametrize("family", [4, 6])
def test_new_master_announces_vip(pair, family):
    """Gratuitous ARP / unsolicited NA for the VIP from the new master's MAC."""
    p = pair(3, family, False)
    watcher = p.lan.hosts[0]
    mac = p.lan.hosts[1].run("cat", "/sys/class/net/eth0/address").stdout.strip()
    if family == 4:
        filt, fields = "arp", ["-e", "arp.src.proto_ipv4", "-e", "arp.src.hw_mac",
                               "-e", "arp.dst.proto_ipv4"]
    else:
        filt, fields = "icmp6", ["-e", "icmpv6.nd.na.target_address",
                                 "-e", "icmpv6.opt.linkaddr", "-e", "icmpv6.nd.na.flag.o"]
    cap = watcher.popen("tshark", "-l", "-q", "-i", "eth0", "-a", "duration:60", "-f", filt,
                        "-T", "fields", *fields, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        text=True)
    wait_for(lambda: "Capture started" in os.read(cap.stderr.fileno(), 4096).decode(), 30,
             what="tshark listening")
    b = p.start(1)
    b.wait_state("VI_0", "MASTER", timeout=20)
    time.sleep(1.0)     # the first burst is sent right after the VIPs are added
    cap.send_signal(signal.SIGINT)
    out, _ = cap.communicate(timeout=20)
    rows = [line.split("\t") for line in out.splitlines() if line.strip()]
    address = p.vip.split("/")[0]
    announced = [r for r in rows if r[0] == address]
    assert announced, rows
    assert all(r[1] == mac for r in announced), (mac, announced)
    if family == 4:
        assert all(r[2] == address for r in announced)   # gratuitous: target = sender
    else:
        assert all(r[2] in ("1", "True") for r in announced)   # override flag
