"""Gratuitous ARP (IPv4 VIPs) and unsolicited Neighbour Advertisements (IPv6 VIPs).

Packets are built here (RFC 5798 6.4.2 / 8.1.2: a new master announces its VIPs so
neighbours and switches learn the new MAC), in keepalived's form:
  * ARP request, sender = target = VIP, sender MAC = the interface's (or VMAC's) MAC,
    Ethernet and ARP target MAC ff:ff:ff:ff:ff:ff (vrrp_arp.c), via an AF_PACKET socket
    per interface.
  * NA (ICMPv6 136, RFC 4861 4.4/7.2.6) from the VIP to ff02::1, hop limit 255, Override
    set, Router set when the interface forwards IPv6 (keepalived: get_ipv6_forwarding),
    Target Link-Layer Address option; sent on a raw ICMPv6 socket, the kernel fills in
    the checksum.

GarpScheduler reproduces keepalived's timing knobs (garp_master_delay/_repeat/_refresh/
_refresh_repeat, garp_interval, gna_interval, garp_lower_prio_delay/_repeat) with
callbacks on the loop only: nothing sleeps or blocks.  Packets wait in one queue per
interface and kind; with no interval a queue is sent in slices of BATCH so a 10,000-VIP
failover does not hold the loop.  Timers come from an injectable `call_later`.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Callable, Iterable

from vrrpd.net.sockets import open_link_socket

log = logging.getLogger("vrrpd.net.garp")

ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
ARPHRD_ETHER, ARPOP_REQUEST = 1, 1
BROADCAST_MAC = b"\xff" * 6
ND_NEIGHBOR_ADVERT = 136
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x80, 0x40, 0x20
ND_OPT_TARGET_LL_ADDR = 2
ALL_NODES = socket.inet_pton(socket.AF_INET6, "ff02::1")
ICMP6_FILTER = 1                            # netinet/icmp6.h, level IPPROTO_ICMPV6
_ARP = struct.Struct("!6s6sHHHBBH6s4s6s4s")
_NA = struct.Struct("!BBHB3x16sBB6s")


def arp_frame(mac: bytes, vip: bytes) -> bytes:
    """42-byte Ethernet + ARP request announcing `vip` (4 bytes) at `mac`."""
    return _ARP.pack(BROADCAST_MAC, mac, ETH_P_ARP, ARPHRD_ETHER, 0x0800, 6, 4,
                     ARPOP_REQUEST, mac, vip, BROADCAST_MAC, vip)


def na_message(mac: bytes, vip: bytes, router: bool) -> bytes:
    """32-byte ICMPv6 NA for `vip` (16 bytes), checksum left 0 for the kernel."""
    flags = NA_OVERRIDE | (NA_ROUTER if router else 0)
    return _NA.pack(ND_NEIGHBOR_ADVERT, 0, 0, flags, vip, ND_OPT_TARGET_LL_ADDR, 1, mac)


def na_frame(mac: bytes, vip: bytes, router: bool) -> bytes:
    """The NA of na_message() as the frame the kernel would send for it: to
    33:33:00:00:00:01 (ff02::1), from the VIP, hop limit 255, checksummed
    (RFC 4443 2.3), so that it can go out on a packet socket with the GARPs."""
    msg = bytearray(na_message(mac, vip, router))
    pseudo = vip + ALL_NODES + struct.pack("!I3xB", len(msg), socket.IPPROTO_ICMPV6)
    struct.pack_into("!H", msg, 2, _checksum(pseudo + msg))
    ip6 = struct.pack("!IHBB", 6 << 28, len(msg), socket.IPPROTO_ICMPV6, 255) + vip + ALL_NODES
    return b"\x33\x33\x00\x00\x00\x01" + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + bytes(msg)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv6_forwarding(ifname: str) -> bool:
    try:
        with open(f"/proc/sys/net/ipv6/conf/{ifname}/forwarding") as f:
            return f.read().strip() not in ("", "0")
    except OSError:
        return False


class Sender:
    """The sockets: AF_PACKET per interface for ARP, one raw ICMPv6 for all NAs."""

    def __init__(self):
        self._packet: dict[int, socket.socket] = {}
        self._icmp6: socket.socket | None = None

    def socket_for(self, ifindex: int) -> socket.socket:
        """The interface's packet socket (send-only, like the engine's for adverts)."""
        sock = self._packet.get(ifindex)
        if sock is None:
            sock = open_link_socket()
            sock.bind((socket.if_indextoname(ifindex), 0))
            self._packet[ifindex] = sock
        return sock

    def send_arp(self, ifindex: int, frame: bytes) -> None:
        """Any frame, in fact: an ARP, or an NA built by na_frame()."""
        self.socket_for(ifindex).send(frame)

    def send_na(self, ifindex: int, vip: bytes, message: bytes) -> None:
        sock = self._icmp6
        if sock is None:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                                 | socket.SOCK_CLOEXEC, socket.IPPROTO_ICMPV6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
            # Receive nothing: block every ICMPv6 type (all bits set = blocked).
            sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, b"\xff" * 32)
            self._icmp6 = sock
        # Source = the VIP itself (as keepalived), leaving by this interface.
        pktinfo = vip + struct.pack("=I", ifindex)
        sock.sendmsg([message], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
                     0, (socket.inet_ntop(socket.AF_INET6, ALL_NODES), 0, 0, ifindex))

    def forget(self, ifindex: int) -> None:
        """The interface went away (its index may be reused by another)."""
        sock = self._packet.pop(ifindex, None)
        if sock:
            sock.close()

    def close(self) -> None:
        for sock in self._packet.values():
            sock.close()
        self._packet.clear()
        if self._icmp6:
            self._icmp6.close()
            self._icmp6 = None


@dataclass(frozen=True, slots=True)
class GarpConfig:
    """keepalived's defaults (vrrp_instance / global_defs)."""
    master_delay: float = 5.0           # garp_master_delay: second burst after this
    master_repeat: int = 5              # garp_master_repeat: packets per VIP per burst
    master_refresh: float = 0.0         # garp_master_refresh: periodic burst, 0 = off
    master_refresh_repeat: int = 1      # garp_master_refresh_repeat
    lower_prio_delay: float | None = None   # garp_lower_prio_delay (unset = master_delay)
    lower_prio_repeat: int | None = None    # garp_lower_prio_repeat (unset = master_repeat)
    garp_interval: float = 0.0          # min gap between ARPs on one interface
    gna_interval: float = 0.0           # min gap between NAs on one interface


