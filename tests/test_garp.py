"""Gratuitous ARP / unsolicited NA: packet layout (scapy as oracle), keepalived's timing
knobs (injected clock), and the real thing between two namespace hosts (tshark as oracle,
the receiver's neighbour table as the effect)."""
import heapq
import itertools
import json
import os
import socket
import subprocess
import time

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr
from scapy.layers.l2 import ARP, Ether

from children import child
from vrrpd.net.garp import Announce, GarpConfig, GarpScheduler, arp_frame, na_message

MAC = bytes.fromhex("00005e000101")
V4 = socket.inet_aton("192.0.2.100")
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::100")
PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".venv/bin/python")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_arp_frame_is_keepalived_request_form():
    f = Ether(arp_frame(MAC, V4))
    assert f.dst == "ff:ff:ff:ff:ff:ff" and f.src == "00:00:5e:00:01:01" and f.type == 0x0806
    a = f[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, 1)
    assert a.hwsrc == "00:00:5e:00:01:01" and a.psrc == a.pdst == "192.0.2.100"
    assert a.hwdst == "ff:ff:ff:ff:ff:ff"


@pytest.mark.parametrize("router", [True, False])
def test_na_message_fields(router):
    na = ICMPv6ND_NA(na_message(MAC, V6, router))
    assert na.type == 136 and na.code == 0 and na.cksum == 0     # kernel fills it
    assert (na.R, na.S, na.O) == (int(router), 0, 1)
    assert na.tgt == "2001:db8::100"
    opt = na[ICMPv6NDOptDstLLAddr]
    assert opt.type == 2 and opt.len == 1 and opt.lladdr == "00:00:5e:00:01:01"


class FakeClock:
    """call_later/now for the scheduler: time moves only when the test says so."""

    class Handle:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    def __init__(self):
        self.t = 0.0
        self._heap = []
        self._seq = itertools.count()
        self.scheduled = 0

    def now(self):
        return self.t

    def call_later(self, delay, cb, *args):
        h = self.Handle()
        self.scheduled += 1
        heapq.heappush(self._heap, (self.t + delay, next(self._seq), h, cb, args))
        return h

    def advance(self, to):
        while self._heap and self._heap[0][0] <= to:
            when, _, h, cb, args = heapq.heappop(self._heap)
            self.t = max(self.t, when)
            if not h.cancelled:
                cb(*args)
        self.t = to


class Recorder:
    def __init__(self, clock):
        self.clock, self.sent = clock, []

    def send_arp(self, ifindex, frame):
        self.sent.append((self.clock.t, "arp", socket.inet_ntoa(frame[38:42])))

    def send_na(self, ifindex, vip, message):
        self.sent.append((self.clock.t, "na", socket.inet_ntop(socket.AF_INET6, vip)))

    def forget(self, ifindex):
        pass

    def close(self):
        pass


def make(cfg, n4=2, n6=1):
    clock = FakeClock()
    rec = Recorder(clock)
    sched = GarpScheduler(rec, clock.call_later, clock.now)
    ann = Announce(3, "eth0", MAC,
                   [(0xC0000264 + i).to_bytes(4, "big") for i in range(n4)],   # 192.0.2.100 +
                   [socket.inet_pton(socket.AF_INET6, f"2001:db8::{100 + i:x}") for i in range(n6)],
                   cfg, router=False)
    return clock, rec, sched, ann


def times(rec, kind):
    return [t for t, k, _ in rec.sent if k == kind]


def test_master_burst_then_delayed_burst():
    clock, rec, sched, ann = make(GarpConfig(master_delay=5, master_repeat=3))
    sched.master("VI_1", ann)
    clock.advance(0)
    assert times(rec, "arp") == [0.0] * 6 and times(rec, "na") == [0.0] * 3
    # keepalived's order: round after round over all VIPs
    assert [v for _, k, v in rec.sent if k == "arp"][:4] == \
        ["192.0.2.100", "192.0.2.101", "192.0.2.100", "192.0.2.101"]
    clock.advance(4.9)
    assert len(rec.sent) == 9
    clock.advance(5.0)
    assert times(rec, "arp") == [0.0] * 6 + [5.0] * 6
    clock.advance(100)
    assert len(rec.sent) == 18                  # no refresh by default


def test_refresh_and_stop():
    clock, rec, sched, ann = make(GarpConfig(master_delay=0, master_repeat=1,
                                             master_refresh=10, master_refresh_repeat=2), n6=0)
    sched.master("VI_1", ann)
    clock.advance(35)
    assert times(rec, "arp") == [0.0] * 2 + [10.0] * 4 + [20.0] * 4 + [30.0] * 4
    sched.stop("VI_1")
    clock.advance(100)
    assert len(rec.sent) == 14


