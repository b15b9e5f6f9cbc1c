"""LinkMonitor: interface state and addresses from rtnetlink events, on any asyncio loop.

A non-blocking NETLINK_ROUTE socket joined to RTMGRP_LINK and RTMGRP_IPV{4,6}_IFADDR,
read through loop.add_reader (works on uvloop, where pyroute2's own sockets do not; see
netlink.Watch for the uvloop trap on ENOBUFS), and a second one for dumps.  State
comes from a dump at start; afterwards only events - no polling.  A receive overrun
(ENOBUFS: the kernel dropped events because we were slower than a VIP burst, a failure
keepalived users report) is counted, logged, and repaired by dumping again and reporting
the differences as events, so callers never miss an up/down or an address change.

"Up" is keepalived's IF_FLAGS_UP(): IFF_UP and IFF_RUNNING both set.  IFF_RUNNING is the
kernel's operstate view (cleared on carrier loss, e.g. when a veth peer goes down).
"""
from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
from dataclasses import dataclass, field
from typing import Callable

from vrrpd.net import netlink as nl

log = logging.getLogger("vrrpd.net.links")


class LinkEvent(enum.Enum):
    UP = "up"
    DOWN = "down"
    NEW = "new"             # appeared after start (not reported for the initial dump)
    RENAMED = "renamed"
    MAC = "mac"             # its hardware address changed (bond failover, vmac)
    DELETED = "deleted"


@dataclass(slots=True)
class Address:
    family: int
    address: str
    prefixlen: int
    flags: int
    scope: int
    label: str | None = None

    @property
    def usable(self) -> bool:
        return not self.flags & (nl.IFA_F_TENTATIVE | nl.IFA_F_DADFAILED)


@dataclass
class Link:
    index: int
    name: str
    flags: int
    mac: bytes | None
    operstate: str | None = None
    carrier: int | None = None
    base_index: int | None = None       # IFLA_LINK: lower device (VMAC/macvlan/vlan)
    master: int | None = None
    link_type: int | None = None        # ARPHRD_*: 1 is Ethernet
    # (family, address) -> Address, in kernel order: the first IPv4 one is the primary.
    addresses: dict[tuple[int, str], Address] = field(default_factory=dict)

    @property
    def is_up(self) -> bool:
        return self.flags & (nl.IFF_UP | nl.IFF_RUNNING) == nl.IFF_UP | nl.IFF_RUNNING

    def primary_ipv4(self, exclude=()) -> str | None:
        """VRRP source address (RFC 5798 5.1.1.1): the first non-secondary IPv4 address."""
        for a in self.addresses.values():
            if (a.family == socket.AF_INET and not a.flags & nl.IFA_F_SECONDARY
                    and a.address not in exclude):
                return a.address
        return None

    def ipv6_link_local(self) -> str | None:
        """VRRPv3 IPv6 source address (RFC 5798 5.1.2.1): the interface's link-local."""
        for a in self.addresses.values():
            if a.family == socket.AF_INET6 and a.scope == nl.RT_SCOPE_LINK and a.usable:
                return a.address
        return None


LinkCallback = Callable[[Link, LinkEvent, "Link | None"], None]
AddressCallback = Callable[[Link, Address, bool], None]


