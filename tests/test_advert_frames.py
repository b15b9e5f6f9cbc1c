"""Multicast adverts sent as prebuilt Ethernet frames (Engine.set_link_tx).

Oracles: scapy parses and re-checksums the headers the codec builds; on the
wire, tshark checks every header field and checksum of what a running daemon
sends, before and after its interface's MAC changes, and nftables shows which
path the adverts took (frames skip the OUTPUT hook, the IP path does not).
"""
from __future__ import annotations

import socket
import sys
import time

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRPv3

from children import child
from daemons import DaemonProc
from vrrpd import _codec
from vrrpd.engine import Engine

MAC = bytes.fromhex("02005e0000aa")


def mcast_mac(family: int, group: str) -> str:
    """RFC 1112 6.4 / RFC 2464 7, written out independently of the codec."""
    b = socket.inet_pton(family, group)
    if family == socket.AF_INET:
        return "01:00:5e:%02x:%02x:%02x" % (b[1] & 0x7f, b[2], b[3])
    return "33:33:" + ":".join("%02x" % x for x in b[12:])


@pytest.mark.parametrize("family,src,group", [
    (socket.AF_INET, "192.0.2.1", "224.0.0.18"),
    (socket.AF_INET, "192.0.2.1", "239.130.2.3"),          # high bit of octet 2 is dropped
    (socket.AF_INET6, "fe80::1", "ff02::12"),
    (socket.AF_INET6, "fe80::1", "ff05::1:3"),
])
def test_frame_header_against_scapy(family, src, group):
    payload = _codec.encode(3, family, 9, 120, 100, ["192.0.2.9" if family == socket.AF_INET
                                                      else "2001:db8::9"], src=src, dst=group)
    frame = Ether(_codec.frame_header(family, MAC, src, group, len(payload)) + payload)
    assert frame.src == "02:00:5e:00:00:aa" and frame.dst == mcast_mac(family, group)
    if family == socket.AF_INET:
        ip = frame[IP]
        assert ((ip.tos, ip.ttl, ip.proto, ip.id, str(ip.flags), ip.frag)
                == (0xc0, 255, 112, 0, "DF", 0))
        assert ip.len == 20 + len(payload) and (ip.src, ip.dst) == (src, group)
        sent = ip.chksum
        del ip.chksum
        assert IP(bytes(ip)).chksum == sent                 # scapy's own checksum
    else:
        ip = frame[IPv6]
        assert (ip.tc, ip.fl, ip.hlim, ip.nh, ip.plen) == (0xc0, 0, 255, 112, len(payload))
        assert (ip.src, ip.dst) == (src, group)
    vrrp = frame[VRRPv3]
    assert (vrrp.vrid, vrrp.priority) == (9, 120)
    sent = vrrp.chksum
    del vrrp.chksum                                          # recomputed with the pseudo-header
    assert (IP if family == socket.AF_INET else IPv6)(bytes(ip))[VRRPv3].chksum == sent


def test_frame_header_refuses_unicast_destinations():
    with pytest.raises(ValueError):
        _codec.frame_header(socket.AF_INET, MAC, "192.0.2.1", "192.0.2.2", 20)
    with pytest.raises(ValueError):
        _codec.frame_header(socket.AF_INET6, MAC, "fe80::1", "2001:db8::2", 20)


def test_set_link_tx_checks_its_arguments():
    e = Engine(4)
    sink = e.add_socket(-1, socket.AF_INET, 1)
    with pytest.raises(ValueError):
        e.set_link_tx(sink, 5, MAC)                          # a test sink has no link
    with pytest.raises(ValueError):
        e.set_link_tx(7, 5, MAC)
    e.set_link_tx(sink, -1)                                  # off is always fine


# ------------------------------------------------------------------ on the wire

CONF = """
global_defs { notify_fifo @FIFO@ }
vrrp_instance V4 {
    interface eth0
    version 3
    virtual_router_id 4
    priority 200
    advert_int 0.1
    virtual_ipaddress { 192.0.2.104/32 }
}
vrrp_instance V6 {
    interface eth0
    version 3
    virtual_router_id 6
    priority 200
    advert_int 0.1
    virtual_ipaddress { 2001:db8::106/128 }
}
"""
FIELDS = ("eth.src", "eth.dst", "ip.dsfield", "ip.flags.df", "ip.ttl", "ip.checksum.status",
          "ipv6.tclass", "ipv6.hlim", "vrrp.checksum.status", "vrrp.prio", "frame.time_epoch")


