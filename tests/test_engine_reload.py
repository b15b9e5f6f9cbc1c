"""Engine.set_advert_addrs: a reload changes an instance's virtual_ipaddress
list without touching its state (keepalived keeps such an instance).

Same oracles as test_engine.py: scapy parses (and re-checksums) every advert
sent in capture mode; time is injected.
"""
from __future__ import annotations

import pytest

from engine_router import GROUP4, T0, VIP4, VIP6, Router, advert, mdi_us, pk, to_master
from vrrpd import engine as E

VIP4B = "192.0.2.101"


@pytest.mark.parametrize("dsts", [None, ["192.0.2.20", "192.0.2.30"]])
def test_master_advertises_the_new_list_and_keeps_state_and_priority(dsts):
    r = Router("192.0.2.10", 100, dsts=dsts)
    t = to_master(r)
    r.e.set_priority(r.i, 150, t)
    r.sent()
    deadline = r.e.deadline(r.i)
    r.e.set_advert_addrs(r.i, [pk(VIP4), pk(VIP4B)])
    assert r.e.pop_events() == [] and r.state == E.MASTER    # still MASTER, nothing reported
    assert r.e.deadline(r.i) == deadline and r.sent() == []     # timer kept, nothing sent early
    r.e.tick(deadline)
    sent = r.sent()
    assert [d for d, _ in sent] == (dsts or [GROUP4])           # per-destination checksums
    assert all(a.addrlist == [VIP4, VIP4B] and a.priority == 150 for _, a in sent)
    r.e.stop(r.i, deadline + 1)                                  # the priority-0 variant too
    assert [(a.priority, a.addrlist) for _, a in r.sent()] == [(0, [VIP4, VIP4B])] * len(sent)


def test_shorter_list():
    r = Router("192.0.2.10", 100, vips=(VIP4, VIP4B))
    to_master(r)
    r.e.set_advert_addrs(r.i, [pk(VIP4B)])
    r.e.tick(r.e.deadline(r.i))
    assert [a.addrlist for _, a in r.sent()] == [[VIP4B]]


def test_backup_checks_adverts_against_the_new_list():
    b = Router("192.0.2.20", 50)
    b.e.start(b.i, T0)
    b.hear(advert("192.0.2.10", 100), "192.0.2.10", T0 + 1)
    b.e.set_advert_addrs(b.i, [pk(VIP4), pk(VIP4B)])
    b.hear(advert("192.0.2.10", 100), "192.0.2.10", T0 + 2)              # the old list
    assert b.rejects("addr_mismatch") == 1
    b.hear(advert("192.0.2.10", 100, vips=(VIP4B, VIP4)), "192.0.2.10", T0 + 3)
    assert b.rejects("addr_mismatch") == 1 and b.state == E.BACKUP
    assert b.e.counters(b.i)["adverts_received"] == 2


def test_ipv6_and_bad_input():
    r = Router("fe80::10", 100)
    to_master(r)
    r.e.set_advert_addrs(r.i, [pk(VIP6), pk("2001:db8::101")])
    r.e.tick(r.e.deadline(r.i))
    assert [a.addrlist for _, a in r.sent()] == [[VIP6, "2001:db8::101"]]
    with pytest.raises(ValueError):
        r.e.set_advert_addrs(r.i, [pk(VIP4)])                   # wrong family
    with pytest.raises(ValueError):
        r.e.set_advert_addrs(r.i, [pk(VIP6)] * 256)
    with pytest.raises(KeyError):
        r.e.set_advert_addrs(r.i + 1, [])
    r.e.tick(r.e.deadline(r.i))                                 # unchanged by the refusals
    assert [a.addrlist for _, a in r.sent()] == [[VIP6, "2001:db8::101"]]


# -- Engine.retune: advert_int, preempt and the advert options on reload ------------------

TUNE = dict(preempt=True, preempt_delay_cs=0, down_timer_adverts=3, lower_prio_no_advert=False,
            higher_prio_send_advert=False, skip_check_adv_addr=False)


def test_master_takes_a_shorter_interval_at_once_and_keeps_state():
    r = Router("192.0.2.10", 100)                      # v3, 1 s
    tm = to_master(r)
    r.e.set_priority(r.i, 150, tm)
    r.sent()
    now = tm + 100_000
    r.e.retune(r.i, now, advert_int_cs=20, **TUNE)
    assert r.state == E.MASTER and r.e.pop_events() == []
    assert r.e.deadline(r.i) == now + 200_000          # not the old tm + 1 s
    r.e.tick(now + 200_000)
    (_, adv), = r.sent()
    assert adv.adv == 20 and adv.priority == 150       # the advert says so (scapy's field)
    assert r.e.deadline(r.i) == now + 400_000


def test_master_with_a_longer_interval_keeps_its_next_advert():
    r = Router("192.0.2.10", 100, adv_cs=50)
    tm = to_master(r)
    due = r.e.deadline(r.i)
    r.e.retune(r.i, tm + 1000, advert_int_cs=200, **TUNE)
    assert r.e.deadline(r.i) == due
    r.e.tick(due)
    (_, adv), = r.sent()
    assert adv.adv == 200 and r.e.deadline(r.i) == due + 2_000_000


