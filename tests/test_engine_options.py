"""keepalived's per-instance advert options in the engine (fake clock, the
Router harness of test_engine.py): lower_prio_no_advert,
higher_prio_send_advert, skip_check_adv_addr."""
from __future__ import annotations

from engine_router import Router, T0, advert, pk, to_master
from vrrpd import engine as E


def test_lower_prio_no_advert_keeps_quiet_but_still_reports():
    r = Router("192.0.2.10", 100, lower_prio_no_advert=True)
    tm = to_master(r)
    r.hear(advert("192.0.2.20", 99), "192.0.2.20", tm + 123)
    assert r.state == E.MASTER and r.sent() == []              # RFC 5798 6.4.3: discard
    # notify_master_rx_lower_pri still runs.
    assert r.e.pop_events() == [(r.i, E.EV_RX_LOWER_PRI, 99, pk("192.0.2.20"))]
    r.hear(advert("192.0.2.20", 0), "192.0.2.20", tm + 200)    # priority 0 is still answered
    assert [a.priority for _, a in r.sent()] == [100]


def test_higher_prio_send_advert_sends_one_before_stepping_down():
    r = Router("192.0.2.10", 100, higher_prio_send_advert=True)
    tm = to_master(r)
    r.hear(advert("192.0.2.20", 150), "192.0.2.20", tm + 123)
    assert r.state == E.BACKUP
    assert [a.priority for _, a in r.sent()] == [100]
    plain = Router("192.0.2.10", 100)                          # the default: silent step-down
    tm = to_master(plain)
    plain.hear(advert("192.0.2.20", 150), "192.0.2.20", tm + 123)
    assert plain.state == E.BACKUP and plain.sent() == []


def test_skip_check_adv_addr_checks_only_a_new_master():
    r = Router("192.0.2.10", 100, skip_check_adv_addr=True)
    r.e.start(r.i, T0)
    wrong = ("192.0.2.201",)
    r.hear(advert("192.0.2.20", 200, vips=wrong), "192.0.2.20", T0 + 1000)
    assert r.rejects("addr_mismatch") == 1                     # unknown sender: checked
    r.hear(advert("192.0.2.20", 200), "192.0.2.20", T0 + 2000)
    assert r.e.master_address(r.i) == pk("192.0.2.20")
    r.hear(advert("192.0.2.20", 200, vips=wrong), "192.0.2.20", T0 + 3000)
    assert r.rejects("addr_mismatch") == 1                     # same master: not checked
    assert r.e.counters(r.i)["adverts_received"] == 2
    r.hear(advert("192.0.2.30", 220, vips=wrong), "192.0.2.30", T0 + 4000)
    assert r.rejects("addr_mismatch") == 2                     # another sender: checked again