def capture(ns, seconds: float) -> list[dict]:
    out = ns.run("tshark", "-n", "-q", "-i", "eth0", "-a", f"duration:{seconds}",
                 "-f", "ip proto 112 or ip6 proto 112", "-o", "ip.check_checksum:TRUE",
                 "-T", "fields", *[a for f in FIELDS for a in ("-e", f)],
                 check=False, timeout=seconds + 30).stdout
    return [dict(zip(FIELDS, line.split("\t"))) for line in out.splitlines() if line.strip()]


def host_mac(ns) -> str:
    return ns.run("cat", "/sys/class/net/eth0/address").stdout.strip()


def check_headers(rows, mac):
    v4 = [r for r in rows if r["ip.ttl"]]
    v6 = [r for r in rows if r["ipv6.hlim"]]
    assert len(v4) >= 5 and len(v6) >= 5, rows
    for r in v4:
        assert (r["eth.src"], r["eth.dst"], r["ip.dsfield"], r["ip.ttl"],
                r["ip.checksum.status"], r["vrrp.checksum.status"]) == \
               (mac, "01:00:5e:00:00:12", "0xc0", "255", "1", "1"), r   # 1 = good
    for r in v6:
        assert (r["eth.src"], r["eth.dst"], r["ipv6.tclass"], r["ipv6.hlim"],
                r["vrrp.checksum.status"]) == (mac, "33:33:00:00:00:12", "0x000000c0", "255",
                                                "1"), r


@pytest.mark.netns
def test_frames_on_the_wire_follow_a_mac_change(lan, tmp_path):
    net = lan(hosts=2)
    master, peer = net.hosts
    d = DaemonProc(master, "vrrpd", CONF, str(tmp_path)).start()
    try:
        d.wait_state("V4", "MASTER", timeout=10)
        d.wait_state("V6", "MASTER", timeout=10)
        check_headers(capture(peer, 1.0), host_mac(master))
        new_mac = "02:00:00:00:c0:de"
        master.run("ip", "link", "set", "eth0", "address", new_mac)
        time.sleep(0.3)                       # the link monitor hears of it
        check_headers(capture(peer, 1.0), new_mac)
        assert d.proc.poll() is None
    finally:
        d.stop()


@pytest.mark.netns
@pytest.mark.parametrize("advert_tx", ["frame", "ip"])
def test_output_firewall_sees_only_the_ip_path(lan, tmp_path, advert_tx):
    """`nft ... output ... drop` of VRRP silences the IP path (as keepalived),
    not frames: the operator's choice that --advert-tx documents."""
    net = lan(hosts=2)
    master, peer = net.hosts
    d = DaemonProc(master, "vrrpd", CONF, str(tmp_path),
                   extra_args=("--advert-tx", advert_tx)).start()
    try:
        d.wait_state("V4", "MASTER", timeout=10)
        rows = capture(peer, 0.6)
        check_headers(rows, host_mac(master))             # same headers either way
        master.run("nft", "add table inet vt_out; add chain inet vt_out out "
                          "{ type filter hook output priority 0; }; "
                          "add rule inet vt_out out meta l4proto 112 drop")
        time.sleep(0.2)
        after = capture(peer, 0.6)
        assert (len(after) > 5) == (advert_tx == "frame"), len(after)
    finally:
        d.stop()


# ------------------------------------------------- a full device queue defers


@pytest.mark.netns
@pytest.mark.parametrize("rate,all_through", [("1mbit", True), ("8kbit", False)])
def test_a_full_device_queue_defers_sends_instead_of_losing_them(netns, rate, all_through):
    """A takeover sends thousands of adverts at once; a device queue that
    cannot take them (a tbf here, a veth ring or NIC queue in life) answers
    ENOBUFS.  The engine keeps those sends and the daemon flushes them again
    every millisecond; a queue that stays full for TX_BUSY_MAX flushes gets
    them dropped and counted, never retried for ever."""
    ns = netns("tx")
    ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    for dev in ("veth0", "veth1"):
        ns.run("ip", "link", "set", dev, "up")
    ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "veth0")
    ns.run("tc", "qdisc", "add", "dev", "veth0", "root", "tbf", "rate", rate,
           "burst", "300", "limit", "150")
    out = ns.run(sys.executable, child("advert_burst"), timeout=60).stdout.split()
    sent, deferred, dropped, pending, seen, flushes = map(int, out)
    assert deferred > 0 and pending == 0, out                 # the burst did not fit at once
    if all_through:
        assert (sent, dropped, seen) == (40, 0, 40), out
    else:
        assert dropped > 0 and sent + dropped == 40 and seen == sent, out
        assert flushes <= 101, out
