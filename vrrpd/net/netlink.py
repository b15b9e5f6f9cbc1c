"""rtnetlink plumbing shared by links.py (LinkMonitor) and addresses.py (AddressManager).

Why our own sockets: pyroute2's IPRoute/AsyncIPRoute cannot open their socket under
uvloop, so we open NETLINK_ROUTE sockets ourselves, non-blocking,
for loop.add_reader().  pyroute2 still does the message layouts (ifinfmsg/ifaddrmsg,
both in 0.7.x (Debian 12) and 0.9.x); only the two hot messages are handled here with
struct: ACK/error replies (36 bytes each, one per VIP) and ifaddrmsg events, because
pyroute2's decoding of one costs far more and a 10,000-VIP failover echoes 10,000 of them.
"""
from __future__ import annotations

import errno
import functools
import select
import socket
import struct
import sys
from typing import Iterator, NamedTuple

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10        # ACKs do not echo the request: 36 bytes instead of ~100
NETLINK_EXT_ACK = 11
SO_RCVBUFFORCE, SO_SNDBUFFORCE = 33, 32

IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_BROADCAST, IFA_CACHEINFO, IFA_FLAGS = 1, 2, 3, 4, 6, 8
IFA_F_SECONDARY, IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x01, 0x02, 0x08, 0x40
IFF_UP, IFF_RUNNING, IFF_LOWER_UP = 0x1, 0x40, 0x10000
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254

NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
IFADDRMSG = struct.Struct("=BBBBi")         # family, prefixlen, flags, scope, index
RTATTR = struct.Struct("=HH")               # len, type
U32 = struct.Struct("=I")
ERRCODE = struct.Struct("=i")


def align4(n: int) -> int:
    return (n + 3) & ~3


def open_route_socket(groups: int = 0, rcvbuf: int = 1 << 22,
                      sndbuf: int = 1 << 20) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket joined to `groups` (RTMGRP_* bits)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK
                         | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        _set_buf(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        _set_buf(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:          # old kernels: ACKs just get longer
                pass
        sock.bind((0, groups))
    except BaseException:
        sock.close()
        raise
    return sock


def _set_buf(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    # The *FORCE variants pass net.core.[rw]mem_max (root only); without them the kernel
    # silently caps the size, which for the monitor means overruns under VIP bursts.
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


class Watch:
    """loop.add_reader() for a netlink socket that survives ENOBUFS under uvloop.

    A receive overrun sets the socket's error, epoll reports EPOLLERR, and libuv's
    uv_poll then stops the watcher and uvloop drops the reader for good - the monitor
    would go deaf exactly when it has the most to hear.  So the loop watches a private
    level-triggered epoll holding the socket: the loop only ever sees "readable", and
    the errno comes out of recv() where the reader handles it.
    """

    def __init__(self, loop, sock: socket.socket, callback, *args):
        self._loop = loop
        self._epoll = select.epoll()
        self._epoll.register(sock.fileno(), select.EPOLLIN)
        self._reader = (callback, *args)
        self.paused = False
        loop.add_reader(self._epoll.fileno(), *self._reader)

    def pause(self) -> None:
        if not self.paused and not self._epoll.closed:
            self.paused = True
            self._loop.remove_reader(self._epoll.fileno())

    def resume(self) -> None:
        if self.paused and not self._epoll.closed:
            self.paused = False
            self._loop.add_reader(self._epoll.fileno(), *self._reader)

    def close(self) -> None:
        if not self._epoll.closed:
            if not self.paused:
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()


class Header(NamedTuple):
    offset: int
    length: int
    type: int
    flags: int
    seq: int


def headers(buf) -> Iterator[Header]:
    """Walk the nlmsghdrs in one datagram; stops at a truncated or zero-length message."""
    off, end = 0, len(buf)
    while off + NLMSGHDR.size <= end:
        length, mtype, flags, seq, _pid = NLMSGHDR.unpack_from(buf, off)
        if length < NLMSGHDR.size or off + length > end:
            return
        yield Header(off, length, mtype, flags, seq)
        off += align4(length)


def error_code(buf, hdr: Header) -> int:
    """errno (positive) carried by an NLMSG_ERROR; 0 is an ACK."""
    if hdr.length < NLMSGHDR.size + ERRCODE.size:
        return errno.EBADMSG
    return -ERRCODE.unpack_from(buf, hdr.offset + NLMSGHDR.size)[0]


class AddrMsg(NamedTuple):
    """One RTM_NEWADDR/RTM_DELADDR, as much as VRRP needs of it."""
    family: int
    prefixlen: int
    flags: int
    scope: int
    index: int      # type: ignore[assignment]  # the ifindex; shadows tuple.index()
    address: str        # IFA_LOCAL if present (the interface's own address), else IFA_ADDRESS
    label: str | None


def decode_addr(buf, hdr: Header) -> AddrMsg | None:
    """Decode an ifaddrmsg; None if malformed (the caller counts it).  Only
    the attributes kept are copied out of buf: the link monitor decodes one
    per VIP of a takeover."""
    off = hdr.offset + NLMSGHDR.size
    end = hdr.offset + hdr.length
    if off + IFADDRMSG.size > end:
        return None
    family, plen, flags, scope, index = IFADDRMSG.unpack_from(buf, off)
    off += IFADDRMSG.size
    local = address = label = None
    while off + RTATTR.size <= end:
        alen, atype = RTATTR.unpack_from(buf, off)
        if alen < RTATTR.size or off + alen > end:
            return None
        if atype == IFA_LOCAL:
            local = off
        elif atype == IFA_ADDRESS:
            address = off
        elif atype == IFA_LABEL:
            label = _label(bytes(buf[off + RTATTR.size:off + alen]))
        elif atype == IFA_FLAGS and alen >= RTATTR.size + 4:
            flags = U32.unpack_from(buf, off + RTATTR.size)[0]      # full 32-bit flags
        off += align4(alen)
    at = local if local is not None else address
    want = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else -1
    if at is None or RTATTR.unpack_from(buf, at)[0] - RTATTR.size != want:
        return None
    raw = bytes(buf[at + RTATTR.size:at + RTATTR.size + want])
    return AddrMsg(family, plen, flags, scope, index, socket.inet_ntop(family, raw), label)


@functools.lru_cache(maxsize=1024)
def _label(data: bytes) -> str:
    """One string per label ("eth0"), not one per address: the link monitor
    keeps every address, the VIPs of thousands of instances too (interned:
    the cache only saves the decoding)."""
    return sys.intern(data.rstrip(b"\0").decode("utf-8", "replace"))


def dump_request(kind: str, seq: int) -> bytes:
    """RTM_GETLINK / RTM_GETADDR dump request encoded by pyroute2."""
    if kind == "link":
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg as cls
        mtype = RTM_GETLINK
    else:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg as cls
        mtype = RTM_GETADDR
    msg = cls()
    msg["family"] = socket.AF_UNSPEC
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
    msg["header"]["sequence_number"] = seq
    msg.encode()
    return bytes(msg.data)
