"""virtual_routes / virtual_rules (and static_routes / static_rules) over rtnetlink.

A Route/Rule from the config model (ip-route / ip-rule syntax, extra options kept as
pairs) becomes one RTM_NEWROUTE/NEWRULE; a transition batch sends all of them in one
Requester exchange.  keepalived order (vrrp.c): become master = VIPs, then routes, then
rules; leave master = rules, routes, then VIPs.  Defaults follow iproute2 (table main,
or local for local/broadcast/nat/anycast routes; scope link for a unicast route without
gateway) and keepalived (protocol "keepalived", 18, so `ip route show proto keepalived`
lists ours).  An option we cannot express is a counted, logged rejection of that one
route/rule, never an exception out of the manager.
"""
from __future__ import annotations

import errno
import functools
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Callable

from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from vrrpd.config.model import Route, Rule
from vrrpd.net.nlbatch import Requester, encode
from vrrpd.net import netlink as nl

log = logging.getLogger("vrrpd.net.routes")

RTM_NEWROUTE, RTM_DELROUTE, RTM_NEWRULE, RTM_DELRULE = 24, 25, 32, 33
RTPROT_KEEPALIVED = 18
RT_SCOPE_NOWHERE = 255
RTNH_F_ONLINK = 4
FIB_RULE_INVERT = 2
FR_ACT_TO_TBL, FR_ACT_GOTO = 1, 2
RT_TABLE_MAIN, RT_TABLE_LOCAL = 254, 255

ROUTE_TYPES = {"unicast": 1, "local": 2, "broadcast": 3, "anycast": 4, "multicast": 5,
               "blackhole": 6, "unreachable": 7, "prohibit": 8, "throw": 9, "nat": 10}
RULE_TYPES = {"unicast": FR_ACT_TO_TBL, "nop": 3, "blackhole": 6, "unreachable": 7, "prohibit": 8}
SCOPES = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
PROTOCOLS = {"redirect": 1, "kernel": 2, "boot": 3, "static": 4, "ra": 9, "dhcp": 16,
             "keepalived": RTPROT_KEEPALIVED}
IP_PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58, "sctp": 132}
ROUTE_METRICS = {"mtu": "RTAX_MTU", "advmss": "RTAX_ADVMSS", "window": "RTAX_WINDOW",
                 "hoplimit": "RTAX_HOPLIMIT", "initcwnd": "RTAX_INITCWND",
                 "initrwnd": "RTAX_INITRWND", "reordering": "RTAX_REORDERING"}
IPV6_PREF = {"low": 3, "medium": 0, "high": 1}
RT_TABLES_FILE = "/etc/iproute2/rt_tables"


class RouteError(ValueError):
    """A route/rule option we cannot turn into a netlink message."""


@functools.lru_cache(maxsize=1)
def _tables() -> dict[str, int]:
    """Table names: iproute2's built-ins plus /etc/iproute2/rt_tables (read once)."""
    names = {"default": 253, "main": RT_TABLE_MAIN, "local": RT_TABLE_LOCAL}
    try:
        with open(RT_TABLES_FILE) as f:
            for line in f:
                parts = line.split("#")[0].split()
                if len(parts) == 2 and parts[0].isdigit():
                    names[parts[1]] = int(parts[0])
    except OSError:
        pass
    return names


def _number(text: str, names: dict[str, int], what: str) -> int:
    if text in names:
        return names[text]
    try:
        return int(text, 0)
    except ValueError:
        raise RouteError(f"unknown {what} '{text}'") from None


def _range(text: str) -> str:
    """'80' or '80-90' -> pyroute2's 'start:end'."""
    lo, _, hi = text.partition("-")
    return f"{int(lo)}:{int(hi or lo)}"


def route_family(r: Route) -> int:
    for a in (r.destination, r.via, r.src):
        if a is not None:
            return socket.AF_INET6 if a.version == 6 else socket.AF_INET
    return socket.AF_INET6 if r.inet6 else socket.AF_INET


def rule_family(r: Rule) -> int:
    for a in (r.from_, r.to):
        if a is not None:
            return socket.AF_INET6 if a.version == 6 else socket.AF_INET
    return socket.AF_INET6 if r.inet6 else socket.AF_INET


