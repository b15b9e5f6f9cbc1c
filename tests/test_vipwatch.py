"""VipWatch tells an outside deletion of a master's VIP
from vrrpd's own, whatever the order the link monitor delivers them in, and
gives up a burst of them as one batch."""
from __future__ import annotations

import logging
import socket
from types import SimpleNamespace

import pytest

from vrrpd.engine import BACKUP, MASTER
from vrrpd.core.pump import LOG_EACH
from vrrpd.core.vipwatch import VipWatch


class FakeDaemon:
    """What VipWatch reads of a Daemon: instances VI_1... with one VIP each on
    ifindex 2 (the first's is `address`), all MASTER; force_state changes the
    engine's state, pump() counts the pumps and the forced states they saw."""

    def __init__(self, address="192.0.2.10", n=1):
        addresses = [address] + [f"192.0.2.{100 + k}" for k in range(1, n)]
        self.instances = {}
        for k, a in enumerate(addresses):
            spec = SimpleNamespace(vips=[SimpleNamespace(address=a, no_track=False)])
            self.instances[f"VI_{k + 1}"] = SimpleNamespace(
                name=f"VI_{k + 1}", idx=k, vips=[SimpleNamespace(ifindex=2, address=a)],
                spec=spec)
        self.inst = self.instances["VI_1"]
        self.plan = object()
        self.stopping, self.electing = False, True
        self.states = {k: MASTER for k in range(n)}
        self.forced: list[tuple[int, int]] = []
        self.pumps: list[int] = []
        self.engine = SimpleNamespace(state=self.states.__getitem__, force_state=self._force)

    def _force(self, idx, state, now):
        self.forced.append((idx, state))
        self.states[idx] = state

    def pump(self):
        self.pumps.append(len(self.forced))


def watching(d: FakeDaemon) -> tuple[VipWatch, list]:
    """A VipWatch on d whose call_soon callbacks wait in the list returned."""
    soon: list = []
    return VipWatch(d, lambda: 0, soon.append), soon


def settle(soon: list) -> None:
    while soon:
        soon.pop(0)()


LINK = SimpleNamespace(index=2, name="eth0")
ADDR = SimpleNamespace(family=socket.AF_INET, address="192.0.2.10")


def test_outside_deletion_of_a_master_vip_gives_up_master(caplog):
    d = FakeDaemon()
    watch, soon = watching(d)
    with caplog.at_level(logging.WARNING):
        watch(LINK, ADDR, False)
        assert d.forced == [(0, BACKUP)] and d.pumps == []
        settle(soon)
    assert d.pumps == [1]
    assert [r.getMessage() for r in caplog.records] == [
        "(VI_1) VIP 192.0.2.10 deleted from eth0: priority 0, BACKUP (keepalived)"]


def test_a_burst_of_outside_deletions_is_given_up_as_one_batch(caplog):
    """`ip addr flush` under thousands of masters: each goes BACKUP in the
    engine as its event is read, and once the burst is read they are
    dispatched in one pump, with one log line naming them all."""
    n = 3 * LOG_EACH
    d = FakeDaemon(n=n)
    watch, soon = watching(d)
    with caplog.at_level(logging.WARNING):
        for inst in d.instances.values():
            vip = inst.vips[0]
            watch(LINK, SimpleNamespace(family=socket.AF_INET, address=vip.address), False)
            watch(LINK, SimpleNamespace(family=socket.AF_INET, address=vip.address), False)
        assert len(soon) == 1 and d.pumps == []
        settle(soon)
    assert d.forced == [(k, BACKUP) for k in range(n)]      # once each
    assert d.pumps == [n]
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{n} instances' VIPs deleted from outside: priority 0, BACKUP")
    assert "VI_1 (192.0.2.10 on eth0), VI_2 (192.0.2.101 on eth0)" in line
    watch(LINK, ADDR, False)                # a later burst is a burst of its own
    assert d.forced[n:] == [] and soon == []        # (VI_1 is no longer MASTER)
    d.states[1] = MASTER
    watch(LINK, SimpleNamespace(family=socket.AF_INET, address="192.0.2.101"), False)
    d.stopping = True                       # stopped before the burst's end: no pump
    settle(soon)
    assert d.forced[n:] == [(1, BACKUP)] and d.pumps == [n]


@pytest.mark.parametrize("vip, kernel", [
    ("2001:db8::10", "2001:db8::10"),
    ("::ffff:c000:20a", "::ffff:192.0.2.10"),       # inet_ntop's form of a mapped address
])
def test_an_ipv6_vip_is_known_however_the_kernel_spells_it(vip, kernel):
    d = FakeDaemon(vip)
    watch, _ = watching(d)
    watch(LINK, SimpleNamespace(family=socket.AF_INET6, address=kernel), False)
    assert d.forced == [(0, BACKUP)]


def test_own_deletion_reported_after_master_again_is_ignored():
    # Start-up after a crash: vrrpd removes the stale VIP (BACKUP), becomes
    # MASTER and adds it back; the monitor, held meanwhile, reports the
    # deletion only now.  Then the re-add: the expectation is used up, and a
    # later outside deletion counts again.
    d = FakeDaemon()
    watch, _ = watching(d)
    watch.expect_deleted(d.inst.vips)
    watch(LINK, ADDR, False)
    watch(LINK, ADDR, True)
    assert d.forced == []
    watch(LINK, ADDR, False)
    assert d.forced == [(0, BACKUP)]


def test_own_deletion_that_found_nothing_expires_at_the_re_add():
    d = FakeDaemon()
    watch, _ = watching(d)
    watch.expect_deleted(d.inst.vips)       # the address was not there: no event
    watch(LINK, ADDR, True)
    watch(LINK, ADDR, False)
    assert d.forced == [(0, BACKUP)]