@dataclass(slots=True)
class Announce:
    """What one VRRP instance announces: its VIPs on one interface, from one MAC."""
    ifindex: int
    ifname: str
    mac: bytes
    vips4: list[bytes]
    vips6: list[bytes]
    config: GarpConfig = GarpConfig()
    router: bool | None = None          # None: read the interface's IPv6 forwarding


class _Queue:
    """Packets for one interface and kind, sent no closer than `interval` apart."""

    __slots__ = ("packets", "interval", "handle", "next_ok")

    def __init__(self, interval: float):
        self.packets: collections.deque = collections.deque()
        self.interval = interval
        self.handle: asyncio.TimerHandle | None = None
        self.next_ok = 0.0


class GarpScheduler:
    """Drives announcements for many instances; all methods are non-blocking."""

    BATCH = 256
    RETRY = 0.01        # wait after EAGAIN/ENOBUFS (device queue full)

    def __init__(self, sender: Sender | None = None,
                 call_later: Callable | None = None, now: Callable[[], float] | None = None):
        self.sender = sender or Sender()
        self._call_later = call_later
        self._now = now
        # key -> {"delay"|"refresh"|"lower": handle}
        self._timers: dict[object, dict[str, asyncio.TimerHandle]] = {}
        self._queues: dict[tuple[int, str], _Queue] = {}
        self.stats = dict(arp_sent=0, na_sent=0, send_errors=0)

    def _later(self, delay: float, cb, *args) -> asyncio.TimerHandle:
        if self._call_later is None:
            loop = asyncio.get_running_loop()
            self._call_later, self._now = loop.call_later, self._now or loop.time
        return self._call_later(delay, cb, *args)

    # -- what the state machine calls -------------------------------------------------
    def master(self, key, announce: Announce) -> None:
        """Entered MASTER: burst now, again after master_delay, then every master_refresh."""
        self.stop(key)
        cfg = announce.config
        timers = self._timers[key] = {}
        self._burst(announce, cfg.master_repeat)
        if cfg.master_delay > 0:
            timers["delay"] = self._later(cfg.master_delay, self._burst, announce,
                                          cfg.master_repeat)
        if cfg.master_refresh > 0:
            timers["refresh"] = self._later(cfg.master_refresh, self._refresh, key, announce)

    def lower_prio(self, key, announce: Announce) -> None:
        """MASTER received a lower-priority advert (keepalived: MASTER_RX_LOWER_PRI)."""
        cfg = announce.config
        repeat = cfg.master_repeat if cfg.lower_prio_repeat is None else cfg.lower_prio_repeat
        delay = cfg.master_delay if cfg.lower_prio_delay is None else cfg.lower_prio_delay
        if repeat <= 0:
            return
        self._burst(announce, repeat)
        if delay > 0:
            timers = self._timers.setdefault(key, {})
            if (old := timers.get("lower")) is not None:
                old.cancel()        # a new lower-priority advert restarts the delay
            timers["lower"] = self._later(delay, self._burst, announce, repeat)

    def resend(self, ifindex: int, frame: bytes) -> None:
        """A prebuilt frame that found the device queue full: queued behind the
        interface's others and retried as they are."""
        self._enqueue(ifindex, "arp", 0.0, [(ifindex, frame)])

    def stop(self, key) -> None:
        """Left MASTER: no more scheduled bursts (packets already queued still go)."""
        for handle in self._timers.pop(key, {}).values():
            handle.cancel()

    def forget_interface(self, ifindex: int) -> None:
        for kind in ("arp", "na"):
            q = self._queues.pop((ifindex, kind), None)
            if q and q.handle:
                q.handle.cancel()
        self.sender.forget(ifindex)

    def close(self) -> None:
        for key in list(self._timers):
            self.stop(key)
        for q in self._queues.values():
            if q.handle:
                q.handle.cancel()
        self._queues.clear()
        self.sender.close()

    # -- internals -------------------------------------------------------------------
    def _refresh(self, key, announce: Announce) -> None:
        timers = self._timers.get(key)
        if timers is None:
            return
        self._burst(announce, announce.config.master_refresh_repeat)
        timers["refresh"] = self._later(announce.config.master_refresh, self._refresh,
                                        key, announce)

    def _burst(self, a: Announce, repeat: int) -> None:
        """`repeat` rounds over all VIPs (keepalived's vrrp_send_link_update order)."""
        if a.vips4:
            frames = [arp_frame(a.mac, vip) for vip in a.vips4]
            self._enqueue(a.ifindex, "arp", a.config.garp_interval,
                          ((a.ifindex, f) for _ in range(repeat) for f in frames))
        if a.vips6:
            router = ipv6_forwarding(a.ifname) if a.router is None else a.router
            msgs = [(a.ifindex, vip, na_message(a.mac, vip, router)) for vip in a.vips6]
            self._enqueue(a.ifindex, "na", a.config.gna_interval,
                          (m for _ in range(repeat) for m in msgs))

    def _enqueue(self, ifindex: int, kind: str, interval: float, packets: Iterable) -> None:
        q = self._queues.get((ifindex, kind))
        if q is None:
            q = self._queues[(ifindex, kind)] = _Queue(interval)
        q.interval = interval
        q.packets.extend(packets)
        if q.handle is None:
            wait = max(0.0, q.next_ok - self._clock()) if interval else 0.0
            q.handle = self._later(wait, self._drain, ifindex, kind)

    def _clock(self) -> float:
        if self._now is None:
            self._now = asyncio.get_running_loop().time
        return self._now()

    def _drain(self, ifindex: int, kind: str) -> None:
        q = self._queues.get((ifindex, kind))
        if q is None:
            return
        q.handle = None
        send = self.sender.send_arp if kind == "arp" else self.sender.send_na
        budget = 1 if q.interval else self.BATCH
        while q.packets and budget:
            packet = q.packets[0]
            try:
                send(*packet)
            except OSError as e:
                if isinstance(e, BlockingIOError) or e.errno == errno.ENOBUFS:
                    # device queue full: keep the packet, try again shortly
                    q.handle = self._later(self.RETRY, self._drain, ifindex, kind)
                    return
                # ENETDOWN, ENXIO, EADDRNOTAVAIL (VIP already gone): drop it, count it.
                self.stats["send_errors"] += 1
                log.warning("%s on ifindex %d not sent: %s", kind.upper(), ifindex, e)
            else:
                self.stats["arp_sent" if kind == "arp" else "na_sent"] += 1
            q.packets.popleft()
            budget -= 1
        if q.interval:
            q.next_ok = self._clock() + q.interval
        if q.packets:
            q.handle = self._later(q.interval, self._drain, ifindex, kind)