class LinkMonitor:
    """Interfaces and their addresses, kept current from rtnetlink.

    on_link(link, event, old) - old is the previous Link for RENAMED (old.name) else None.
    on_address(link, address, added).  Callbacks run on the loop; an exception in one is
    logged and counted, never propagated into the reader.

    Two sockets, as keepalived has: one joined to the event groups, one for dumps.  A dump
    on the event socket can stall for good: after ENOBUFS the kernel only continues a
    dump from a successful recv, and the errored recv may have been the last one.
    Across two sockets the order between a dump entry and an event is unknown, so while
    a dump runs an event wins over the dump for the link/address it names (the event is
    never older than what the dump says about that key, else it would have been lost and
    another resync follows).
    """

    GROUPS = nl.RTMGRP_LINK | nl.RTMGRP_IPV4_IFADDR | nl.RTMGRP_IPV6_IFADDR

    def __init__(self, on_link: LinkCallback | None = None,
                 on_address: AddressCallback | None = None,
                 rcvbuf: int = 32 << 20, loop: asyncio.AbstractEventLoop | None = None):
        self.on_link = on_link
        self.on_address = on_address
        self.links: dict[int, Link] = {}
        self.stats = dict(messages=0, overruns=0, resyncs=0, malformed=0,
                          callback_errors=0, dump_errors=0)
        self._rcvbuf = rcvbuf
        self._loop = loop
        self._events: socket.socket | None = None
        self._dumps: socket.socket | None = None
        self._watches: dict[bool, nl.Watch] = {}     # dump? -> watch
        self._bufs = {False: bytearray(1 << 17), True: bytearray(1 << 17)}    # events, dumps
        self._seq = 0
        self._dump_seq = 0          # seq of the dump in flight, 0 if none
        self._dump_kind = ""
        self._resync_wanted = False
        self._stale_links: set[int] = set()
        self._stale_addrs: set[tuple[int, int, str]] = set()
        self._touched: set = set()  # keys events changed while the dump runs
        self._quiet = True          # no callbacks while the initial dump builds the state
        self._synced: asyncio.Future | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Open the sockets, dump links and addresses; returns when the state is known."""
        loop = self._loop = self._loop or asyncio.get_running_loop()
        self._events = nl.open_route_socket(self.GROUPS, rcvbuf=self._rcvbuf)
        self._synced = loop.create_future()
        self._watches[False] = nl.Watch(loop, self._events, self._on_readable, self._events, False)
        self._start_dump()
        await self._synced

    def hold(self) -> None:
        """Leave events queued in the socket until release() (see Transitions._run_effects)."""
        if (w := self._watches.get(False)) is not None:
            w.pause()

    def release(self) -> None:
        if (w := self._watches.get(False)) is not None:
            w.resume()

    def close(self) -> None:
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
        for sock in (self._events, self._dumps):
            if sock is not None:
                sock.close()
        self._events = self._dumps = None

    # -- facts -----------------------------------------------------------------------
    def by_name(self, name: str) -> Link | None:
        for link in self.links.values():
            if link.name == name:
                return link
        return None

    def ifindex(self, name: str) -> int | None:
        link = self.by_name(name)
        return link.index if link else None

    # -- dumps -----------------------------------------------------------------------
    def _start_dump(self) -> None:
        """Full resync: links first, then addresses (one dump at a time per socket)."""
        if self._events is None:
            return
        if self._dumps is None:
            self._dumps = nl.open_route_socket(0, rcvbuf=4 << 20)
            self._watches[True] = nl.Watch(self._loop, self._dumps, self._on_readable,
                                           self._dumps, True)
        self._resync_wanted = False
        self._touched = set()
        self._stale_links = set(self.links)
        self._stale_addrs = {(i, f, a) for i, link in self.links.items()
                             for (f, a) in link.addresses}
        self._request("link")

    def _request(self, kind: str) -> None:
        self._seq += 1
        self._dump_seq, self._dump_kind = self._seq, kind
        assert self._dumps is not None      # opened by _start_dump
        try:
            self._dumps.send(nl.dump_request(kind, self._seq))
        except OSError as e:
            self._dump_failed(f"request: {e}")

    def _dump_failed(self, why: str) -> None:
        """Start over on a fresh dump socket a little later."""
        log.error("netlink dump failed (%s); retrying", why)
        self.stats["dump_errors"] += 1
        self._dump_seq = 0
        if self._dumps is not None:
            self._watches.pop(True).close()
            self._dumps.close()
            self._dumps = None
        assert self._loop is not None       # set by start()
        self._loop.call_later(0.1, self._start_dump)

    def _dump_done(self) -> None:
        if self._dump_kind == "link":
            self._request("addr")
            return
        self._dump_seq = 0
        # Whatever the dump did not mention disappeared while we were not listening.
        for index, family, address in self._stale_addrs:
            link = self.links.get(index)
            if link and (addr := link.addresses.pop((family, address), None)):
                self._emit_address(link, addr, False)
        for index in self._stale_links:
            if (link := self.links.pop(index, None)):
                self._emit_link(link, LinkEvent.DELETED)
        self._stale_links, self._stale_addrs, self._touched = set(), set(), set()
        self._quiet = False
        if self._synced is not None and not self._synced.done():
            self._synced.set_result(None)
        events, loop = self._events, self._loop
        if self._resync_wanted and events and loop:     # events were lost while this dump ran
            loop.call_soon(self._on_readable, events, False)     # drain, dump again

    def _overrun(self) -> None:
        self.stats["overruns"] += 1
        self.stats["resyncs"] += 1
        log.warning("netlink receive overrun: events lost, re-dumping links and addresses")
        # The kernel reports only the first drop; later ones are silent until our queue
        # is empty.  So the dump starts once the queue is drained (_on_readable) - from
        # then on any further loss is reported again and causes another dump.
        self._resync_wanted = True

    # -- reading ---------------------------------------------------------------------
    def _on_readable(self, sock: socket.socket, dump: bool) -> None:
        # Bounded: a flood of events must not starve the loop; the rest waits one turn.
        for _ in range(64):
            if sock is not (self._dumps if dump else self._events):
                return              # closed or replaced by a callback
            try:
                n = sock.recv_into(self._bufs[dump])
            except BlockingIOError:
                if not dump and self._resync_wanted and not self._dump_seq:
                    self._start_dump()
                return
            except OSError as e:
                if dump:
                    self._dump_failed(f"receive: {e}")
                    return
                if e.errno == errno.ENOBUFS:
                    self._overrun()
                    continue
                log.error("netlink receive failed: %s", e)
                return
            self._handle(memoryview(self._bufs[dump])[:n], dump)

    def _handle(self, buf, dump: bool) -> None:
        for hdr in nl.headers(buf):
            self.stats["messages"] += 1
            t = hdr.type
            if dump and hdr.seq != self._dump_seq:
                continue                # left over from an abandoned dump
            if t in (nl.RTM_NEWADDR, nl.RTM_DELADDR):
                msg = nl.decode_addr(buf, hdr)
                if msg is None:
                    self.stats["malformed"] += 1
                else:
                    self._address(msg, t == nl.RTM_NEWADDR, dump)
            elif t in (nl.RTM_NEWLINK, nl.RTM_DELLINK):
                self._link(bytes(buf[hdr.offset:hdr.offset + hdr.length]),
                           t == nl.RTM_NEWLINK, dump)
            elif dump and t == nl.NLMSG_DONE:
                self._dump_done()
            elif dump and t == nl.NLMSG_ERROR:
                self._dump_failed(f"errno {nl.error_code(buf, hdr)}")
                return

    def _link(self, data: bytes, new: bool, dump: bool) -> None:
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        try:
            msg = ifinfmsg(data)
            msg.decode()
            index, flags = msg["index"], msg["flags"]
            name = msg.get_attr("IFLA_IFNAME")
            mac = msg.get_attr("IFLA_ADDRESS")
            link_type = msg["ifi_type"]
        except Exception:               # pyroute2 decode errors have no common base
            self.stats["malformed"] += 1
            return
        if not self._fresh(index, dump):
            return
        self._stale_links.discard(index)
        old = self.links.get(index)
        if not new:
            if old is not None:
                del self.links[index]
                self._emit_link(old, LinkEvent.DELETED)
            return
        if name is None:
            self.stats["malformed"] += 1
            return
        link = Link(index, name, flags, _mac_bytes(mac), msg.get_attr("IFLA_OPERSTATE"),
                    msg.get_attr("IFLA_CARRIER"), msg.get_attr("IFLA_LINK"),
                    msg.get_attr("IFLA_MASTER"), link_type)
        if old is None:
            self.links[index] = link
            self._emit_link(link, LinkEvent.NEW)
            return
        link.addresses = old.addresses
        self.links[index] = link
        if old.name != name:
            self._emit_link(link, LinkEvent.RENAMED, old)
        if old.mac != link.mac:
            self._emit_link(link, LinkEvent.MAC, old)
        if old.is_up != link.is_up:
            self._emit_link(link, LinkEvent.UP if link.is_up else LinkEvent.DOWN)

    def _address(self, msg: nl.AddrMsg, new: bool, dump: bool) -> None:
        key = (msg.family, msg.address)
        if not self._fresh((msg.index, *key), dump):
            return
        self._stale_addrs.discard((msg.index, *key))
        link = self.links.get(msg.index)
        if link is None:        # address of a link we have not seen (yet): ignore
            return
        if not new:
            if (addr := link.addresses.pop(key, None)):
                self._emit_address(link, addr, False)
            return
        addr = Address(msg.family, msg.address, msg.prefixlen, msg.flags, msg.scope, msg.label)
        known = key in link.addresses
        link.addresses[key] = addr          # flag changes (tentative -> usable) update in place
        if not known:
            self._emit_address(link, addr, True)

    def _fresh(self, key, dump: bool) -> bool:
        """False for a dump entry an event already superseded (see the class doc)."""
        if not self._dump_seq:
            return True
        if dump:
            return key not in self._touched
        self._touched.add(key)
        return True

    # -- callbacks -------------------------------------------------------------------
    def _emit_link(self, link: Link, event: LinkEvent, old: Link | None = None) -> None:
        if self._quiet or self.on_link is None:
            return
        try:
            self.on_link(link, event, old)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("on_link callback failed for %s %s", link.name, event.value)

    def _emit_address(self, link: Link, addr: Address, added: bool) -> None:
        if self._quiet or self.on_address is None:
            return
        try:
            self.on_address(link, addr, added)
        except Exception:
            self.stats["callback_errors"] += 1
            log.exception("on_address callback failed for %s %s", link.name, addr.address)


def _mac_bytes(mac) -> bytes | None:
    """pyroute2 gives 'aa:bb:..' strings; VRRP wants the 6 raw bytes."""
    if not mac or not isinstance(mac, str):
        return None
    try:
        return bytes(int(b, 16) for b in mac.split(":"))
    except ValueError:
        return None