def route_message(r: Route, mtype: int, ifindex: Callable[[str], int | None]) -> bytearray:
    family = route_family(r)
    rtype = ROUTE_TYPES[r.type or "unicast"]
    m = rtmsg()
    m["family"] = family
    m["type"] = rtype
    m["proto"] = RTPROT_KEEPALIVED
    table = _number(r.table, _tables(), "table") if r.table else \
        RT_TABLE_LOCAL if r.type in ("local", "broadcast", "nat", "anycast") else RT_TABLE_MAIN
    attrs: list = [("RTA_TABLE", table)]
    m["table"] = table if table < 256 else 0
    if r.destination is not None:
        m["dst_len"] = r.destination.prefixlen
        attrs.append(("RTA_DST", str(r.destination.network_address)))
    for a, what in ((r.via, "via"), (r.src, "src")):
        if a is not None and (socket.AF_INET6 if a.version == 6 else socket.AF_INET) != family:
            raise RouteError(f"{what} {a} is not the route's address family")
    if r.via is not None:
        attrs.append(("RTA_GATEWAY", str(r.via)))
    if r.src is not None:
        attrs.append(("RTA_PREFSRC", str(r.src)))
    if r.dev is not None:
        index = ifindex(r.dev)
        if index is None:
            raise RouteError(f"interface {r.dev} does not exist")
        attrs.append(("RTA_OIF", index))
    scope = None
    metrics = []
    for key, value in r.options:
        if key in ("metric", "preference", "priority"):
            attrs.append(("RTA_PRIORITY", _number(value, {}, key)))
        elif key in ("proto", "protocol"):
            m["proto"] = _number(value, PROTOCOLS, "protocol")
        elif key == "scope":
            scope = _number(value, SCOPES, "scope")
        elif key in ("tos", "dsfield"):
            m["tos"] = _number(value, {}, key)
        elif key in ("realm", "realms"):
            attrs.append(("RTA_FLOW", _number(value, {}, key)))
        elif key == "pref" and family == socket.AF_INET6:
            attrs.append(("RTA_PREF", _number(value, IPV6_PREF, "pref")))
        elif key == "onlink":
            m["flags"] = RTNH_F_ONLINK
        elif key in ROUTE_METRICS:
            metrics.append((ROUTE_METRICS[key], _number(value, {}, key)))
        else:
            raise RouteError(f"route option '{key}' is not supported")
    if metrics:
        attrs.append(("RTA_METRICS", {"attrs": metrics}))
    if mtype == RTM_DELROUTE:
        scope = RT_SCOPE_NOWHERE            # the kernel's wildcard when deleting
    elif scope is None:
        scope = (254 if r.type in ("local", "nat") else
                 253 if r.type in ("broadcast", "multicast", "anycast") or
                 (rtype == 1 and r.via is None) else 0)
    m["scope"] = scope
    m["attrs"] = attrs
    return encode(m, mtype, nl.NLM_F_CREATE | nl.NLM_F_EXCL if mtype == RTM_NEWROUTE else 0)


def rule_message(r: Rule, mtype: int) -> bytearray:
    m = fibmsg()
    m["family"] = rule_family(r)
    attrs: list = [("FRA_PROTOCOL", RTPROT_KEEPALIVED)]
    if r.from_ is not None:
        m["src_len"] = r.from_.prefixlen
        attrs.append(("FRA_SRC", str(r.from_.network_address)))
    if r.to is not None:
        m["dst_len"] = r.to.prefixlen
        attrs.append(("FRA_DST", str(r.to.network_address)))
    action = None
    for key, value in r.options:
        if key in ("priority", "preference", "pref", "order"):
            attrs.append(("FRA_PRIORITY", _number(value, {}, key)))
        elif key == "fwmark":
            mark, _, mask = value.partition("/")
            attrs.append(("FRA_FWMARK", _number(mark, {}, key)))
            if mask:
                attrs.append(("FRA_FWMASK", _number(mask, {}, "fwmask")))
        elif key in ("iif", "dev"):
            attrs.append(("FRA_IIFNAME", value))
        elif key == "oif":
            attrs.append(("FRA_OIFNAME", value))
        elif key == "not":
            m["flags"] = FIB_RULE_INVERT
        elif key in ("tos", "dsfield"):
            m["tos"] = _number(value, {}, key)
        elif key == "goto":
            action = FR_ACT_GOTO
            attrs.append(("FRA_GOTO", _number(value, {}, key)))
        elif key == "type":
            action = _number(value, RULE_TYPES, "rule type")
        elif key in ("proto", "protocol"):
            attrs[0] = ("FRA_PROTOCOL", _number(value, PROTOCOLS, "protocol"))
        elif key == "suppress_prefixlength":
            attrs.append(("FRA_SUPPRESS_PREFIXLEN", _number(value, {}, key)))
        elif key == "suppress_ifgroup":
            attrs.append(("FRA_SUPPRESS_IFGROUP", _number(value, {}, key)))
        elif key == "realms":
            attrs.append(("FRA_FLOW", _number(value, {}, key)))
        elif key == "l3mdev":
            attrs.append(("FRA_L3MDEV", 1))
        elif key == "uidrange":
            attrs.append(("FRA_UID_RANGE", _range(value)))
        elif key == "ipproto":
            attrs.append(("FRA_IP_PROTO", _number(value, IP_PROTOS, key)))
        elif key in ("sport", "dport"):
            attrs.append((f"FRA_{key[0].upper()}PORT_RANGE", _range(value)))
        else:
            raise RouteError(f"rule option '{key}' is not supported")
    if r.table is not None or action is None:
        # `ip rule add` without an action looks up table main.
        table = _number(r.table, _tables(), "table") if r.table else RT_TABLE_MAIN
        m["table"] = table if table < 256 else 0
        attrs.append(("FRA_TABLE", table))
        action = action or FR_ACT_TO_TBL
    m["action"] = action
    m["attrs"] = attrs
    return encode(m, mtype, nl.NLM_F_CREATE | nl.NLM_F_EXCL if mtype == RTM_NEWRULE else 0)


