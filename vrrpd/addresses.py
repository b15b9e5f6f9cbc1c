"""AddressManager: add and remove virtual IPs in large batches over rtnetlink.

A failover may have to add 10,000 VIPs at once.  One RTM_NEWADDR per VIP, packed many to
a sendmsg() on our own NETLINK_ROUTE socket with NLM_F_ACK; rtnetlink processes the
whole buffer synchronously inside sendmsg() and queues one ACK per message, so the ACKs
are read right after (non-blocking).  Each chunk blocks the loop only for the kernel's
work on that chunk (a few ms); between chunks we yield to the loop so adverts keep going.
No thread: the work is the kernel's, a thread would only add hand-offs.

Encoding: pyroute2's ifaddrmsg lays out one message per distinct shape (family, prefix,
ifindex, label, ...) - at ~100 us per encode it is too slow to call per VIP - and we copy
that template per VIP, patching sequence number and address bytes.

What keepalived sends (vrrp_ipaddress.c): IFA_LOCAL, IFA_BROADCAST and IFA_LABEL when set;
IPv6 VIPs get IFA_F_NODAD (usable at once, no dadfailed after a split brain) and /128s a
preferred lifetime of 0 (deprecated, so never picked as a source address).
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from . import netlink as nl

log = logging.getLogger("vrrpd.addresses")

INFINITY_LIFE_TIME = 0xFFFFFFFF


@dataclass(frozen=True)
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
        attrs = [("IFA_LOCAL", placeholder)]
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
                    attrs.append(("IFA_LABEL", vip.label))
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

    def __init__(self, chunk: int = 1024, ack_timeout: float = 5.0,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.chunk = chunk
        self.ack_timeout = ack_timeout
        self.added: set[Vip] = set()
        self.stats = dict(added=0, removed=0, already=0, failed=0)
        self._loop = loop
        self._sock: socket.socket | None = None
        self._lock = asyncio.Lock()
        self._templates: dict[tuple, _Template] = {}
        self._seq = 0
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def add(self, vips) -> BatchResult:
        return await self._batch(nl.RTM_NEWADDR, list(vips))

    async def remove(self, vips) -> BatchResult:
        return await self._batch(nl.RTM_DELADDR, list(vips))

    async def remove_all(self) -> BatchResult:
        """Shutdown: remove every VIP this manager added (and nothing else)."""
        return await self.remove(list(self.added))

    # -- internals -------------------------------------------------------------------
    async def _batch(self, mtype: int, vips: list[Vip]) -> BatchResult:
        async with self._lock:
            if self._sock is None:
                self._sock = nl.open_route_socket(0, rcvbuf=8 << 20, sndbuf=4 << 20)
            self._loop = self._loop or asyncio.get_running_loop()
            result = BatchResult()
            t0 = time.perf_counter()
            for start in range(0, len(vips), self.chunk):
                if start:
                    await asyncio.sleep(0)      # let the loop run between chunks
                part = vips[start:start + self.chunk]
                replies = await self._exchange(self._encode(mtype, part), part)
                self._classify(mtype, part, replies, result)
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

    def _encode(self, mtype: int, vips: list[Vip]) -> tuple[bytearray, int]:
        """One buffer with a message per VIP; sequence numbers first_seq + i."""
        out = bytearray()
        first_seq = self._seq + 1
        for vip in vips:
            self._seq += 1
            key = _shape(vip, mtype)
            tmpl = self._templates.get(key)
            if tmpl is None:
                tmpl = self._templates[key] = _Template(vip, mtype)
            base = len(out)
            out += tmpl.data
            struct.pack_into("=I", out, base + 8, self._seq)
            packed = vip.packed
            for off in tmpl.addr_offsets:
                out[base + off:base + off + len(packed)] = packed
            if tmpl.brd_offset >= 0:
                out[base + tmpl.brd_offset:base + tmpl.brd_offset + 4] = \
                    socket.inet_aton(vip.broadcast)
        return out, first_seq

    async def _exchange(self, request: tuple[bytearray, int], vips: list[Vip]) -> dict[int, int]:
        """Send one chunk, collect {index in chunk: errno} from the ACKs."""
        data, first_seq = request
        sock = self._sock
        replies: dict[int, int] = {}
        try:
            sock.send(data)
        except OSError as e:        # whole chunk refused (EMSGSIZE, ENOBUFS)
            return {i: e.errno for i in range(len(vips))}
        deadline = self._loop.time() + self.ack_timeout
        while len(replies) < len(vips):
            try:
                n = sock.recv_into(self._buf)
            except BlockingIOError:
                # rtnetlink normally ACKs inside send(); wait only if it did not.
                if self._loop.time() > deadline or not await self._readable(deadline):
                    break
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:    # ACKs lost: rcvbuf too small for the chunk
                    log.error("netlink ACK overrun: %d ACKs lost", len(vips) - len(replies))
                    break
                raise
            view = memoryview(self._buf)[:n]
            for hdr in nl.headers(view):
                i = hdr.seq - first_seq
                if hdr.type == nl.NLMSG_ERROR and 0 <= i < len(vips):
                    replies[i] = nl.error_code(view, hdr)
        return replies

    async def _readable(self, deadline: float) -> bool:
        fut = self._loop.create_future()
        watch = nl.Watch(self._loop, self._sock, lambda: fut.done() or fut.set_result(True))
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - self._loop.time()))
        except asyncio.TimeoutError:
            return False
        finally:
            watch.close()

    def _classify(self, mtype: int, vips: list[Vip], replies: dict[int, int],
                  result: BatchResult) -> None:
        adding = mtype == nl.RTM_NEWADDR
        harmless = errno.EEXIST if adding else errno.EADDRNOTAVAIL
        for i, vip in enumerate(vips):
            code = replies.get(i, errno.ETIMEDOUT)
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