def test_interval_spaces_packets_per_interface_and_kind():
    clock, rec, sched, ann = make(GarpConfig(master_delay=0, master_repeat=2,
                                             garp_interval=0.5, gna_interval=0.25))
    sched.master("VI_1", ann)
    clock.advance(10)
    assert times(rec, "arp") == [0.0, 0.5, 1.0, 1.5]
    assert times(rec, "na") == [0.0, 0.25]


def test_lower_prio_defaults_and_override():
    clock, rec, sched, ann = make(GarpConfig(master_delay=5, master_repeat=2), n6=0)
    sched.lower_prio("VI_1", ann)           # unset -> garp_master_delay / _repeat
    clock.advance(10)
    assert times(rec, "arp") == [0.0] * 4 + [5.0] * 4
    clock, rec, sched, ann = make(GarpConfig(lower_prio_delay=2, lower_prio_repeat=1), n6=0)
    sched.lower_prio("VI_1", ann)
    clock.advance(10)
    assert times(rec, "arp") == [0.0] * 2 + [2.0] * 2
    clock, rec, sched, ann = make(GarpConfig(lower_prio_repeat=0), n6=0)
    sched.lower_prio("VI_1", ann)
    clock.advance(10)
    assert rec.sent == []


def test_large_burst_is_sliced_and_errors_are_counted():
    clock, rec, sched, ann = make(GarpConfig(master_delay=0, master_repeat=1), n4=1000, n6=0)
    slices = []
    orig = rec.send_arp

    def flaky(ifindex, frame):
        slices.append(clock.t)
        if frame[38:42] == socket.inet_aton("192.0.2.105"):
            raise OSError(100, "Network is down")
        orig(ifindex, frame)
    rec.send_arp = flaky
    sched.master("VI_1", ann)
    assert slices == []                     # nothing is sent inside master() itself
    clock.advance(0)
    assert len(slices) == 1000 and len(rec.sent) == 999
    assert sched.stats == dict(arp_sent=999, na_sent=0, send_errors=1)
    # sent over several loop turns (slices of BATCH), not in one long callback
    assert clock.scheduled == -(-1000 // GarpScheduler.BATCH)


# --- the real thing, between two namespace hosts ------------------------------------
def _tshark(host, pcap: str, capture_filter: str) -> subprocess.Popen:
    """tshark writing eth0's frames that match the filter to pcap, once it captures."""
    cap = host.popen("tshark", "-q", "-i", "eth0", "-w", pcap, "-f", capture_filter,
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while "Capturing on" not in cap.stderr.readline():
        assert time.monotonic() < deadline and cap.poll() is None, "tshark did not start"
    return cap


def _pcap_rows(pcap: str, fields: list[str]) -> list[dict[str, str]]:
    """tshark's dissection of the capture: per frame, {field: value}."""
    args = ["tshark", "-r", pcap, "-T", "fields", "-E", "separator=|"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines()]


@pytest.mark.netns
def test_garp_and_na_on_the_wire(lan, tmp_path):
    net = lan(hosts=2)
    h0, h1 = net.hosts
    v4, v6 = ["192.0.2.101", "192.0.2.102"], ["2001:db8::101", "2001:db8::102"]
    for a in v4:
        h0.run("ip", "addr", "add", f"{a}/32", "dev", "eth0")
    for a in v6:
        h0.run("ip", "addr", "add", f"{a}/128", "dev", "eth0", "nodad")
    # The first VIP of each family is already known at a stale MAC: the announcement must
    # override it.  The second is new: Linux only creates entries from unsolicited ones
    # with arp_accept / accept_untracked_na (the latter only on a router).
    for a in (v4[0], v6[0]):
        h1.run("ip", "neigh", "replace", a, "lladdr", "02:00:00:00:00:99", "dev", "eth0",
               "nud", "stale")
    h1.run("sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=1")
    h1.run("sysctl", "-qw", "net.ipv6.conf.eth0.forwarding=1")
    h1.run("sysctl", "-qw", "net.ipv6.conf.eth0.accept_untracked_na=1")
    mac0 = h0.run("cat", "/sys/class/net/eth0/address").stdout.strip()
    pcap = str(tmp_path / "g.pcap")
    cap = _tshark(h1, pcap, "arp or (icmp6 and ip6[40] == 136)")
    out = h0.run(PY, child("garp_sender"), json.dumps(v4), json.dumps(v6)).stdout
    assert json.loads(out) == dict(arp_sent=4, na_sent=4, send_errors=0)
    time.sleep(0.5)
    cap.terminate()
    cap.wait(timeout=10)
    fields = ["arp.opcode", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.proto_ipv4",
              "arp.dst.hw_mac", "arp.isgratuitous", "eth.dst", "icmpv6.type",
              "icmpv6.checksum.status", "icmpv6.nd.na.flag.r", "icmpv6.nd.na.flag.o",
              "icmpv6.nd.na.flag.s", "icmpv6.nd.na.target_address", "icmpv6.opt.linkaddr",
              "ipv6.hlim", "ipv6.dst", "ipv6.src"]
    rows = _pcap_rows(pcap, fields)
    arps = [r for r in rows if r["arp.opcode"]]
    nas = [r for r in rows if r["icmpv6.type"] == "136" and r["ipv6.src"] in v6]
    assert len(arps) == 4 and len(nas) == 4, rows
    for r in arps:
        assert r["arp.opcode"] == "1" and r["arp.src.hw_mac"] == mac0
        assert r["arp.src.proto_ipv4"] == r["arp.dst.proto_ipv4"] and r["arp.src.proto_ipv4"] in v4
        assert r["arp.dst.hw_mac"] == "ff:ff:ff:ff:ff:ff" and r["eth.dst"] == "ff:ff:ff:ff:ff:ff"
        assert r["arp.isgratuitous"] in ("1", "True")
    assert sorted({r["arp.src.proto_ipv4"] for r in arps}) == v4
    for r in nas:
        assert r["icmpv6.checksum.status"] == "1"          # Wireshark: 0 bad, 1 good, 2 unverified
        assert (r["icmpv6.nd.na.flag.r"], r["icmpv6.nd.na.flag.o"], r["icmpv6.nd.na.flag.s"]) \
            in (("1", "1", "0"), ("True", "True", "False"))
        assert r["icmpv6.nd.na.target_address"] == r["ipv6.src"]
        assert r["icmpv6.opt.linkaddr"] == mac0
        assert r["ipv6.hlim"] == "255" and r["ipv6.dst"] == "ff02::1"
        assert r["eth.dst"] == "33:33:00:00:00:01"
    assert sorted({r["ipv6.src"] for r in nas}) == v6
    neigh = h1.run("ip", "neigh", "show", "dev", "eth0").stdout
    for a in v4 + v6:
        assert any(line.startswith(a + " ") and mac0 in line for line in neigh.splitlines()), neigh


@pytest.mark.netns
def test_no_lower_priority_garp_after_leaving_master(lan, tmp_path):
    """keepalived sends garp_lower_prio_delay's burst only while the VIPs are
    set (vrrp_send_link_update): a master that answered a lower-priority
    advert with GARPs, then heard a higher priority and went BACKUP before
    the delay ran out, must not announce the VIP it gave up when it does
    (that would take its traffic from the new master)."""
    from daemons import OpsDaemon
    from vrrpd.lab.conf import LabSpec, host_config, vip
    spec = LabSpec(instances=1, version=3, advert_int=1.0, notify_fifo="@FIFO@",
                   extra_instance="garp_lower_prio_delay 2")
    net = lan(hosts=2, nics=spec.nics)
    h0, h1 = net.hosts
    m = OpsDaemon(h0, host_config(spec, 0, priority=150, state="MASTER"), tmp_path)
    m.start()
    try:
        m.wait_all(["VI_0"], "MASTER", timeout=30)
        mac0 = h0.run("cat", "/sys/class/net/eth0/address").stdout.strip()
        pcap = str(tmp_path / "arp.pcap")
        cap = _tshark(h1, pcap, "arp")
        for prio in ("50", "200"):          # VRID 1, advert_int 1 s, as configured
            h1.run(PY, child("inject_lower_advert"), net.host_ip(1), prio, "100")
        m.wait_all(["VI_0"], "BACKUP", timeout=5)
        t_backup = time.time()
        # Past the delay, before Master_Down_Interval (3.4 s) makes it MASTER again.
        time.sleep(2.5)
        cap.terminate()
        cap.wait(timeout=10)
    finally:
        m.stop()
    rows = _pcap_rows(pcap, ["frame.time_epoch", "arp.src.hw_mac", "arp.src.proto_ipv4"])
    ours = [float(r["frame.time_epoch"]) for r in rows
            if r["arp.src.hw_mac"] == mac0 and r["arp.src.proto_ipv4"] == vip(spec, 0)]
    assert ours and min(ours) < t_backup, rows         # the answer to the lower priority
    late = [round(t - t_backup, 2) for t in ours if t > t_backup + 0.2]
    assert late == [], f"GARPs for a VIP given up, s after BACKUP: {late}"