def test_backup_turned_nopreempt_keeps_a_lower_master():
    r = Router("192.0.2.10", 100)
    r.e.start(r.i, T0)
    first_down = r.e.deadline(r.i)
    r.e.retune(r.i, T0 + 10, advert_int_cs=100, **{**TUNE, "preempt": False})
    r.hear(advert("192.0.2.20", 50), "192.0.2.20", T0 + 1000)
    # Accepted as master: the down timer restarts (a preempting backup discards it).
    assert r.e.deadline(r.i) == T0 + 1000 + mdi_us(3, 100, 1_000_000)
    r.e.tick(first_down)
    assert r.state == E.BACKUP


def test_retune_refuses_what_cannot_be_sent_and_changes_nothing():
    r = Router("192.0.2.10", 100, version=2, adv_cs=100)
    tm = to_master(r)
    due = r.e.deadline(r.i)
    with pytest.raises(ValueError):
        r.e.retune(r.i, tm, advert_int_cs=50, **TUNE)  # VRRPv2: whole seconds only
    r.e.tick(due)
    (_, adv), = r.sent()
    assert adv.adv == 1 and r.state == E.MASTER


# -- a reload changing the version or the destinations: the instance stays -----------

def test_version_change_keeps_a_master_and_its_timer_at_the_new_interval():
    """keepalived 2.2.7 keeps a master whose version changes (3 -> 2 with
    advert_int 1): no transition, the next advert is a VRRPv2 one."""
    r = Router("192.0.2.10", 100, adv_cs=10)                  # v3, 100 ms
    tm = to_master(r)
    r.e.retune(r.i, tm + 1000, version=2, advert_int_cs=100, **TUNE)
    assert r.state == E.MASTER and r.e.pop_events() == []
    due = r.e.deadline(r.i)
    assert due <= tm + 100_000 + 1000                        # the timer kept its slot
    r.e.tick(due)
    (_, adv), = r.sent()
    assert adv.version == 2 and adv.adv == 1 and adv.priority == 100
    assert r.e.deadline(r.i) == due + 1_000_000
    # A v3 advert is now the wrong version; v2 ones are heard.
    r.hear(advert("192.0.2.20", 200, adv_cs=10), "192.0.2.20", due + 10)
    assert r.rejects("version_mismatch") == 1 and r.state == E.MASTER
    r.hear(advert("192.0.2.20", 200, version=2, adv_cs=100), "192.0.2.20", due + 20)
    assert r.state == E.BACKUP


def test_version_refusals_change_nothing():
    r = Router("fe80::10", 100)
    to_master(r)
    with pytest.raises(ValueError):
        r.e.retune(r.i, T0, version=2, advert_int_cs=100, **TUNE)     # v2 is IPv4 only
    r.e.tick(r.e.deadline(r.i))
    (_, adv), = r.sent()
    assert adv.version == 3


def test_new_peers_fault_then_backup_then_master_to_the_peers():
    """keepalived 2.2.7 keeps an instance given unicast peers by a reload; it
    goes FAULT, BACKUP, and MASTER after its down timer.  The priority 0 goes
    to the old destination, the adverts after it to the peers."""
    r = Router("192.0.2.10", 150, adv_cs=10)
    tm = to_master(r)
    now = tm + 1000
    peers = ["192.0.2.20", "192.0.2.30"]
    r.e.set_peers(r.i, [pk(p) for p in peers], now)
    assert r.states() == [(E.FAULT, "reload"), (E.BACKUP, "reload")]
    assert [(d, a.priority) for d, a in r.sent()] == [(GROUP4, 0)]
    down = r.e.deadline(r.i)
    assert down == now + mdi_us(3, 150, 100_000)
    r.e.tick(down)
    assert r.states() == [(E.MASTER, "master_down_timer")]
    assert sorted(d for d, a in r.sent()) == peers           # per-peer checksums checked by parse
    # Unicast now: adverts from others than the peers are not heard.
    r.hear(advert("192.0.2.99", 200, adv_cs=10, dst="192.0.2.10"), "192.0.2.99", down + 10,
           dst="192.0.2.10")
    assert r.rejects("unicast_unknown_peer") == 1 and r.state == E.MASTER
    # And back to multicast.
    r.e.set_peers(r.i, [pk(GROUP4)], down + 20)
    assert r.states() == [(E.FAULT, "reload"), (E.BACKUP, "reload")]
    assert sorted((d, a.priority) for d, a in r.sent()) == [(p, 0) for p in peers]


def test_new_peers_of_a_faulted_instance_change_no_state():
    r = Router("192.0.2.10", 100)
    r.e.start(r.i, T0)
    r.e.set_fault(r.i, True, T0 + 1)
    r.states()
    r.e.set_peers(r.i, [pk("192.0.2.20")], T0 + 2)
    assert r.states() == [] and r.state == E.FAULT
    r.e.set_fault(r.i, False, T0 + 3)
    assert r.states() == [(E.BACKUP, "fault_cleared")]
    with pytest.raises(ValueError):
        r.e.set_peers(r.i, [], T0 + 4)
    with pytest.raises(ValueError):
        r.e.set_peers(r.i, [pk("2001:db8::1")], T0 + 4)
