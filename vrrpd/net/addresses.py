"""AddressManager: add and remove virtual IPs in large batches over rtnetlink.

A failover may have to add 10,000 VIPs at once.  One RTM_NEWADDR per VIP with NLM_F_ACK,
packed many to a sendmsg() by nlbatch.Requester (chunks of SEND_BUDGET_S of the kernel's work,
sent from a thread of its own so that the loop never waits for the RTNL lock).  A takeover's
prebuilt messages (vrrpd._effects.VipMove) keep the ACK only on each send's last one.

Encoding: pyroute2's ifaddrmsg lays out one message per distinct shape (family, prefix,
ifindex, label, ...) - its encoder is too slow to call per VIP - and we copy
that template per VIP, patching sequence number and address bytes.

What keepalived sends (vrrp_ipaddress.c): IFA_LOCAL, IFA_BROADCAST and IFA_LABEL when set;
IPv6 VIPs get IFA_F_NODAD (usable at once, no dadfailed after a split brain) and /128s a
preferred lifetime of 0 (deprecated, so never picked as a source address).
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from vrrpd.net import netlink as nl
from vrrpd.net.nlbatch import Requester

log = logging.getLogger("vrrpd.net.addresses")

INFINITY_LIFE_TIME = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Vip:
    """One virtual address as keepalived's virtual_ipaddress block describes it."""
    address: str                    # normalised text form
    prefixlen: int
    ifindex: int
    label: str | None = None        # IPv4 only (keepalived ignores it for IPv6)
    scope: int = nl.RT_SCOPE_UNIVERSE
    broadcast: str | None = None    # IPv4 only

    @classmethod
    def parse(cls, text: str, ifindex: int, **kw) -> "Vip":
        """'192.0.2.1', '192.0.2.1/24', '2001:db8::1/64' (default /32 or /128)."""
        iface = ipaddress.ip_interface(text)
        return cls(str(iface.ip), iface.network.prefixlen, ifindex, **kw)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET

    @property
    def packed(self) -> bytes:
        return socket.inet_pton(self.family, self.address)


@dataclass
class BatchResult:
    """Outcome per VIP.  `already` = EEXIST on add / EADDRNOTAVAIL on remove: harmless."""
    done: list[Vip] = field(default_factory=list)
    already: list[Vip] = field(default_factory=list)
    failed: list[tuple[Vip, int]] = field(default_factory=list)     # (vip, errno)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


class _Template:
    """An encoded message of one shape plus where its variable bytes sit."""

    __slots__ = ("data", "addr_offsets", "brd_offset")

    def __init__(self, vip: Vip, mtype: int):
        six = vip.family == socket.AF_INET6
        msg = ifaddrmsg()
        msg["family"] = vip.family
        msg["prefixlen"] = vip.prefixlen
        msg["index"] = vip.ifindex
        msg["scope"] = 0 if six else vip.scope
        placeholder = "::" if six else "0.0.0.0"
        attrs: list[tuple[str, object]] = [("IFA_LOCAL", placeholder)]
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK
        if mtype == nl.RTM_NEWADDR:
            flags |= nl.NLM_F_CREATE | nl.NLM_F_EXCL
            if six:
                msg["flags"] = nl.IFA_F_NODAD
                if vip.prefixlen == 128:
                    attrs.append(("IFA_CACHEINFO", {"ifa_preferred": 0,
                                                    "ifa_valid": INFINITY_LIFE_TIME,
                                                    "cstamp": 0, "tstamp": 0}))
            else:
                if vip.broadcast:
                    attrs.append(("IFA_BROADCAST", "0.0.0.0"))
                if vip.label:
                    # Its bytes as written in the config, as keepalived passes them.
                    attrs.append(("IFA_LABEL", vip.label.encode("utf-8", "surrogateescape")))
        msg["attrs"] = attrs
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = flags
        msg.encode()
        self.data = bytes(msg.data)
        self.addr_offsets: list[int] = []
        self.brd_offset = -1
        off = nl.NLMSGHDR.size + nl.IFADDRMSG.size
        while off + nl.RTATTR.size <= len(self.data):
            alen, atype = nl.RTATTR.unpack_from(self.data, off)
            if atype in (nl.IFA_LOCAL, nl.IFA_ADDRESS):
                self.addr_offsets.append(off + nl.RTATTR.size)
            elif atype == nl.IFA_BROADCAST:
                self.brd_offset = off + nl.RTATTR.size
            off += nl.align4(alen)


