"""A VIP deleted from outside while its instance is MASTER.

keepalived 2.2.7 (measured, tests/test_semantics.py): the master sends
priority 0 and goes BACKUP, so the peer takes over at once; it then
competes again as any backup (with a higher priority it preempts back and
re-adds the address).  An address marked `no_track` is left alone.

Deletions vrrpd makes itself are announced first (`expect_deleted`): the
link monitor may deliver their events late (it is held during a mass
transition), after the instance became MASTER again, e.g. the stale VIPs
of a crashed predecessor removed at start-up.  The kernel reports a
deletion before a later re-add of the same address, so an RTM_NEWADDR for
the address ends the expectation (also when our deletion found nothing).

The deletions of one read of the link monitor's socket are one burst (`ip
addr flush` on a router of thousands of VIPs): its instances go BACKUP in
the engine at once, and their transitions are dispatched together once the
burst is read, as one batch with one log line, not as a batch each.
"""
from __future__ import annotations

import ipaddress
import logging
import socket

from vrrpd.core.pump import LOG_EACH
from vrrpd.engine import BACKUP, MASTER

log = logging.getLogger(__name__)


class VipWatch:
    """LinkMonitor's on_address callback for one Daemon."""

    def __init__(self, daemon, clock, call_soon):
        """clock() -> the engine's time; call_soon(callback): run it once the
        loop's current callbacks are through."""
        self.daemon, self.clock = daemon, clock
        self._call_soon = call_soon
        self._given_up: list[tuple[str, str, str]] = []   # this burst's (instance, VIP, link)
        self._plan = None
        self._owner: dict[tuple[int, str], str] = {}    # (ifindex, address) -> instance name
        self._expected: set[tuple[int, str]] = set()      # deletions of our own, not yet seen

    def expect_deleted(self, vips) -> None:
        """vrrpd is about to delete these VIPs (objects with ifindex, address)."""
        self._expected.update((v.ifindex, v.address) for v in vips)

    def _index(self) -> dict[tuple[int, str], str]:
        # Rebuilt when a reload swaps the plan; our own removals go through here
        # by the thousand in a failover, so each event is one dict lookup.
        d = self.daemon
        if self._plan is not d.plan:
            self._plan = d.plan
            self._owner = {}
            for inst in d.instances.values():
                untracked = {v.address for v in inst.spec.vips if v.no_track}
                for vip in inst.vips:
                    if vip.address not in untracked:
                        self._owner[(vip.ifindex, vip.address)] = inst.name
        return self._owner

    def __call__(self, link, addr, added: bool) -> None:
        if self._expected:
            key = (link.index, _normal(addr))
            if key in self._expected:
                self._expected.discard(key)
                return
        if added or self.daemon.stopping or not self.daemon.electing:
            return
        name = self._index().get((link.index, _normal(addr)))
        inst = self.daemon.instances.get(name) if name else None
        if inst is None or self.daemon.engine.state(inst.idx) != MASTER:
            return          # our own removal (the instance left MASTER first), or not a VIP
        self.daemon.engine.force_state(inst.idx, BACKUP, self.clock())
        self._given_up.append((inst.name, addr.address, link.name))
        if len(self._given_up) == 1:
            self._call_soon(self._settle)

    def _settle(self) -> None:
        """The end of a burst: its log, then its transitions in one pump."""
        given_up, self._given_up = self._given_up, []
        if len(given_up) <= LOG_EACH:
            for name, address, link in given_up:
                log.warning("(%s) VIP %s deleted from %s: priority 0, BACKUP (keepalived)",
                            name, address, link)
        else:
            log.warning("%d instances' VIPs deleted from outside: priority 0, BACKUP "
                        "(keepalived): %s", len(given_up),
                        ", ".join(f"{name} ({address} on {link})"
                                  for name, address, link in given_up))
        if not self.daemon.stopping:        # (the stop sends every instance's priority 0)
            self.daemon.pump()


def _normal(addr) -> str:
    """The address as VipSpec spells it (ipaddress's form).  The kernel's
    dotted quad (inet_ntop) is that already; IPv6 text may differ (e.g. an
    IPv4-mapped address)."""
    if addr.family == socket.AF_INET:
        return addr.address
    return str(ipaddress.ip_address(addr.address))
