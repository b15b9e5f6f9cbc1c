"""The advert timer (pyx/_timer.pyx): a timerfd at an absolute deadline on the
clock the engine uses, polled like a socket by the pump."""
from __future__ import annotations

import select
import time

from vrrpd._timer import DeadlineTimer
from vrrpd.core.pump import now_us


def readable(timer: DeadlineTimer, timeout: float = 0.0) -> bool:
    p = select.poll()
    p.register(timer.fileno(), select.POLLIN)
    return bool(p.poll(timeout * 1000))


def test_a_past_deadline_is_due_at_once_and_read_once():
    t = DeadlineTimer()
    t.arm(now_us() - 1)
    assert readable(t)
    assert t.expired()
    assert not t.expired() and not readable(t)     # consumed: no second wake-up


def test_zero_or_negative_deadlines_fire_rather_than_disarm():
    t = DeadlineTimer()
    for deadline in (0, -5):
        t.arm(deadline)
        assert readable(t) and t.expired()


def test_a_future_deadline_waits_for_the_monotonic_clock():
    t = DeadlineTimer()
    deadline = now_us() + 20_000
    t.arm(deadline)
    assert not readable(t)
    assert readable(t, timeout=5.0)
    assert time.monotonic_ns() // 1000 >= deadline and t.expired()


def test_rearming_replaces_the_deadline_and_its_unread_expiry():
    t = DeadlineTimer()
    t.arm(now_us() - 1)
    assert readable(t)
    t.arm(now_us() + 3_600_000_000)      # an hour away: the expiry above is dropped
    assert not readable(t) and not t.expired()
    t.disarm()
    assert not readable(t)
