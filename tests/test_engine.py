"""The protocol engine with an injected clock, in capture mode (no sockets).

Oracles: scapy builds and parses the packets, the RFC 5798 / RFC 3768
formulas are recomputed here, and keepalived's behaviour (vrrp.c) is spelled
out in each test.  Times are integers in microseconds; nothing sleeps.
"""
from __future__ import annotations

import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, initialize

from vrrpd import engine as E

from engine_router import (AF4, GROUP4, T0, VIP4, VIP6, Router, advert, mdi_us, pk, skew_us,
                           to_master)


# --- timers -------------------------------------------------------------------

@pytest.mark.parametrize("version,adv_cs,prio", [(3, 100, 100), (3, 35, 254), (2, 100, 100),
                                                 (2, 300, 1)])
def test_backup_takes_over_exactly_at_master_down_interval(version, adv_cs, prio):
    r = Router("192.0.2.10", prio, version=version, adv_cs=adv_cs)
    r.e.start(r.i, T0)
    assert r.state == E.BACKUP and r.states() == [(E.BACKUP, "startup")]
    # an advert from a higher-priority master restarts the timer at t1
    t1 = T0 + 1_234_567
    r.hear(advert("192.0.2.20", 255, version=version, adv_cs=adv_cs),
           "192.0.2.20", t1)
    down = t1 + mdi_us(version, prio, adv_cs * 10_000)
    assert r.e.deadline(r.i) == down
    assert r.e.master_address(r.i) == pk("192.0.2.20")
    assert r.e.tick(down - 1) == down
    assert r.state == E.BACKUP and r.sent() == []
    r.e.tick(down)
    assert r.state == E.MASTER
    assert r.states() == [(E.MASTER, "master_down_timer")]
    (dst, adv), = r.sent()                       # an advert at once
    assert dst == GROUP4 and adv.priority == prio and adv.vrid == 1
    assert adv.addrlist == [VIP4]
    assert adv.adv == (adv_cs if version == 3 else adv_cs // 100)
    assert r.e.deadline(r.i) == down + adv_cs * 10_000


def test_priority_zero_advert_takes_over_after_skew_time():
    r = Router("192.0.2.10", 100)
    r.e.start(r.i, T0)
    r.hear(advert("192.0.2.20", 200), "192.0.2.20", T0 + 10)
    t = T0 + 500_000
    r.hear(advert("192.0.2.20", 0), "192.0.2.20", t)
    assert r.e.deadline(r.i) == t + skew_us(3, 100, 1_000_000)
    r.e.tick(t + skew_us(3, 100, 1_000_000))
    assert r.state == E.MASTER
    assert r.states()[-1] == (E.MASTER, "priority_zero_advert")
    assert r.e.counters(r.i)["pri0_received"] == 1


def test_v3_backup_learns_master_adver_interval():
    r = Router("192.0.2.10", 100, adv_cs=100)
    r.e.start(r.i, T0)
    r.hear(advert("192.0.2.20", 200, adv_cs=25), "192.0.2.20", T0)
    assert r.e.master_adver_int_us(r.i) == 250_000
    assert r.e.deadline(r.i) == T0 + mdi_us(3, 100, 250_000)
    r.e.tick(r.e.deadline(r.i))
    assert r.state == E.MASTER
    assert r.e.master_adver_int_us(r.i) == 1_000_000        # its own again
    (_, adv), = r.sent()
    assert adv.adv == 100


def test_jitter_free_schedule_over_many_intervals():
    r = Router("192.0.2.10", 100, adv_cs=10)
    tm = to_master(r)
    now = tm
    for k in range(1, 2001):
        due = tm + k * 100_000
        now = due + (k * 7919) % 60_000          # late by up to 60 ms, never a full interval
        assert r.e.tick(now) == due + 100_000
        assert len(r.e.pop_sent()) == 1
    assert r.e.counters(r.i)["adverts_late"] == 0
    # a tick 3.5 intervals late sends once and stays on the grid
    last = tm + 2000 * 100_000
    assert r.e.tick(last + 450_000) == last + 500_000
    assert len(r.sent()) == 1
    assert r.e.counters(r.i)["adverts_late"] == 3


def test_jitter_free_schedule_many_instances_one_heap():
    e = E.Engine(1000)
    sid = e.add_socket(-2, AF4, 1)               # discard sink
    idx = [e.add_instance(sock_id=sid, vrid=v % 255 + 1, version=3, priority=255,
                          advert_int_cs=10 + v % 7, src=pk("192.0.2.10"),
                          dsts=[pk(GROUP4)],
                          vips=[], owner=True)
           for v in range(255)]
    for i in idx:
        e.start(i, T0, want_master=True)
    # The second advert comes one interval after the first (RFC 5798 6.4.2,
    # keepalived's timer); the third up to half an interval early, at a
    # per-instance phase, so instances that became master together do not
    # stay one burst.
    second = [e.deadline(i) for i in idx]
    assert second == [T0 + (10 + v % 7) * 10_000 for v in range(len(idx))]
    third = [0] * len(idx)
    for t in sorted(set(second)):               # each third deadline, just after its second
        e.tick(t)
        for v, i in enumerate(idx):
            if second[v] == t:
                third[v] = e.deadline(i)
    for v, d in enumerate(third):
        adv = (10 + v % 7) * 10_000
        assert T0 + adv + adv // 2 <= d <= T0 + 2 * adv
    same_interval = {d for v, d in enumerate(third) if v % 7 == 0}   # 37 instances
    assert 6 <= len(same_interval) <= 8, "spread over the engine's 8 phase slots"
    t = T0
    while t < T0 + 10_000_000:                   # tick exactly at each deadline
        t = e.tick(t)
    for v, i in enumerate(idx):
        adv = (10 + v % 7) * 10_000
        assert (e.deadline(i) - third[v]) % adv == 0     # then exactly periodic
        # one at start, one an interval later, then one per slot before T0 + 10 s
        assert e.counters(i)["adverts_sent"] == 2 + (T0 + 10_000_000 - 1 - third[v]) // adv + 1
    assert e.socket_counters(sid)["tx_packets"] == sum(e.counters(i)["adverts_sent"] for i in idx)


# --- preemption ---------------------------------------------------------------

def test_preempt_lower_priority_master_is_discarded_and_we_take_over():
    r = Router("192.0.2.10", 200)
    r.e.start(r.i, T0)
    down = r.e.deadline(r.i)
    for k in range(10):                          # the lower master keeps advertising
        r.hear(advert("192.0.2.20", 100), "192.0.2.20", T0 + k * 1_000_000)
        assert r.e.deadline(r.i) == down         # discarded: the timer keeps running
    r.e.tick(down)
    assert r.states()[-1] == (E.MASTER, "preempt")


def test_backup_never_preempts_an_equal_priority_master():
    # RFC 5798 6.4.2 / keepalived: priority >= ours is accepted, even from a lower address
    r = Router("192.0.2.200", 100)
    r.e.start(r.i, T0)
    t = T0 + 2_000_000
    r.hear(advert("192.0.2.10", 100), "192.0.2.10", t)
    assert r.e.deadline(r.i) == t + mdi_us(3, 100, 1_000_000)
    assert r.e.master_address(r.i) == pk("192.0.2.10")


def test_nopreempt_keeps_lower_priority_master():
    r = Router("192.0.2.10", 200, preempt=False)
    r.e.start(r.i, T0)
    t = T0
    for k in range(10):
        t = T0 + k * 1_000_000
        r.hear(advert("192.0.2.20", 100), "192.0.2.20", t)
        assert r.e.deadline(r.i) == t + mdi_us(3, 200, 1_000_000)
    r.e.tick(t + 1_000_000)
    assert r.state == E.BACKUP


def test_preempt_delay_accepts_lower_master_until_delay_from_startup_ran_out():
    # keepalived: preempt_time = startup + preempt_delay; until then lower
    # adverts are accepted like a higher master's; after it, discarded.
    r = Router("192.0.2.10", 200, preempt_delay_cs=500)         # 5 s
    r.e.start(r.i, T0)
    for k in range(6):
        t = T0 + k * 1_000_000                   # the last one at T0+5s is discarded
        r.hear(advert("192.0.2.20", 100), "192.0.2.20", t)
    last_accepted = T0 + 4_000_000
    assert r.e.deadline(r.i) == last_accepted + mdi_us(3, 200, 1_000_000)
    r.e.tick(r.e.deadline(r.i))
    assert r.state == E.MASTER and r.states()[-1] == (E.MASTER, "preempt")


def test_preempt_delay_starts_at_first_lower_advert_after_a_stepdown():
    r = Router("192.0.2.10", 200, preempt_delay_cs=300)
    to_master(r)
    t = T0 + 10_000_000
    r.hear(advert("192.0.2.20", 250), "192.0.2.20", t)         # higher: step down
    assert r.state == E.BACKUP
    t += 1_000_000
    r.hear(advert("192.0.2.20", 150), "192.0.2.20", t)         # lower: delay starts
    assert r.e.deadline(r.i) == t + mdi_us(3, 200, 1_000_000)
    r.hear(advert("192.0.2.20", 150), "192.0.2.20", t + 2_999_999)   # still accepted
    r.hear(advert("192.0.2.20", 150), "192.0.2.20", t + 3_000_000)   # discarded
    assert r.e.deadline(r.i) == t + 2_999_999 + mdi_us(3, 200, 1_000_000)


# --- master behaviour ---------------------------------------------------------

def test_master_hearing_higher_steps_down_without_priority_zero():
    r = Router("192.0.2.10", 100)
    to_master(r)
    t = T0 + 20_000_000
    r.hear(advert("192.0.2.20", 101), "192.0.2.20", t)
    assert r.state == E.BACKUP
    assert r.states() == [(E.BACKUP, "higher_priority_advert")]
    assert r.sent() == []
    assert r.e.counters(r.i)["pri0_sent"] == 0
    assert r.e.deadline(r.i) == t + mdi_us(3, 100, 1_000_000)
    assert r.e.master_address(r.i) == pk("192.0.2.20")


def test_master_hearing_lower_answers_at_once_and_reports():
    r = Router("192.0.2.10", 100)
    tm = to_master(r)
    t = tm + 123
    r.hear(advert("192.0.2.20", 99), "192.0.2.20", t)
    assert r.state == E.MASTER
    (_, adv), = r.sent()
    assert adv.priority == 100
    assert r.e.pop_events() == [(r.i, E.EV_RX_LOWER_PRI, 99, pk("192.0.2.20"))]
    assert r.e.deadline(r.i) == tm + 1_000_000                 # schedule unchanged


def test_master_hearing_priority_zero_answers_at_once():
    r = Router("192.0.2.10", 100)
    to_master(r)
    r.hear(advert("192.0.2.20", 0), "192.0.2.20", T0 + 5_000_000)
    assert r.state == E.MASTER
    assert [a.priority for _, a in r.sent()] == [100]


@pytest.mark.parametrize("other,expect", [("192.0.2.20", E.BACKUP), ("192.0.2.5", E.MASTER)])
def test_equal_priority_tie_break_on_primary_address(other, expect):
    r = Router("192.0.2.10", 100)
    to_master(r)
    r.hear(advert(other, 100), other, T0 + 5_000_000)
    assert r.state == expect
    if expect == E.MASTER:
        assert len(r.sent()) == 1
        assert [k for _, k, *_ in r.e.pop_events()] == [E.EV_RX_LOWER_PRI]
    else:
        assert r.sent() == []


def test_ipv6_tie_break_compares_whole_address():
    r = Router("fe80::1:10", 100, vips=(VIP6,))
    to_master(r)
    r.hear(advert("fe80::2:1", 100, vips=(VIP6,)), "fe80::2:1", T0 + 5_000_000)
    assert r.state == E.BACKUP


def test_set_priority_master_readvertises_at_once():
    r = Router("192.0.2.10", 100)
    to_master(r)
    r.e.set_priority(r.i, 50, T0 + 4_000_000)
    assert [a.priority for _, a in r.sent()] == [50]            # checksum checked by parse()
    assert r.e.priority(r.i) == 50


# --- fault, stop, owner -------------------------------------------------------

def test_fault_from_master_sends_priority_zero_and_clears_to_backup():
    r = Router("192.0.2.10", 100)
    to_master(r)
    t = T0 + 7_000_000
    r.e.set_fault(r.i, True, t)
    assert r.state == E.FAULT and r.states() == [(E.FAULT, "fault")]
    assert [a.priority for _, a in r.sent()] == [0]
    assert r.e.deadline(r.i) == -1 and r.e.tick(t + 100_000_000) == -1
    r.hear(advert("192.0.2.20", 0), "192.0.2.20", t + 1)        # ignored in FAULT
    assert r.state == E.FAULT and r.sent() == []
    r.e.set_fault(r.i, False, t + 10)
    assert r.state == E.BACKUP and r.states() == [(E.BACKUP, "fault_cleared")]
    assert r.e.deadline(r.i) == t + 10 + mdi_us(3, 100, 1_000_000)
    assert r.e.counters(r.i)["pri0_sent"] == 1


def test_fault_before_start_starts_in_fault():
    r = Router("192.0.2.10", 100)
    r.e.set_fault(r.i, True, T0)
    r.e.start(r.i, T0)
    assert r.state == E.FAULT and r.sent() == []


def test_stop_sends_priority_zero():
    r = Router("192.0.2.10", 100)
    to_master(r)
    r.e.stop(r.i, T0 + 9_000_000)
    assert r.state == E.INIT and r.states() == [(E.INIT, "shutdown")]
    assert [a.priority for _, a in r.sent()] == [0]
    b = Router("192.0.2.11", 100)
    b.e.start(b.i, T0)
    b.e.stop(b.i, T0 + 1)
    assert b.sent() == [] and b.e.deadline(b.i) == -1


def test_remove_master_sends_priority_zero_and_frees_the_vrid():
    r = Router("192.0.2.10", 100)
    to_master(r)
    r.e.remove_instance(r.i)
    assert [a.priority for _, a in r.sent()] == [0]
    with pytest.raises(KeyError):
        r.e.state(r.i)
    again = r.e.add_instance(sock_id=r.sid, vrid=1, version=3, priority=100, advert_int_cs=100,
                             src=pk("192.0.2.10"), dsts=[pk(GROUP4)], vips=[pk(VIP4)])
    assert again == r.i


def test_owner_goes_master_at_start():
    r = Router("192.0.2.10", 255, owner=True)
    r.e.start(r.i, T0, want_master=True)
    assert r.state == E.MASTER and r.states() == [(E.MASTER, "startup")]
    assert [a.priority for _, a in r.sent()] == [255]
    assert r.e.deadline(r.i) == T0 + 1_000_000


def test_state_master_non_owner_waits_one_interval_plus_minimal_skew():
    r = Router("192.0.2.10", 150)
    r.e.start(r.i, T0, want_master=True)
    assert r.state == E.BACKUP
    assert r.e.deadline(r.i) == T0 + 1_000_000 + 1_000_000 // 256


def test_unicast_peers_get_one_advert_each():
    peers = ["192.0.2.20", "192.0.2.30"]
    r = Router("192.0.2.10", 100, dsts=peers)
    to_master(r)
    r.e.tick(r.e.deadline(r.i))
    sent = r.sent()
    assert [d for d, _ in sent] == peers                        # per-peer v3 checksum checked
    assert r.e.counters(r.i)["adverts_sent"] == 2               # counted per advert


def test_v3_checksum_as_v2_is_sent_and_both_kinds_accepted():
    r = Router("192.0.2.10", 100, v3_checksum_as_v2=True)
    to_master(r)
    r.e.tick(r.e.deadline(r.i))
    (_, _, payload), = r.e.pop_sent()
    assert _inet_checksum(payload) == 0                       # no pseudo-header
    b = Router("192.0.2.20", 50)
    b.e.start(b.i, T0)
    b.hear(payload, "192.0.2.10", T0 + 1)
    b.hear(advert("192.0.2.10", 100), "192.0.2.10", T0 + 2)
    c = b.e.counters(b.i)
    assert c["rx_checksum_v3_no_pseudo"] == 1 and c["rx_checksum_v3_pseudo"] == 1


def _inet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


# --- rejects ------------------------------------------------------------------

def _v3_raw(vrid=1, prio=200, adv=100, vips=(VIP4,), src="192.0.2.20", vt=0x31, length_fix=0):
    body = bytes([vt, vrid, prio, len(vips)]) + adv.to_bytes(2, "big") + b"\0\0" \
        + b"".join(pk(v) for v in vips)
    body = body[:len(body) - length_fix] if length_fix else body
    pseudo = pk(src) + pk(GROUP4) + bytes([0, 112]) + len(body).to_bytes(2, "big")
    csum = _inet_checksum(pseudo + body)
    return body[:6] + csum.to_bytes(2, "big") + body[8:]


REJECTS = [
    # (reason, instance kwargs, payload builder, src, ttl)
    ("too_short", {}, lambda: b"\x31\x01\x64", "192.0.2.20", 255),
    ("bad_version", {}, lambda: _v3_raw(vt=0x41), "192.0.2.20", 255),
    ("bad_type", {}, lambda: _v3_raw(vt=0x32), "192.0.2.20", 255),
    ("bad_length", {}, lambda: _v3_raw()[:-2], "192.0.2.20", 255),
    ("bad_checksum", {}, lambda: advert("192.0.2.20", 200)[:-1] + b"\x65", "192.0.2.20", 255),
    ("zero_advert_int", {}, lambda: _v3_raw(adv=0), "192.0.2.20", 255),
    ("auth_ah", {"version": 2}, lambda: advert("192.0.2.20", 200, version=2, authtype=2),
     "192.0.2.20", 255),
    ("bad_auth_type", {"version": 2}, lambda: advert("192.0.2.20", 200, version=2, authtype=5),
     "192.0.2.20", 255),
    ("bad_ttl", {}, lambda: advert("192.0.2.20", 200), "192.0.2.20", 64),
    ("unknown_vrid", {}, lambda: advert("192.0.2.20", 200, vrid=99), "192.0.2.20", 255),
    ("version_mismatch", {}, lambda: advert("192.0.2.20", 200, version=2), "192.0.2.20", 255),
    ("auth_mismatch", {"version": 2, "auth_type": 1, "auth_pass": b"secret"},
     lambda: advert("192.0.2.20", 200, version=2, authtype=1, password=b"wrong"),
     "192.0.2.20", 255),
    ("auth_mismatch", {"version": 2, "auth_type": 1, "auth_pass": b"secret"},
     lambda: advert("192.0.2.20", 200, version=2), "192.0.2.20", 255),
    ("advert_int_mismatch", {"version": 2},
     lambda: advert("192.0.2.20", 200, version=2, adv_cs=200),
     "192.0.2.20", 255),
    ("addr_mismatch", {}, lambda: advert("192.0.2.20", 200, vips=("192.0.2.101",)),
     "192.0.2.20", 255),
    ("addr_mismatch", {}, lambda: advert("192.0.2.20", 200, vips=(VIP4, "192.0.2.101")),
     "192.0.2.20", 255),
    ("own_advert", {}, lambda: advert("192.0.2.10", 200), "192.0.2.10", 255),
    ("unicast_unknown_peer", {"dsts": ["192.0.2.30"]},
     lambda: advert("192.0.2.20", 200, dst="192.0.2.10"), "192.0.2.20", 255),
]


@pytest.mark.parametrize("reason,kw,build,src,ttl", REJECTS,
                         ids=[f"{r[0]}-{n}" for n, r in enumerate(REJECTS)])
def test_every_reject_reason_is_counted_and_ignored(reason, kw, build, src, ttl):
    kw = dict(kw)
    version = kw.pop("version", 3)
    r = Router("192.0.2.10", 100, version=version, **kw)
    r.e.start(r.i, T0)
    down = r.e.deadline(r.i)
    r.hear(build(), src, T0 + 1000, ttl=ttl, dst=kw.get("dsts") and "192.0.2.10")
    assert r.rejects(reason) == 1, r.e.counters(r.i)
    assert r.e.counters(r.i)["adverts_received"] == 0
    assert r.e.deadline(r.i) == down and r.state == E.BACKUP     # nothing changed
    kinds = [k for _, k, *_ in r.e.pop_events()]
    assert kinds[-1] in (E.EV_REJECT, E.EV_SOCK_REJECT)


def test_v2_ipv6_is_rejected_on_an_ipv6_socket():
    r = Router("fe80::10", 100)
    r.e.start(r.i, T0)
    v2 = advert("192.0.2.20", 200, version=2, vips=(VIP4,))
    r.hear(v2, "fe80::20", T0 + 1)
    assert r.rejects("v2_ipv6") == 1


def test_vips_in_another_order_are_accepted():
    vips = (VIP4, "192.0.2.101", "192.0.2.102")
    r = Router("192.0.2.10", 100, vips=vips)
    r.e.start(r.i, T0)
    r.hear(advert("192.0.2.20", 200, vips=vips[::-1]), "192.0.2.20", T0 + 1)
    assert r.e.counters(r.i)["adverts_received"] == 1
    assert r.e.deadline(r.i) == T0 + 1 + mdi_us(3, 100, 1_000_000)


def test_reject_events_are_rate_limited_but_counts_are_exact():
    r = Router("192.0.2.10", 100)
    junk = advert("192.0.2.20", 200, vrid=42)
    for k in range(1000):
        r.hear(junk, "192.0.2.20", T0 + k)                     # 1000 in 1 ms
    assert r.e.socket_counters(r.sid)["reject_unknown_vrid"] == 1000
    assert 1 <= len(r.e.pop_events()) <= 20


def test_bad_configuration_raises():
    e = E.Engine(2)
    sid = e.add_socket(-1, AF4, 1)
    ok = dict(sock_id=sid, vrid=1, version=3, priority=100, advert_int_cs=100,
              src=pk("192.0.2.10"), dsts=[pk(GROUP4)], vips=[pk(VIP4)])
    for bad in (dict(vrid=0), dict(version=4), dict(version=2, advert_int_cs=150),
                dict(advert_int_cs=4096), dict(priority=0), dict(src=b"\0" * 16),
                dict(dsts=[]), dict(auth_type=1)):
        with pytest.raises(ValueError):
            e.add_instance(**{**ok, **bad})
    e.add_instance(**ok)
    with pytest.raises(ValueError):
        e.add_instance(**ok)                                    # VRID taken
    with pytest.raises(KeyError):
        e.start(5, T0)


# --- several engines on a simulated LAN -----------------------------------------

class Lan:
    """Engines exchanging adverts: what one sends, the others hear at once."""

    def __init__(self, routers):
        self.routers = list(routers)
        self.alive = {id(r): True for r in self.routers}
        self.now = T0

    def deliver(self):
        moved = True
        while moved:
            moved = False
            for r in self.routers:
                for _, dst, payload in r.e.pop_sent():
                    moved = True
                    if not self.alive[id(r)]:
                        continue
                    for o in self.routers:
                        if o is not r and self.alive[id(o)]:
                            o.e.inject(o.sid, payload, pk(r.addr), dst, 255, self.now)

    def run_until(self, t):
        while True:
            ds = [d for r in self.routers if self.alive[id(r)]
                  for d in [r.e.next_deadline()] if d >= 0]
            nxt = min(ds, default=t + 1)
            if nxt > t:
                break
            self.now = nxt
            for r in self.routers:
                if self.alive[id(r)]:
                    r.e.tick(self.now)
            self.deliver()
        self.now = t

    def masters(self):
        return [r for r in self.routers if self.alive[id(r)] and r.state == E.MASTER]


def test_two_engines_converge_and_fail_over():
    a = Router("192.0.2.10", 150)
    b = Router("192.0.2.11", 100)
    lan = Lan([a, b])
    for r in (a, b):
        r.e.start(r.i, T0)
    lan.run_until(T0 + 10_000_000)
    assert lan.masters() == [a] and b.state == E.BACKUP
    assert b.e.master_address(b.i) == pk(a.addr)
    # kill -9 of a: b takes over Master_Down_Interval after a's last advert
    last = a.e.deadline(a.i) - a.adv_us
    lan.alive[id(a)] = False
    lan.run_until(last + mdi_us(3, 100, 1_000_000) - 1)
    assert b.state == E.BACKUP
    lan.run_until(last + mdi_us(3, 100, 1_000_000))
    assert b.state == E.MASTER
    b.states()
    # a comes back (restarted: INIT again) and preempts
    a.e.stop(a.i, lan.now)
    a.e.pop_sent()
    lan.alive[id(a)] = True
    a.e.start(a.i, lan.now)
    lan.run_until(lan.now + 10_000_000)
    assert lan.masters() == [a]
    assert b.states() == [(E.BACKUP, "higher_priority_advert")]
    # graceful stop of a: b takes over after its Skew_Time
    t = lan.now
    a.e.stop(a.i, t)
    lan.deliver()
    lan.alive[id(a)] = False
    lan.run_until(t + skew_us(3, 100, 1_000_000))
    assert b.state == E.MASTER and b.states() == [(E.MASTER, "priority_zero_advert")]


def test_equal_priorities_elect_the_highest_address():
    rs = [Router(f"192.0.2.{n}", 100) for n in (30, 12, 200, 7)]
    lan = Lan(rs)
    for r in rs:
        r.e.start(r.i, T0)
    lan.run_until(T0 + 20_000_000)
    assert [r.addr for r in lan.masters()] == ["192.0.2.200"]


class ElectionMachine(RuleBasedStateMachine):
    """N engines with preempt: after a quiet period exactly one master, the best one."""

    N = 3

    @initialize(prios=st.lists(st.integers(1, 254), min_size=N, max_size=N),
                version=st.sampled_from([2, 3]))
    def setup(self, prios, version):
        self.rs = [Router(f"192.0.2.{10 + n}", p, version=version) for n, p in enumerate(prios)]
        self.lan = Lan(self.rs)
        self.faulted = set()
        for r in self.rs:
            r.e.start(r.i, T0)

    @rule(dt=st.integers(0, 5_000_000))
    def advance(self, dt):
        self.lan.run_until(self.lan.now + dt)

    @rule(n=st.integers(0, N - 1), prio=st.integers(1, 254))
    def change_priority(self, n, prio):
        self.rs[n].e.set_priority(self.rs[n].i, prio, self.lan.now)
        self.lan.deliver()

    @rule(n=st.integers(0, N - 1))
    def toggle_fault(self, n):
        r = self.rs[n]
        faulted = n not in self.faulted
        if faulted and len(self.faulted) == self.N - 1:
            return                                              # keep one running
        (self.faulted.add if faulted else self.faulted.discard)(n)
        r.e.set_fault(r.i, faulted, self.lan.now)
        self.lan.deliver()

    @invariant()
    def faulted_are_in_fault(self):
        for n, r in enumerate(self.rs):
            assert (r.state == E.FAULT) == (n in self.faulted)

    @rule()
    def settle(self):
        # longest Master_Down_Interval is < 4 s (v2/v3 at 1 s); a few cover elections
        self.lan.run_until(self.lan.now + 15_000_000)
        live = [r for n, r in enumerate(self.rs) if n not in self.faulted]
        masters = self.lan.masters()
        # an equal-priority master is never preempted, so with ties any of
        # the highest may hold it
        assert len(masters) == 1
        assert masters[0].e.priority(masters[0].i) == max(r.e.priority(r.i) for r in live)


TestElection = ElectionMachine.TestCase
TestElection.settings = settings(max_examples=40, stateful_step_count=20, deadline=None)


class TimerHeap(RuleBasedStateMachine):
    """The timer heap against a plain model: whatever mix of starts, adverts,
    priority and fault changes and removals, next_deadline() is the earliest
    instance deadline, and tick() leaves no instance overdue."""
    SLOTS = 40

    @initialize()
    def setup(self):
        self.e = E.Engine(self.SLOTS)
        self.sid = self.e.add_socket(-2, AF4, 1)
        self.now = T0
        self.live = {}                     # vrid -> idx

    @rule(vrid=st.integers(1, 255), prio=st.integers(1, 255), cs=st.integers(1, 400),
          master=st.booleans())
    def add_and_start(self, vrid, prio, cs, master):
        if vrid in self.live or len(self.live) == self.SLOTS:
            return
        idx = self.e.add_instance(sock_id=self.sid, vrid=vrid, version=3, priority=prio,
                                  advert_int_cs=cs, src=pk("192.0.2.1"),
                                  dsts=[pk("224.0.0.18")], vips=[pk("192.0.2.9")],
                                  owner=prio == 255)
        self.e.start(idx, self.now, want_master=master)
        self.live[vrid] = idx

    @rule(data=st.data())
    def remove(self, data):
        if self.live:
            vrid = data.draw(st.sampled_from(sorted(self.live)))
            self.e.remove_instance(self.live.pop(vrid))

    @rule(data=st.data(), prio=st.integers(1, 254), fault=st.booleans())
    def retrack(self, data, prio, fault):
        if self.live:
            idx = self.live[data.draw(st.sampled_from(sorted(self.live)))]
            self.e.set_priority(idx, prio, self.now)
            self.e.set_fault(idx, fault, self.now)

    @rule(dt=st.integers(0, 3_000_000))
    def advance(self, dt):
        self.now += dt
        self.e.tick(self.now)

    @invariant()
    def earliest_first_and_none_overdue(self):
        deadlines = [d for idx in self.live.values() if (d := self.e.deadline(idx)) >= 0]
        assert self.e.next_deadline() == min(deadlines, default=-1)
        assert all(d > self.now for d in deadlines) or self.now == T0


TestTimerHeap = TimerHeap.TestCase
TestTimerHeap.settings = settings(max_examples=60, stateful_step_count=60, deadline=None)



def five_instances():
    """An engine with five instances (VRIDs 1-5) on one captured socket."""
    e = E.Engine(16)
    sid = e.add_socket(-1, AF4, 7)
    return e, [e.add_instance(sock_id=sid, vrid=v, version=3, priority=100, advert_int_cs=100,
                              src=pk("192.0.2.1"), dsts=[pk(GROUP4)], vips=[pk(VIP4)])
               for v in range(1, 6)]


def test_tick_makes_at_most_max_masters_and_leaves_the_rest_due():
    """A takeover's head start (core/pump.py): tick(now, n) makes at most n
    new masters, oldest deadline first; the others stay due for a later tick."""
    e, idxs = five_instances()
    for i in idxs:
        e.start(i, T0 + i)          # their down timers run out in this order
    e.pop_events()
    now = T0 + 10_000_000
    masters = lambda: [i for i in idxs if e.state(i) == E.MASTER]   # noqa: E731
    assert 0 <= e.tick(now, 2) <= now and masters() == idxs[:2]
    e.pop_sent()
    assert 0 <= e.tick(now, 0) <= now and masters() == idxs[:2] and e.pop_sent() == []
    assert e.tick(now) > now and masters() == idxs
    assert [ev.idx for ev in e.pop_events()] == idxs


def test_pop_events_hands_out_the_oldest_first_in_slices():
    """A takeover of thousands reaches Python in slices (core/pump.py)."""
    e, idxs = five_instances()
    for i in idxs:
        e.start(i, T0)
    assert [ev.idx for ev in e.pop_events(3)] == idxs[:3]
    assert [ev.idx for ev in e.pop_events(3)] == idxs[3:]
    assert e.pop_events(3) == []
    for i in idxs:
        e.stop(i, T0 + 1)
    assert [ev.code for ev in e.pop_events()] == [E.INIT] * 5
