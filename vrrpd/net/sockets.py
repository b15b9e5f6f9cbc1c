"""Raw VRRP sockets (IP protocol 112), one per interface and address family.

One receive/send socket per interface and family, dispatching by VRID in
the engine, not one per instance: an IPv4 socket can join 224.0.0.18 on at
most 20 interfaces (igmp_max_memberships), and fewer sockets mean fewer
syscalls.  The engine (vrrpd._engine) does the I/O with recvmmsg/sendmmsg:
it sets each advert's source address with IP_PKTINFO / IPV6_PKTINFO, reads
TTL and source from the IPv4 header, and hop limit / destination from IPv6
ancillary data that the options below ask for.

We compute and verify checksums ourselves: IPV6_CHECKSUM is left off, as the
kernel would otherwise drop bad checksums silently, before our counters.

Multicast adverts on Ethernet links leave by a second, send-only packet
socket (open_link_socket) as prebuilt frames: the kernel's IP output path
per advert (route lookup, header, neighbour) is most of a master's CPU.
Frames do not traverse netfilter's OUTPUT/POSTROUTING hooks (qdiscs and tc
still apply); `vrrpd --advert-tx ip` keeps every advert on the IP path.
"""
from __future__ import annotations

import socket
import struct

IPPROTO_VRRP = 112
VRRP_GROUP4 = "224.0.0.18"          # RFC 5798 5.1.1.2
VRRP_GROUP6 = "ff02::12"            # RFC 5798 5.1.2.2
VRRP_TTL = 255                      # RFC 5798 5.1.1.3: TTL / hop limit 255
VRRP_TOS = 0xc0                     # network control, as keepalived sends (IPv4 TOS, IPv6 class)

# Linux values the socket module does not export on every build.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IP_MULTICAST_ALL = getattr(socket, "IP_MULTICAST_ALL", 49)
IPV6_MULTICAST_ALL = getattr(socket, "IPV6_MULTICAST_ALL", 29)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)

BUFFER_BYTES = 4 << 20              # bursts of thousands of adverts


def _set_buffer(sock: socket.socket, force: int, plain: int, size: int) -> None:
    try:                            # root may exceed net.core.[rw]mem_max
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)


def open_vrrp_socket(family: int, ifname: str, ifindex: int,
                     groups: tuple[str, ...] | None = None,
                     buffer_bytes: int = BUFFER_BYTES) -> socket.socket:
    """Open the non-blocking raw VRRP socket for one interface and family.

    groups: multicast groups to join on ifindex (default the VRRP group;
    () for unicast-only interfaces).  Returns the socket; pass its fileno()
    to Engine.add_socket(fd, family, ifindex) and keep the object alive.
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError("family must be AF_INET or AF_INET6")
    if groups is None:
        groups = (VRRP_GROUP4,) if family == socket.AF_INET else (VRRP_GROUP6,)
    sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_VRRP)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        _set_buffer(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, buffer_bytes)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
        if family == socket.AF_INET:
            _setup_ipv4(sock, ifindex, groups)
        else:
            _setup_ipv6(sock, ifindex, groups)
        # A raw socket receives protocol 112 of every interface until
        # SO_BINDTODEVICE applies: what it queued meanwhile may be another
        # interface's adverts, which would be rejected as foreign VIP lists.
        _discard_queued(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def open_link_socket(buffer_bytes: int = BUFFER_BYTES) -> socket.socket:
    """A non-blocking, send-only packet socket (protocol 0 receives nothing)
    for Engine.set_link_tx; each frame names its interface."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setblocking(False)
        _set_buffer(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, buffer_bytes)
    except BaseException:
        sock.close()
        raise
    return sock


def _discard_queued(sock: socket.socket) -> None:
    while True:
        try:
            sock.recv(1)
        except BlockingIOError:
            return


def _setup_ipv4(sock: socket.socket, ifindex: int, groups) -> None:
    ip = socket.IPPROTO_IP
    sock.setsockopt(ip, socket.IP_TTL, VRRP_TTL)                 # unicast peers
    sock.setsockopt(ip, socket.IP_TOS, VRRP_TOS)
    sock.setsockopt(ip, socket.IP_MULTICAST_TTL, VRRP_TTL)
    sock.setsockopt(ip, socket.IP_MULTICAST_LOOP, 0)
    sock.setsockopt(ip, IP_MULTICAST_ALL, 0)     # only groups joined here
    sock.setsockopt(ip, IP_PKTINFO, 1)
    any4 = socket.inet_aton("0.0.0.0")
    sock.setsockopt(ip, socket.IP_MULTICAST_IF, struct.pack("4s4si", any4, any4, ifindex))
    for group in groups:                         # struct ip_mreqn
        mreqn = struct.pack("4s4si", socket.inet_aton(group), any4, ifindex)
        sock.setsockopt(ip, socket.IP_ADD_MEMBERSHIP, mreqn)


def _setup_ipv6(sock: socket.socket, ifindex: int, groups) -> None:
    ip6 = socket.IPPROTO_IPV6
    sock.setsockopt(ip6, socket.IPV6_UNICAST_HOPS, VRRP_TTL)
    sock.setsockopt(ip6, socket.IPV6_TCLASS, VRRP_TOS)
    sock.setsockopt(ip6, socket.IPV6_MULTICAST_HOPS, VRRP_TTL)
    sock.setsockopt(ip6, socket.IPV6_MULTICAST_LOOP, 0)
    try:
        sock.setsockopt(ip6, IPV6_MULTICAST_ALL, 0)
    except OSError:                              # kernels before 4.20
        pass
    sock.setsockopt(ip6, socket.IPV6_MULTICAST_IF, ifindex)
    sock.setsockopt(ip6, socket.IPV6_RECVPKTINFO, 1)     # destination
    sock.setsockopt(ip6, socket.IPV6_RECVHOPLIMIT, 1)    # RFC 5798 7.1 check
    for group in groups:                         # struct ipv6_mreq
        mreq = struct.pack("16sI", socket.inet_pton(socket.AF_INET6, group), ifindex)
        sock.setsockopt(ip6, socket.IPV6_JOIN_GROUP, mreq)
