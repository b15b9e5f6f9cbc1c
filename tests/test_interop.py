"""vrrpd against Debian's real keepalived on one segment, in both roles.

Both daemons read the same generated keepalived.conf.  Checked: the right
master is elected across implementations, failover both ways (kill -9
within Master_Down_Interval, SIGTERM within Skew_Time), preemption back,
the VIP on exactly one host at every sampled moment of steady state, and
tshark's VRRP dissector rating vrrpd's adverts' checksums good.
"""
from __future__ import annotations

import signal
import shutil
import time

import pytest

from daemons import DaemonProc, vips_on
from rfc_timers import SLACK, master_down_interval, skew_time
from vrrpd.lab.conf import LabSpec, host_config, vip

pytestmark = [pytest.mark.netns, pytest.mark.keepalived,
              pytest.mark.skipif(shutil.which("keepalived") is None and
                                 not __import__("os").path.exists("/usr/sbin/keepalived"),
                                 reason="keepalived not installed")]


def sample_exactly_one(hosts, vip_cidr, seconds=1.0, step=0.05):
    owners = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        owners.append(tuple(i for i, h in enumerate(hosts) if vip_cidr in vips_on(h)))
        time.sleep(step)
    return owners


def tshark_checksums(ns, family, seconds=1.5):
    """(checksum status, ttl/hop limit, source) of VRRP packets seen on eth0."""
    ttl = "ip.ttl" if family == 4 else "ipv6.hlim"
    src = "ip.src" if family == 4 else "ipv6.src"
    out = ns.run("tshark", "-q", "-i", "eth0", "-a", f"duration:{seconds}", "-f", "ip proto 112"
                 if family == 4 else "ip6 proto 112", "-T", "fields", "-e", "vrrp.checksum.status",
                 "-e", ttl, "-e", src, check=False, timeout=seconds + 20).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("version,family", [(2, 4), (3, 4), (3, 6)],
                         ids=["v2-ipv4", "v3-ipv4", "v3-ipv6"])
@pytest.mark.parametrize("master_kind", ["keepalived", "vrrpd"])
def test_interop(lan, tmp_path, master_kind, version, family):
    backup_kind = "vrrpd" if master_kind == "keepalived" else "keepalived"
    net = lan(hosts=2)
    advert_int = 1.0 if version == 2 else 0.2
    spec = LabSpec(instances=1, version=version, advert_int=advert_int, family=family,
                   notify_fifo="@FIFO@")
    vip_cidr = vip(spec, 0) + ("/128" if family == 6 else "/32")
    kinds, prios = (master_kind, backup_kind), (200, 100)
    procs = []

    def start(i, tag=""):
        d = DaemonProc(net.hosts[i], kinds[i], host_config(spec, i, priority=prios[i]),
                       str(tmp_path), tag=tag)
        procs.append(d)
        return d.start()

    try:
        m = start(0)
        m.wait_state("VI_0", "MASTER", timeout=15)
        b = start(1)
        b.wait_state("VI_0", "BACKUP", timeout=15)
        time.sleep(3 * advert_int)
        assert b.state("VI_0") == "BACKUP" and m.state("VI_0") == "MASTER"
        assert set(sample_exactly_one(net.hosts, vip_cidr)) == {(0,)}

        seen = tshark_checksums(net.hosts[1], family)
        assert seen, "no VRRP packets captured"
        assert all(s[0] == "1" and s[1] == "255" for s in seen), seen   # 1 = Good

        t_kill = m.signal(signal.SIGKILL)
        mdi = master_down_interval(version, prios[1], advert_int)
        t_master = b.wait_state("VI_0", "MASTER", timeout=mdi + 5)
        assert t_master - t_kill <= mdi + SLACK, (t_master - t_kill, mdi)
        time.sleep(2 * advert_int)
        # A killed daemon cannot remove its VIPs (neither can a crashed host);
        # the restarted one clears them when it starts as BACKUP.
        assert vip_cidr in vips_on(net.hosts[1])
        if backup_kind == "vrrpd":
            seen = tshark_checksums(net.hosts[0], family)
            assert seen and all(s[0] == "1" and s[1] == "255" for s in seen), seen

        # The higher-priority host comes back and preempts across implementations.
        m.stop()
        m = start(0, tag="r")
        m.wait_state("VI_0", "MASTER", timeout=15)
        b.wait_state("VI_0", "BACKUP", timeout=5)
        time.sleep(2 * advert_int)
        assert set(sample_exactly_one(net.hosts, vip_cidr, 0.5)) == {(0,)}

        t_term = m.signal(signal.SIGTERM)
        skew = skew_time(version, prios[1], advert_int)
        t_master = b.wait_state("VI_0", "MASTER", timeout=5)
        # keepalived's fifo writes and its own shutdown are slower than ours:
        # allow an advert interval of slack when keepalived is the one stopping.
        slack = SLACK if master_kind == "vrrpd" else SLACK + advert_int
        assert t_master - t_term <= skew + slack, (t_master - t_term, skew)
    finally:
        for d in procs:
            d.stop()
