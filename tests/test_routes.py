"""virtual_routes / virtual_rules over rtnetlink: messages decoded back by pyroute2 (oracle
for the encoding), then added and removed inside a namespace with iproute2 as the
oracle for what the kernel holds.  The module runs inside the namespace."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from children import child
from vrrpd.config import load
from vrrpd.net.routes import (
    RTM_DELROUTE,
    RTM_NEWROUTE,
    RTM_NEWRULE,
    RouteError,
    RouteManager,
    route_message,
    rule_message,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv/bin/python")

CONF = """
vrrp_instance V {
    interface eth0
    virtual_router_id 7
    virtual_ipaddress { 192.0.2.100/24 }
    virtual_routes {
        198.51.100.0/24 via 192.0.2.1 dev eth0 table 100 metric 5
        blackhole 203.0.113.0/24
        unreachable 203.0.113.128/25 table 101
        2001:db8:1::/48 via 2001:db8::1 metric 7 mtu 1400
        src 192.0.2.10 198.51.100.128/25 dev eth0 scope link
        default via 192.0.2.1 table 102
    }
    virtual_rules {
        from 192.0.2.100 table 100 priority 1000
        to 198.51.100.0/24 fwmark 0x10/0xff table 101 priority 1001
        from 2001:db8::100 table 100 priority 1002
        from all iif eth0 ipproto tcp dport 80-90 table 100 priority 1003
        from 192.0.2.200 not table 100 priority 1004
    }
}
"""


@pytest.fixture
def inst(tmp_path):
    path = tmp_path / "routes.conf"
    path.write_text(CONF)
    return load(str(path)).config.instances["V"]


def _decode(cls, data):
    m = cls(bytes(data))
    m.decode()
    return m


def test_route_messages_decode(inst):
    ifindex = {"eth0": 3}.get
    r0 = _decode(rtmsg, route_message(inst.virtual_routes[0], RTM_NEWROUTE, ifindex))
    assert (r0["dst_len"], r0["table"], r0["proto"], r0["scope"], r0["type"]) == (24, 100, 18, 0, 1)
    assert r0.get_attr("RTA_DST") == "198.51.100.0" and r0.get_attr("RTA_GATEWAY") == "192.0.2.1"
    assert r0.get_attr("RTA_OIF") == 3 and r0.get_attr("RTA_PRIORITY") == 5
    bh = _decode(rtmsg, route_message(inst.virtual_routes[1], RTM_NEWROUTE, ifindex))
    assert (bh["type"], bh["table"]) == (6, 254)
    direct = _decode(rtmsg, route_message(inst.virtual_routes[4], RTM_NEWROUTE, ifindex))
    assert direct["scope"] == 253 and direct.get_attr("RTA_PREFSRC") == "192.0.2.10"
    gone = _decode(rtmsg, route_message(inst.virtual_routes[0], RTM_DELROUTE, ifindex))
    assert gone["scope"] == 255                     # wildcard scope when deleting
    rule = _decode(fibmsg, rule_message(inst.virtual_rules[1], RTM_NEWRULE))
    assert (rule["dst_len"], rule["table"], rule["action"]) == (24, 101, 1)
    assert rule.get_attr("FRA_FWMARK") == 0x10 and rule.get_attr("FRA_FWMASK") == 0xFF
    assert _decode(fibmsg, rule_message(inst.virtual_rules[4], RTM_NEWRULE))["flags"] == 2


def test_unsupported_options_are_counted_rejections(inst, tmp_path):
    path = tmp_path / "bad.conf"
    path.write_text(CONF.replace("metric 5", "nexthop_weird 5").replace(
        "dev eth0 scope link", "dev nosuchdev scope link"))
    bad = load(str(path)).config.instances["V"]
    with pytest.raises(RouteError):
        route_message(bad.virtual_routes[0], RTM_NEWROUTE, {"eth0": 3}.get)
    with pytest.raises(RouteError):
        route_message(bad.virtual_routes[4], RTM_NEWROUTE, {"eth0": 3}.get)

    class NoKernel:                          # nothing may reach the kernel
        async def errnos(self, msgs):
            return [0] * len(msgs)

    import asyncio
    m = RouteManager({"eth0": 3}.get, NoKernel())
    res = asyncio.run(m.add([bad.virtual_routes[0], bad.virtual_routes[4]]))
    assert not res.ok and len(res.failed) == 2 and m.stats["rejected"] == 2 and not m.added


def _routes(ns):
    out = []
    for fam in ("-4", "-6"):
        out += json.loads(ns.run("ip", "-j", fam, "route", "show", "table", "all",
                                 "proto", "keepalived").stdout)
    return out


def _rules(ns):
    return [r for fam in ("-4", "-6") for r in json.loads(ns.run("ip", "-j", fam, "rule").stdout)
            if r.get("protocol") == "keepalived"]


@pytest.mark.netns
def test_routes_and_rules_appear_and_disappear(lan, tmp_path):
    h0 = lan(hosts=1).hosts[0]
    path = tmp_path / "routes.conf"
    path.write_text(CONF)
    p = h0.popen(PY, child("routes_driver"), str(path), stdin=subprocess.PIPE,
                 stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().split() == ["READY", "11", "0", "11"]
    routes = {(r["dst"], r.get("table", "main")): r for r in _routes(h0)}
    assert set(routes) == {("198.51.100.0/24", "100"), ("203.0.113.0/24", "main"),
                           ("203.0.113.128/25", "101"), ("2001:db8:1::/48", "main"),
                           ("198.51.100.128/25", "main"), ("default", "102")}
    assert routes[("198.51.100.0/24", "100")]["gateway"] == "192.0.2.1"
    assert routes[("198.51.100.0/24", "100")]["metric"] == 5
    assert routes[("203.0.113.0/24", "main")]["type"] == "blackhole"
    assert routes[("203.0.113.128/25", "101")]["type"] == "unreachable"
    assert routes[("2001:db8:1::/48", "main")]["metrics"] == [{"mtu": 1400}]
    assert routes[("198.51.100.128/25", "main")]["prefsrc"] == "192.0.2.10"
    rules = {r["priority"]: r for r in _rules(h0)}
    assert set(rules) == {1000, 1001, 1002, 1003, 1004}
    assert rules[1000]["src"] == "192.0.2.100" and rules[1000]["table"] == "100"
    assert rules[1001]["fwmark"] == "0x10" and rules[1001]["fwmask"] == "0xff"
    assert rules[1003]["iif"] == "eth0" and rules[1003]["ipproto"] == "tcp"
    assert "not" in rules[1004]
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.stdout.readline().split() == ["DONE", "11", "0"]
    p.wait(timeout=10)
    assert _routes(h0) == [] and _rules(h0) == []
