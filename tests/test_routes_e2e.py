"""virtual_routes / virtual_rules follow mastership in the running daemon:
present on the master only, moved on failover, removed at shutdown
(`ip route` / `ip rule` in each namespace are the oracle)."""
from __future__ import annotations

import signal

import pytest

from daemons import DaemonProc
from netns import wait_for

pytestmark = [pytest.mark.netns]


def config(priority: int) -> str:
    return f"""
global_defs {{
    vrrp_notify_fifo @FIFO@
    vrrp_garp_master_delay 0
}}
vrrp_instance VI_1 {{
    state BACKUP
    interface eth0
    virtual_router_id 71
    priority {priority}
    advert_int 0.1
    version 3
    virtual_ipaddress {{
        192.0.2.100/24
    }}
    virtual_routes {{
        198.51.100.0/24 via 192.0.2.1 dev eth0
        blackhole 203.0.113.0/24
    }}
    virtual_rules {{
        from 192.0.2.100/32 table 100
    }}
}}
"""


def has_routes(ns) -> tuple[bool, bool, bool]:
    routes = ns.run("ip", "route", "show").stdout
    rules = ns.run("ip", "rule", "show").stdout
    return ("198.51.100.0/24 via 192.0.2.1" in routes, "blackhole 203.0.113.0/24" in routes,
            "from 192.0.2.100 lookup 100" in rules)


def test_routes_and_rules_follow_the_master(lan, tmp_path):
    net = lan(hosts=2)
    a = DaemonProc(net.hosts[0], "vrrpd", config(200), str(tmp_path)).start()
    b = None
    try:
        a.wait_state("VI_1", "MASTER")
        b = DaemonProc(net.hosts[1], "vrrpd", config(100), str(tmp_path)).start()
        b.wait_state("VI_1", "BACKUP")
        wait_for(lambda: has_routes(net.hosts[0]) == (True, True, True), 5, what="routes on master")
        assert has_routes(net.hosts[1]) == (False, False, False)

        a.signal(signal.SIGTERM)
        assert a.wait_exit() == 0
        b.wait_state("VI_1", "MASTER")
        wait_for(lambda: has_routes(net.hosts[1]) == (True, True, True), 5, what="routes moved")
        assert has_routes(net.hosts[0]) == (False, False, False), "a stopped master removes them"

        b.signal(signal.SIGTERM)
        assert b.wait_exit() == 0
        assert has_routes(net.hosts[1]) == (False, False, False)
    finally:
        a.stop()
        if b is not None:
            b.stop()
