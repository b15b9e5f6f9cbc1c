"""VipWatch tells an outside deletion of a master's VIP
from vrrpd's own, whatever the order the link monitor delivers them in."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from vrrpd.engine import BACKUP, MASTER
from vrrpd.core.vipwatch import VipWatch


class FakeDaemon:
    """What VipWatch reads of a Daemon: one instance with one VIP on ifindex 2."""

    def __init__(self, address="192.0.2.10"):
        self.vip = SimpleNamespace(ifindex=2, address=address)
        spec = SimpleNamespace(vips=[SimpleNamespace(address=address, no_track=False)])
        self.inst = SimpleNamespace(name="VI_1", idx=0, vips=[self.vip], spec=spec)
        self.instances = {"VI_1": self.inst}
        self.plan = object()
        self.stopping, self.electing = False, True
        self.state = MASTER
        self.forced: list[tuple[int, int]] = []
        self.engine = SimpleNamespace(
            state=lambda idx: self.state,
            force_state=lambda idx, st, now: self.forced.append((idx, st)))

    def pump(self):
        pass


LINK = SimpleNamespace(index=2, name="eth0")
ADDR = SimpleNamespace(family=socket.AF_INET, address="192.0.2.10")


def test_outside_deletion_of_a_master_vip_gives_up_master():
    d = FakeDaemon()
    watch = VipWatch(d, lambda: 0)
    watch(LINK, ADDR, False)
    assert d.forced == [(0, BACKUP)]


@pytest.mark.parametrize("vip, kernel", [
    ("2001:db8::10", "2001:db8::10"),
    ("::ffff:c000:20a", "::ffff:192.0.2.10"),       # inet_ntop's form of a mapped address
])
def test_an_ipv6_vip_is_known_however_the_kernel_spells_it(vip, kernel):
    d = FakeDaemon(vip)
    watch = VipWatch(d, lambda: 0)
    watch(LINK, SimpleNamespace(family=socket.AF_INET6, address=kernel), False)
    assert d.forced == [(0, BACKUP)]


def test_own_deletion_reported_after_master_again_is_ignored():
    # Start-up after a crash: vrrpd removes the stale VIP (BACKUP), becomes
    # MASTER and adds it back; the monitor, held meanwhile, reports the
    # deletion only now.  Then the re-add: the expectation is used up, and a
    # later outside deletion counts again.
    d = FakeDaemon()
    watch = VipWatch(d, lambda: 0)
    watch.expect_deleted(d.inst.vips)
    watch(LINK, ADDR, False)
    watch(LINK, ADDR, True)
    assert d.forced == []
    watch(LINK, ADDR, False)
    assert d.forced == [(0, BACKUP)]


def test_own_deletion_that_found_nothing_expires_at_the_re_add():
    d = FakeDaemon()
    watch = VipWatch(d, lambda: 0)
    watch.expect_deleted(d.inst.vips)       # the address was not there: no event
    watch(LINK, ADDR, True)
    watch(LINK, ADDR, False)
    assert d.forced == [(0, BACKUP)]
