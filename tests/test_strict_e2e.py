"""vrrp_strict end to end: the VIP of a master without accept mode drops traffic
(RFC 5798 6.4.3; ping from the peer is the oracle), with `accept` it answers; a
keepalived 2.2.7 strict peer interoperates in both roles; and `vrrpd -t` rejects
strict-mode configuration errors with FILE:LINE (all that keepalived -t rejects).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys

import pytest

from daemons import KEEPALIVED, DaemonProc

HAVE_KEEPALIVED = shutil.which("keepalived") is not None or os.path.exists("/usr/sbin/keepalived")
pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")]

VIP = "192.0.2.100"


def strict_config(priority: int, extra: str = "") -> str:
    return f"""
global_defs {{
    vrrp_strict
    vrrp_notify_fifo @FIFO@
    vrrp_garp_master_delay 0
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 61
    priority {priority}
    advert_int 0.2
    version 3
    {extra}
    virtual_ipaddress {{
        {VIP}/24
    }}
}}
"""


def pings(ns, address: str) -> bool:
    return ns.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def nft_tables(ns) -> str:
    return ns.run("nft", "list", "tables").stdout


@pytest.mark.parametrize("accept", [False, True], ids=["no-accept", "accept"])
def test_strict_master_drops_vip_traffic_unless_accept(lan, tmp_path, accept):
    net = lan(hosts=2)
    d = DaemonProc(net.hosts[0], "vrrpd", strict_config(200, "accept" if accept else ""),
                   str(tmp_path)).start()
    try:
        d.wait_state("VI_1", "MASTER")
        assert pings(net.hosts[1], net.host_ip(0)), "the segment itself does not work"
        assert pings(net.hosts[1], VIP) == accept
        assert ("keepalived" in nft_tables(net.hosts[0])) == (not accept)
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        assert "keepalived" not in nft_tables(net.hosts[0]), "vrrpd left its nftables table"
    finally:
        d.stop()


@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="keepalived not installed")
@pytest.mark.keepalived
@pytest.mark.parametrize("master_kind", ["vrrpd", "keepalived"])
def test_strict_with_keepalived(lan, tmp_path, master_kind):
    net = lan(hosts=2)
    kinds = (master_kind, "keepalived" if master_kind == "vrrpd" else "vrrpd")
    procs = [DaemonProc(net.hosts[i], kinds[i], strict_config((200, 100)[i]), str(tmp_path))
             for i in range(2)]
    m, b = procs
    try:
        m.start().wait_state("VI_1", "MASTER")
        b.start().wait_state("VI_1", "BACKUP")
        assert not pings(net.hosts[1], VIP), f"{kinds[0]} master answered on its VIP"
        m.signal(signal.SIGTERM)
        b.wait_state("VI_1", "MASTER", timeout=5)
        m.wait_exit()
        assert pings(net.hosts[0], net.host_ip(1)), "the segment itself does not work"
        assert not pings(net.hosts[0], VIP), f"{kinds[1]} master answered on its VIP"
    finally:
        for d in procs:
            d.stop()


# case -> (instance lines, line vrrpd blames, does keepalived 2.2.7 -t reject it?).
# keepalived.conf(5) forbids unicast peers under vrrp_strict, but 2.2.7's -t accepts
# them (measured, exit 0): vrrpd rejects them anyway rather than run a mode the man
# page rules out.
CASES = {
    "unicast": ("unicast_src_ip 192.0.2.10\n    unicast_peer {\n        192.0.2.11\n    }",
                "vrrp_instance", False),
    "auth": ("authentication {\n        auth_type PASS\n        auth_pass secret\n    }",
             "authentication", True),
    "valid": ("", None, False),
}


@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="keepalived not installed")
@pytest.mark.keepalived
@pytest.mark.parametrize("case", sorted(CASES))
def test_strict_config_errors(lan, tmp_path, case):
    """Run where eth0 exists: keepalived -t also fails on warnings such as a missing interface."""
    extra, culprit, keepalived_rejects = CASES[case]
    text = strict_config(100, extra).replace("version 3", "version 2").replace("advert_int 0.2",
                                                                             "advert_int 1")
    path = tmp_path / "strict.conf"
    path.write_text(text.replace("@FIFO@", str(tmp_path / "fifo")))
    ns = lan(hosts=1).hosts[0]
    ka = ns.run(KEEPALIVED, "-t", "-f", str(path), check=False)
    ours = ns.run(sys.executable, "-m", "vrrpd.core.service", "-t", "-f", str(path), check=False)
    assert (ka.returncode != 0) == keepalived_rejects, (ka.returncode, ka.stdout, ka.stderr)
    assert (ours.returncode != 0) == (culprit is not None), ours.stderr
    if culprit:
        line = next(n for n, t in enumerate(text.splitlines(), 1) if t.strip().startswith(culprit))
        assert f"{path}:{line}:" in ours.stderr and "strict" in ours.stderr, ours.stderr
