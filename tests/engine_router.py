"""One VRRP engine in capture mode on a fake LAN, with an injected clock: the
Router used by the engine tests, and scapy-built adverts to feed it.

Times are integers in microseconds; the RFC 3768 / RFC 5798 timer formulas
are recomputed here as the tests' oracle.
"""
from __future__ import annotations

import socket

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.vrrp import VRRP, VRRPv3
from scapy.packet import Raw

from vrrpd import engine as E

AF4, AF6 = socket.AF_INET, socket.AF_INET6
T0 = 1_000_000_000                 # arbitrary monotonic start, us
GROUP4, GROUP6 = "224.0.0.18", "ff02::12"
VIP4, VIP6 = "192.0.2.100", "2001:db8::100"


def pk(addr: str) -> bytes:
    return socket.inet_pton(AF6 if ":" in addr else AF4, addr)


def skew_us(version: int, prio: int, adv_us: int) -> int:
    # RFC 3768 6.1: (256-Priority)/256 s; RFC 5798 6.1: ((256-Priority)*Master_Adver_Interval)/256
    return (256 - prio) * 1_000_000 // 256 if version == 2 else (256 - prio) * adv_us // 256


def mdi_us(version: int, prio: int, adv_us: int) -> int:
    return 3 * adv_us + skew_us(version, prio, adv_us)


def advert(src: str, prio: int, *, vrid: int = 1, version: int = 3, adv_cs: int = 100,
           vips=(VIP4,), dst: str | None = None, authtype: int = 0, password: bytes = b"",
           **fields) -> bytes:
    """A VRRP message (IP payload) built by scapy, checksum computed by scapy."""
    v6 = ":" in src
    dst = dst or (GROUP6 if v6 else GROUP4)
    if version == 3:
        vr = VRRPv3(vrid=vrid, priority=prio, adv=adv_cs, addrlist=list(vips), **fields)
    else:
        pw = password.ljust(8, b"\0")
        vr = VRRP(vrid=vrid, priority=prio, adv=adv_cs // 100, addrlist=list(vips),
                  authtype=authtype, auth1=int.from_bytes(pw[:4], "big"),
                  auth2=int.from_bytes(pw[4:], "big"), **fields)
    if v6:
        return bytes((IPv6(src=src, dst=dst, hlim=255) / vr)[1])
    return bytes((IP(src=src, dst=dst, ttl=255) / vr)[1])


def parse(payload: bytes, src: str, dst: str):
    """scapy's view of a sent advert; the checksum must equal scapy's own."""
    cls = VRRPv3 if payload[0] >> 4 == 3 else VRRP
    ipcls = IPv6 if ":" in src else IP
    outer = ipcls(src=src, dst=dst, **({"nh": 112} if ipcls is IPv6 else {"proto": 112}))
    pkt = ipcls(bytes(outer / Raw(payload)))
    layer = pkt[cls]
    again = ipcls(bytes(pkt))                    # scapy recomputes the checksum
    again[cls].chksum = None
    expect = ipcls(bytes(again))[cls].chksum
    assert layer.chksum == expect, f"checksum {layer.chksum:#x} != scapy's {expect:#x}"
    return layer


class Router:
    """One engine in capture mode with one instance: a host on a fake LAN."""

    def __init__(self, addr: str, prio: int, *, version: int = 3, adv_cs: int = 100,
                 vips=None, dsts=None, **kw):
        fam = AF6 if ":" in addr else AF4
        self.addr, self.version, self.adv_cs = addr, version, adv_cs
        self.adv_us = adv_cs * 10_000
        self.group = GROUP6 if fam == AF6 else GROUP4
        self.e = E.Engine(64)
        self.sid = self.e.add_socket(-1, fam, 7)
        vips = vips if vips is not None else ((VIP6,) if fam == AF6 else (VIP4,))
        self.i = self.e.add_instance(
            sock_id=self.sid, vrid=kw.pop("vrid", 1), version=version, priority=prio,
            advert_int_cs=adv_cs, src=pk(addr), dsts=[pk(d) for d in (dsts or [self.group])],
            vips=[pk(v) for v in vips], **kw)

    @property
    def state(self):
        return self.e.state(self.i)

    def hear(self, payload: bytes, src: str, now: int, ttl: int = 255, dst: str | None = None):
        self.e.inject(self.sid, payload, pk(src), pk(dst or self.group), ttl, now)

    def sent(self):
        """[(dst, scapy layer)] of what went out since last asked."""
        out = []
        for sid, dst, payload in self.e.pop_sent():
            assert sid == self.sid
            d = socket.inet_ntop(AF6 if len(dst) == 16 else AF4, dst)
            out.append((d, parse(payload, self.addr, d)))
        return out

    def states(self):
        return [(a1, E.REASON_NAMES[a2]) for idx, k, a1, a2 in self.e.pop_events()
                if k == E.EV_STATE]

    def rejects(self, name: str) -> int:
        return (self.e.counters(self.i)["reject_" + name]
                + self.e.socket_counters(self.sid)["reject_" + name])


def to_master(r: Router, now: int = T0) -> int:
    """Start r and let its down timer run out; -> time it became MASTER."""
    r.e.start(r.i, now)
    t = r.e.deadline(r.i)
    r.e.tick(t)
    assert r.state == E.MASTER
    r.e.pop_sent(), r.e.pop_events()
    return t
