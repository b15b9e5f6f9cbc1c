"""Engine.set_advert_addrs: a reload changes an instance's virtual_ipaddress
list without touching its state (keepalived keeps such an instance).

Same oracles as test_engine.py: scapy parses (and re-checksums) every advert
sent in capture mode; time is injected.
"""
from __future__ import annotations

import pytest

from vrrpd import _engine as E
from test_engine import GROUP4, T0, VIP4, VIP6, Router, advert, pk, to_master

VIP4B = "192.0.2.101"


@pytest.mark.parametrize("dsts", [None, ["192.0.2.20", "192.0.2.30"]])
def test_master_advertises_the_new_list_and_keeps_state_and_priority(dsts):
    r = Router("192.0.2.10", 100, dsts=dsts)
    t = to_master(r)
    r.e.set_priority(r.i, 150, t)
    r.sent()
    deadline = r.e.deadline(r.i)
    r.e.set_advert_addrs(r.i, [pk(VIP4), pk(VIP4B)])
    assert r.e.pop_events() == [] and r.state == E.MASTER              # still MASTER, nothing reported
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
