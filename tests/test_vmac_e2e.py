"""use_vmac end to end: vrrpd and Debian's keepalived 2.2.7 on one segment, both
with use_vmac, in both roles.  Oracles: tshark on a third host (the adverts' source
MAC on the wire must be the virtual MAC 00:00:5e:00:01:VRID, RFC 5798 7.3), that
host's ARP request for the VIP (answered from the virtual MAC only, scapy),
the fifo for failover both ways, and `ip link` for the vmac's removal at shutdown.

Also here: IPv4 and IPv6 instances sharing an interface and a VRID (VRRPv3) elect
independently (the engine has one socket per interface and family).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time

import pytest

from children import child
from daemons import DaemonProc, vips_on


HAVE_KEEPALIVED = shutil.which("keepalived") is not None or os.path.exists("/usr/sbin/keepalived")
pytestmark = [pytest.mark.netns]

VRID = 51
VMAC = f"00:00:5e:00:01:{VRID:02x}"
VMAC_NAME = f"vrrp.{VRID}"
VIP = "192.0.2.100"             # on the client's subnet: it ARPs for it directly
ADVERT_INT = 0.2


def vmac_config(priority: int) -> str:
    return f"""
global_defs {{
    vrrp_notify_fifo @FIFO@
    vrrp_garp_master_delay 0
    vrrp_garp_master_repeat 1
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    use_vmac
    virtual_router_id {VRID}
    priority {priority}
    advert_int {ADVERT_INT}
    version 3
    virtual_ipaddress {{
        {VIP}/32
    }}
}}
"""


def advert_sources(ns, seconds: float = 1.2) -> set[tuple[str, str]]:
    """(eth.src, ip.src) of the VRRP adverts ns sees on eth0."""
    out = ns.run("tshark", "-q", "-i", "eth0", "-a", f"duration:{seconds}", "-f", "ip proto 112",
                 "-T", "fields", "-e", "eth.src", "-e", "ip.src", check=False,
                 timeout=seconds + 20).stdout
    return {tuple(line.split("\t")) for line in out.splitlines() if line.strip()}


def arp_answerers(client, vip: str = VIP) -> set[str]:
    """The MACs that answer a broadcast ARP request for vip (every answer within 0.5 s)."""
    return set(client.run(sys.executable, child("arp_who_has"), vip, "0.5").stdout.split())


def has_link(ns, name: str) -> bool:
    return ns.run("ip", "link", "show", name, check=False).returncode == 0


def sysctl(ns, key: str) -> str:
    return ns.run("sysctl", "-n", key).stdout.strip()


@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="keepalived not installed")
@pytest.mark.keepalived
@pytest.mark.parametrize("master_kind", ["vrrpd", "keepalived"])
def test_vmac_with_keepalived(lan, tmp_path, master_kind):
    net = lan(hosts=3)
    client = net.hosts[2]
    kinds = (master_kind, "keepalived" if master_kind == "vrrpd" else "vrrpd")
    ips = (net.host_ip(0), net.host_ip(1))
    vrrpd_host = net.hosts[kinds.index("vrrpd")]
    base_sysctls = {k: sysctl(vrrpd_host, f"net.ipv4.conf.eth0.{k}")
                    for k in ("arp_ignore", "arp_filter")}
    procs = []

    def start(i, tag=""):
        d = DaemonProc(net.hosts[i], kinds[i], vmac_config((200, 100)[i]), str(tmp_path), tag=tag)
        procs.append(d)
        return d.start()

    try:
        m = start(0)
        m.wait_state("VI_1", "MASTER")
        b = start(1)
        b.wait_state("VI_1", "BACKUP")
        # vrrpd made its vmac (keepalived's own is checked in test_vmac.py).
        assert "macvlan" in vrrpd_host.run("ip", "-d", "link", "show", VMAC_NAME).stdout
        assert f"{VIP}/32" in vips_on(net.hosts[0], VMAC_NAME)
        assert advert_sources(client) == {(VMAC, ips[0])}
        assert arp_answerers(client) == {VMAC}

        # Failover to the backup (graceful: priority 0), then preemption back.
        m.signal(signal.SIGTERM)
        b.wait_state("VI_1", "MASTER", timeout=5)
        m.wait_exit()
        if kinds[0] == "vrrpd":
            assert not has_link(net.hosts[0], VMAC_NAME), "vrrpd left its vmac behind"
        time.sleep(2 * ADVERT_INT)
        assert advert_sources(client) == {(VMAC, ips[1])}
        assert f"{VIP}/32" in vips_on(net.hosts[1], VMAC_NAME)
        assert arp_answerers(client) == {VMAC}

        m = start(0, tag="r")
        m.wait_state("VI_1", "MASTER")
        b.wait_state("VI_1", "BACKUP", timeout=5)
        time.sleep(2 * ADVERT_INT)
        assert advert_sources(client) == {(VMAC, ips[0])}
        assert arp_answerers(client) == {VMAC}

        # vrrpd's shutdown removes its vmac and restores the base's ARP sysctls.
        d = m if kinds[0] == "vrrpd" else b
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        assert not has_link(vrrpd_host, VMAC_NAME), "vrrpd left its vmac behind"
        assert {k: sysctl(vrrpd_host, f"net.ipv4.conf.eth0.{k}")
                for k in base_sysctls} == base_sysctls
    finally:
        for d in procs:
            d.stop()


DUAL = """
global_defs {{
    vrrp_notify_fifo @FIFO@
    vrrp_garp_master_delay 0
}}
vrrp_instance V4 {{
    interface eth0
    virtual_router_id 9
    priority {p4}
    advert_int 0.2
    version 3
    virtual_ipaddress {{ 198.19.9.1/32 }}
}}
vrrp_instance V6 {{
    interface eth0
    virtual_router_id 9
    priority {p6}
    advert_int 0.2
    version 3
    virtual_ipaddress {{ 2001:db8:9::1/128 }}
}}
"""


def test_ipv4_and_ipv6_share_vrid(lan, tmp_path):
    """VRID 9 in both families on one interface: host 0 wins IPv4, host 1 wins IPv6,
    and a failover in one family leaves the other alone."""
    net = lan(hosts=2)
    a = DaemonProc(net.hosts[0], "vrrpd", DUAL.format(p4=200, p6=100), str(tmp_path)).start()
    b = DaemonProc(net.hosts[1], "vrrpd", DUAL.format(p4=100, p6=200), str(tmp_path)).start()
    try:
        a.wait_state("V4", "MASTER")
        b.wait_state("V6", "MASTER")
        a.wait_state("V6", "BACKUP")
        b.wait_state("V4", "BACKUP")
        assert "198.19.9.1/32" in vips_on(net.hosts[0])
        assert "198.19.9.1/32" not in vips_on(net.hosts[1])
        assert "2001:db8:9::1/128" in vips_on(net.hosts[1])
        assert "2001:db8:9::1/128" not in vips_on(net.hosts[0])
        # Both families' adverts carry VRID 9 on the wire, from the expected masters.
        out = net.hosts[0].run("tshark", "-q", "-i", "eth0", "-a", "duration:1",
                               "-f", "ip proto 112 or ip6 proto 112", "-T", "fields",
                               "-e", "vrrp.virt_rtr_id", "-e", "ip.src", "-e", "ipv6.src",
                               check=False, timeout=30).stdout
        seen = {tuple(f for f in line.split("\t") if f)
                for line in out.splitlines() if line.strip()}
        assert seen == {("9", net.host_ip(0)), ("9", net.hosts[1].link_local())}, seen
        # Killing host 1 moves only IPv6; host 0's IPv4 mastership is untouched.
        before = len(a.fifo.events())
        b.kill()
        a.wait_state("V6", "MASTER", timeout=5)
        assert [e[2:4] for e in a.fifo.events()[before:]] == [("V6", "MASTER")]
    finally:
        a.stop()
        b.stop()
