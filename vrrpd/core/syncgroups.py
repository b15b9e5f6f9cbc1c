"""vrrp_sync_group: members move together (keepalived vrrp_sync.c).

- A member that becomes MASTER takes the others with it; one that leaves
  MASTER for BACKUP takes the others to BACKUP (vrrp_sync_master /
  vrrp_sync_backup).  Moves made on the group's behalf carry the reason
  "sync_group" and do not propagate again.
- One member in FAULT puts every member in FAULT (vrrp_sync_fault); the
  group recovers when no member is faulted.
- The group's own notification (GROUP name STATE 0) follows its members'
  once all of them are in the same state: reported() is told of each
  member transition as its notifications go out, so the group's line comes
  after the last member's even when the members' moves are applied in
  separate batches.
- At start-up a group none of whose members waits for a track script is
  announced BACKUP (FAULT if a member is faulted) *before* its members
  (keepalived vrrp_init_state sends the group notifies first): initial().

- A member whose down timer runs out goes MASTER only once every other
  member wants MASTER too (keepalived vrrp_sync_can_goto_master): the
  engine holds it in BACKUP meanwhile (Engine.set_sync_group, linked by the
  runtime at start-up and after a reload).
"""
from __future__ import annotations

from vrrpd.engine import BACKUP, FAULT, INIT, MASTER
from vrrpd.config.model import Config


class SyncGroups:
    def __init__(self, config: Config):
        self.members: dict[str, tuple[str, ...]] = {
            name: tuple(m for m in g.group if m in config.instances)
            for name, g in config.sync_groups.items()}
        self.group_of = {m: g for g, ms in self.members.items() for m in ms}
        self.state: dict[str, int] = {g: INIT for g in self.members}
        self._reported: dict[str, int] = {}     # member -> state last notified

    def initial(self, pending: dict[str, bool], fault: dict[str, bool]) -> list[tuple[str, int]]:
        """Groups to announce before any member starts: (group, BACKUP|FAULT).

        pending/fault: each instance's tracking verdict.  A group with a
        member still waiting for a script stays INIT (keepalived: the
        member holds in INIT) and is announced after its members instead.
        """
        out: list[tuple[str, int]] = []
        for group, members in self.members.items():
            if not members or any(pending.get(m, False) for m in members):
                continue
            state = FAULT if any(fault.get(m, False) for m in members) else BACKUP
            self.state[group] = state
            out.append((group, state))
        return out

    def carry(self, old: "SyncGroups") -> None:
        """Reload: groups and members that still exist keep what was notified."""
        for g, st in old.state.items():
            if g in self.state:
                self.state[g] = st
        self._reported.update({m: st for m, st in old._reported.items() if m in self.group_of})

    def reported(self, name: str, state: int) -> tuple[str, int] | None:
        """A member's transition was notified; (group, state) if the group now moves."""
        group = self.group_of.get(name)
        if group is None:
            return None
        self._reported[name] = state
        if state == INIT or state == self.state[group]:
            return None
        if all(self._reported.get(m) == state for m in self.members[group]):
            self.state[group] = state
            return group, state
        return None

    def followers(self, name: str, new: int, old: int, reason: str) -> tuple[str, int] | None:
        """Members to force, and into which state, after `name` moved old -> new."""
        group = self.group_of.get(name)
        if group is None or reason == "sync_group":
            return None
        if new == MASTER or (old == MASTER and new == BACKUP):
            return group, new
        return None

    def others(self, group: str, name: str) -> tuple[str, ...]:
        return tuple(m for m in self.members[group] if m != name)

    def group_faulted(self, name: str, own_fault: dict[str, bool]) -> bool:
        """Whether `name` must be FAULT: it or any member of its group is faulted."""
        group = self.group_of.get(name)
        if group is None:
            return own_fault.get(name, False)
        return any(own_fault.get(m, False) for m in self.members[group])