def _shape(vip: Vip, mtype: int) -> tuple:
    if vip.family == socket.AF_INET6:
        return (mtype, 6, vip.prefixlen, vip.ifindex)
    return (mtype, 4, vip.prefixlen, vip.ifindex, vip.scope, vip.label, bool(vip.broadcast))


class AddressManager:
    """Adds/removes VIPs in batches; remembers what it added so shutdown removes exactly that."""

    def __init__(self, requester: Requester | None = None):
        self.added: set[Vip] = set()
        self.stats = dict(added=0, removed=0, already=0, failed=0)
        # A failover's ACKs for thousands of VIPs queue at once: room for them.
        self._nl = requester or Requester(rcvbuf=8 << 20, sndbuf=4 << 20)
        self._templates: dict[tuple, _Template] = {}

    def close(self) -> None:
        self._nl.close()

    @property
    def requester(self) -> Requester:
        """For batches whose messages are prebuilt elsewhere (vrrpd._effects)."""
        return self._nl

    def account(self, adding: bool, done: int, failed: int) -> None:
        """Count VIPs such a batch added or removed (done includes harmless
        EEXIST/EADDRNOTAVAIL)."""
        self.stats["added" if adding else "removed"] += done
        self.stats["failed"] += failed

    async def add(self, vips) -> BatchResult:
        return await self._batch(nl.RTM_NEWADDR, list(vips))

    async def remove(self, vips) -> BatchResult:
        return await self._batch(nl.RTM_DELADDR, list(vips))

    async def remove_all(self) -> BatchResult:
        """Shutdown: remove every VIP this manager added (and nothing else)."""
        return await self.remove(list(self.added))

    # -- internals -------------------------------------------------------------------
    async def _batch(self, mtype: int, vips: list[Vip]) -> BatchResult:
        # The requester takes batches in call order: an add and a remove of one VIP keep it.
        result = BatchResult()
        t0 = time.perf_counter()
        codes = await self._nl.errnos([self.encode(mtype, vip) for vip in vips])
        self._classify(mtype, vips, codes, result)
        result.seconds = time.perf_counter() - t0
        adding = mtype == nl.RTM_NEWADDR
        self.stats["added" if adding else "removed"] += len(result.done)
        self.stats["already"] += len(result.already)
        self.stats["failed"] += len(result.failed)
        if result.failed:
            vip, code = result.failed[0]
            log.error("%s of %d VIP(s) failed, e.g. %s/%d ifindex %d: %s",
                      "add" if adding else "remove", len(result.failed), vip.address,
                      vip.prefixlen, vip.ifindex, os.strerror(code))
        return result

    def encode(self, mtype: int, vip: Vip) -> bytearray:
        """The message for one VIP: its shape's template with the addresses patched in."""
        key = _shape(vip, mtype)
        tmpl = self._templates.get(key)
        if tmpl is None:
            tmpl = self._templates[key] = _Template(vip, mtype)
        out = bytearray(tmpl.data)
        packed = vip.packed
        for off in tmpl.addr_offsets:
            out[off:off + len(packed)] = packed
        if tmpl.brd_offset >= 0 and vip.broadcast:    # the shape has one iff the VIP does
            out[tmpl.brd_offset:tmpl.brd_offset + 4] = socket.inet_aton(vip.broadcast)
        return out

    def _classify(self, mtype: int, vips: list[Vip], codes: list[int],
                  result: BatchResult) -> None:
        adding = mtype == nl.RTM_NEWADDR
        harmless = errno.EEXIST if adding else errno.EADDRNOTAVAIL
        for vip, code in zip(vips, codes):
            if code == 0:
                result.done.append(vip)
                if adding:
                    self.added.add(vip)
                else:
                    self.added.discard(vip)
            elif code == harmless:
                result.already.append(vip)
                if not adding:
                    self.added.discard(vip)
            else:
                result.failed.append((vip, code))