@dataclass
class Result:
    """Per route/rule.  `already`: EEXIST on add, not found on delete (harmless)."""
    done: list = field(default_factory=list)
    already: list = field(default_factory=list)
    failed: list = field(default_factory=list)      # (route or rule, errno or message)

    @property
    def ok(self) -> bool:
        return not self.failed


class RouteManager:
    """Adds/removes routes and rules in batches; remembers what it added for shutdown.

    ifindex(name) -> index or None resolves `dev` (LinkMonitor.ifindex in the daemon)."""

    def __init__(self, ifindex: Callable[[str], int | None], requester: Requester | None = None):
        self._ifindex = ifindex
        self._nl = requester or Requester()
        self._own_requester = requester is None
        self.added: dict[Route | Rule, None] = {}       # insertion-ordered set
        self.stats = dict(added=0, removed=0, already=0, failed=0, rejected=0)

    async def add(self, routes=(), rules=()) -> Result:
        return await self._batch([(r, RTM_NEWROUTE) for r in routes] +
                                 [(r, RTM_NEWRULE) for r in rules], adding=True)

    async def remove(self, routes=(), rules=()) -> Result:
        return await self._batch([(r, RTM_DELRULE) for r in rules] +
                                 [(r, RTM_DELROUTE) for r in routes], adding=False)

    async def remove_all(self) -> Result:
        return await self.remove([r for r in self.added if isinstance(r, Route)],
                                 [r for r in self.added if isinstance(r, Rule)])

    def close(self) -> None:
        if self._own_requester:
            self._nl.close()

    async def _batch(self, items: list, adding: bool) -> Result:
        result = Result()
        msgs, sent = [], []
        for obj, mtype in items:
            try:
                msgs.append(route_message(obj, mtype, self._ifindex) if isinstance(obj, Route)
                            else rule_message(obj, mtype))
                sent.append(obj)
            except (RouteError, ValueError, KeyError) as e:
                self.stats["rejected"] += 1
                log.error("%s:%d: %s not %s: %s", obj.where[0], obj.where[1],
                          type(obj).__name__.lower(), "added" if adding else "removed", e)
                result.failed.append((obj, str(e)))
        harmless = {errno.EEXIST} if adding else {errno.ESRCH, errno.ENOENT}
        for obj, code in zip(sent, await self._nl.errnos(msgs) if msgs else []):
            if code == 0:
                result.done.append(obj)
            elif code in harmless:
                result.already.append(obj)
            else:
                result.failed.append((obj, code))
                log.error("%s:%d: %s %s failed: %s", obj.where[0], obj.where[1],
                          "adding" if adding else "removing", type(obj).__name__.lower(),
                          os.strerror(code))
                continue
            if adding:
                self.added[obj] = None
            else:
                self.added.pop(obj, None)
        self.stats["added" if adding else "removed"] += len(result.done)
        self.stats["already"] += len(result.already)
        self.stats["failed"] += sum(1 for _, c in result.failed if isinstance(c, int))
        return result
