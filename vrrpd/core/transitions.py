"""The side effects of transitions, in order: keepalived's
vrrp_state_become_master / vrrp_state_leave_master.  Per transition: VIPs
are added and GARPs sent before the MASTER notify, removed before the
BACKUP/FAULT notify.  With them go the strict-mode VIP drop (added before the
VIPs, removed after), virtual_routes and virtual_rules (added after the VIPs,
removed before).  Those side effects run in one ordered queue so a burst of
thousands of transitions costs one netlink batch, and per instance they
happen in transition order: a batch moves as runs of one kind, each run in
chunks, pipelined (a chunk's GARPs and notifications follow as soon as its
VIPs are in; when no script must start first, each instance's first GARP
burst and fifo line go out from the netlink thread right after its own ACKs:
_followup).  What can be is prebuilt (vrrpd._effects) when an instance is
added or becomes BACKUP, never in the takeover itself.

Transitions is one part of vrrpd.core.daemon.Daemon; it uses the daemon's
instances, hooks, sync groups and verdicts (apply_verdict, pump).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vrrpd.engine import BACKUP, FAULT, INIT, MASTER
from vrrpd.core.instance import Instance
from vrrpd.core.pump import LOG_EACH, now_us
from vrrpd.net import firewall as strict, netlink as nl
from vrrpd.net.addresses import Vip
from vrrpd.net.garp import Announce, GarpConfig, arp_frame, ipv6_forwarding, na_frame
from vrrpd.ops import collector, memtrim
from vrrpd.scripts.notify import coalesced

if TYPE_CHECKING:
    from vrrpd.core.syncgroups import SyncGroups

log = logging.getLogger("vrrpd")

NO_ANNOUNCES = ((), ())      # Instance.announces when none are cached

CHUNK_MAX = 512           # instances per netlink send of a takeover (besides its budget)
CHUNK_GROWTH = 8          # netlink sends in a takeover's largest chunk
# A chunk is reported REPORT_SLICE instances at a time, for at most REPORT_TURN_S
# per turn of the loop: its GARPs and notify scripts are work per instance,
# and the adverts due meanwhile go out between turns.  Shorter turns
# keep adverts closer to time but give a takeover of thousands fewer ms each.
# New masters the netlink thread followed up go whole: what they leave the
# loop is bookkeeping (the delayed bursts' timers, counters, sync-group lines;
# those entering BACKUP may have their side effects to prebuild).
REPORT_SLICE = 16
REPORT_TURN_S = 0.005
VIP_RETRY_S = 5.0         # an instance FAULTed by a VIP it could not add tries again after this
UP, DOWN, CLEAR, OTHER = range(4)       # what a transition does to the instance's VIPs
CALL = 4                  # an item of the effects queue that is a call (after_effects)
HOLD_MONITOR = 64         # transitions waiting for their effects: a mass failover (_run_effects)
HOLD_MONITOR_S = 1.0


def _kind(old: int, new: int) -> int:
    if new == MASTER and old != MASTER:
        return UP
    if old == MASTER and new != MASTER:
        return DOWN
    if old == INIT:
        return CLEAR
    return OTHER


# _kind of every pair of states (small ints), looked up as KINDS[old][new].
_STATES = range(max(INIT, BACKUP, MASTER, FAULT) + 1)
KINDS = [[_kind(old, new) for new in _STATES] for old in _STATES]


def _runs(batch):
    """(kind, consecutive transitions of that kind) in batch order."""
    kinds = [KINDS[old][new] for _, old, new, _ in batch]
    if not kinds:
        return
    if kinds.count(kinds[0]) == len(kinds):     # a takeover: one run
        yield kinds[0], batch
        return
    start = 0
    for i in range(1, len(kinds)):
        if kinds[i] != kinds[i - 1]:
            yield kinds[i - 1], batch[start:i]
            start = i
    yield kinds[-1], batch[start:]


def _loop_reports(move) -> bool:
    """An item of the effects queue's second stage (its (VipMove, future),
    or None) whose GARPs and notify lines the loop sends and writes."""
    return move is None or move[0] is None or move[0].followup is None


def _dropped(insts: list[Instance]) -> list:
    """The instances' VIPs under the strict-mode drop while they are master."""
    return [v for i in insts if i.spec.needs_drop for v in i.vips]


def _routed(insts: list[Instance]) -> tuple[list, list]:
    """What masters hold besides their VIPs and the drop: virtual routes and rules."""
    routes: list = []
    rules: list = []
    for i in insts:
        conf = i.spec.conf
        if conf.virtual_routes:
            routes += conf.virtual_routes
        if conf.virtual_rules:
            rules += conf.virtual_rules
    return routes, rules


@dataclass
class NetChanges:
    """What a reload changes on the network: what masters hold (VIPs, the
    strict-mode drop, virtual routes and rules), collected here and applied
    by Transitions.apply_changes in keepalived's order."""
    vips_add: list = field(default_factory=list)
    vips_remove: list = field(default_factory=list)
    drop_add: list = field(default_factory=list)
    drop_remove: list = field(default_factory=list)
    routes_add: list = field(default_factory=list)
    routes_remove: list = field(default_factory=list)
    rules_add: list = field(default_factory=list)
    rules_remove: list = field(default_factory=list)
    announce: list = field(default_factory=list)     # kept masters with new VIPs: GARP

    def leave(self, inst) -> None:
        """A master instance goes away: everything it holds."""
        routes, rules = _routed([inst])
        self.vips_remove += inst.vips
        self.drop_remove += _dropped([inst])
        self.routes_remove += routes
        self.rules_remove += rules

    def update(self, inst, spec, new_vips, staying: bool = True) -> None:
        """A kept master: the difference between what it holds and the new
        settings (staying=False: only what goes; it is leaving MASTER)."""
        old_drop = inst.vips if inst.spec.needs_drop else []
        new_drop = new_vips if spec.needs_drop else []
        added = [v for v in new_vips if v not in inst.vips] if staying else []
        self.vips_add += added
        self.vips_remove += [v for v in inst.vips if v not in new_vips]
        if staying:
            self.drop_add += [v for v in new_drop if v not in old_drop]
        self.drop_remove += [v for v in old_drop if v not in new_drop]
        for mine, theirs, add, remove in (
                (inst.spec.conf.virtual_routes, spec.conf.virtual_routes,
                 self.routes_add, self.routes_remove),
                (inst.spec.conf.virtual_rules, spec.conf.virtual_rules,
                 self.rules_add, self.rules_remove)):
            if staying:
                add += [r for r in theirs if r not in mine]
            remove += [r for r in mine if r not in theirs]
        if added:
            self.announce.append(inst)


async def _addresses(op, vips, what: str) -> None:
    if vips:
        r = await op(vips)
        for vip, err in r.failed:
            log.warning("%s VIP %s failed: errno %d", what, vip.address, err)


def _lower_prio_scheduled(inst: Instance) -> bool:
    """The instance's GARP/NA bursts go through the GarpScheduler: paced ones
    (garp_master_refresh, vrrp_garp_interval...) and those whose answer to a
    lower-priority advert is not the prebuilt burst of garp_master_repeat."""
    conf = inst.spec.conf
    return inst.garp_paced or conf.garp_lower_prio_repeat not in (None, conf.garp_master_repeat)


class Transitions:
    # What this part uses of vrrpd.core.daemon.Daemon and of its Pump.
    instances: dict[str, Instance]
    hooks: list[Any]
    syncgroups: SyncGroups
    stopping: bool
    engine: Any                     # a vrrpd.Engine (or a fake of its calls)
    _loop: asyncio.AbstractEventLoop

    if TYPE_CHECKING:
        @property
        def dispatching(self) -> bool: ...      # Pump's: events still handed out in slices

        def _apply_verdict(self, inst: Instance, t: int) -> None: ...

        def _pump(self) -> None: ...

        def chunk_reported(self) -> None: ...   # Pump's: a chunk has its side effects

    def __init__(self, plan, links, effects, addresses, routes=None, garp=None, firewall=None):
        """plan: vrrpd.core.plan.Plan; links: a vrrpd.net.links.LinkMonitor;
        effects: a vrrpd._effects.Effects; addresses, routes, garp, firewall:
        vrrpd.net's AddressManager, RouteManager, GarpScheduler and the
        strict-mode firewall (None: no instance needs the drop).  Fakes of
        their calls will do for tests."""
        self.plan = plan
        self.links = links
        self.effects = effects
        self.addresses = addresses
        self.routes = routes
        self.garp = garp
        self.firewall = firewall
        # Told of each VIP this module is about to delete (the daemon's VipWatch).
        self.expect_deleted: Callable[[Iterable], None] = lambda vips: None
        self._links_gen = 0             # bumped when a link's name, MAC or existence changes
        self._slots: dict[int, int] = {}    # ifindex -> socket slot of Effects
        self._slot_ifindex: list[int] = []  # socket slot -> ifindex (slots are 0..n-1)
        self._effects: asyncio.Queue = asyncio.Queue()     # batches of transitions
        self._moving: asyncio.Queue = asyncio.Queue()      # their chunks, VIPs on the way
        self._tasks: list[asyncio.Task] = []
        self._effects_waiting = 0       # transitions queued in _effects
        self._effects_unfinished = 0    # batches queued or being applied
        self._effects_parked = False    # _run_effects waits for a batch
        self._chunk_sends = 1           # netlink sends the last chunk was worth (_chunks)
        self._loop_reports = 0          # items in _moving whose lines the loop writes
        self._held_since: float | None = None     # the link monitor held (a mass failover)
        # garp_lower_prio_delay's bursts armed: idx -> the arming whose burst goes
        # (a later lower-priority advert restarts the delay, as GarpScheduler's do).
        self._lower_armed: dict[int, int] = {}
        self._lower_arming = 0

    def queue(self, batch) -> None:
        """A batch of transitions (Instance, old, new, reason) to apply, after
        those queued before."""
        self._effects_waiting += len(batch)
        self._effects_unfinished += 1
        self._effects.put_nowait(batch)
        if self._effects_parked and self._effects.qsize() == 1:
            runs = list(_runs(batch))
            if not self._waits_first(runs):
                # The effects task waits for work and nothing must be awaited
                # before this batch's VIPs: they go to the netlink thread now,
                # not a turn of the loop later behind the timers' and sockets'
                # callbacks (a takeover's next slice of new masters among them).
                self._effects.get_nowait()
                self._move_batch_now(batch, runs)

    def after_effects(self, call: Callable[[], None]) -> None:
        """Make `call` (from the loop) once the batches queued before have
        their side effects, now if none is queued or being applied."""
        if self._effects_unfinished == 0:
            call()
            return
        self._effects_unfinished += 1
        self._effects.put_nowait(call)

    @property
    def effects_idle(self) -> bool:
        """No batch of transitions is queued or being applied."""
        return self._effects_unfinished == 0

    def start_effects(self) -> None:
        self._tasks = [asyncio.create_task(self._run_effects()),
                       asyncio.create_task(self._run_reports())]

    def stop_effects(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._held_since is not None:
            self._release_hold()

    async def effects_done(self) -> None:
        """Until every pending event is dispatched and every queued batch applied."""
        while self.dispatching:
            await asyncio.sleep(0)
        await self._effects.join()

    # The effects queue works in two stages, so that the kernel's work on a
    # takeover's VIPs never waits for the loop's on the GARPs and notify lines
    # of those before: _run_effects takes each batch as it comes and sends its
    # VIPs on their way (_move_run); _run_reports follows behind, chunk by
    # chunk as their ACKs come back (_report), and makes the calls queued
    # between them (after_effects) in their turn.
    async def _run_effects(self) -> None:
        while True:
            self._effects_parked = True
            items = [await self._effects.get()]
            self._effects_parked = False
            while not self._effects.empty():
                items.append(self._effects.get_nowait())
            for is_call, group in itertools.groupby(items, callable):
                if is_call:
                    for call in group:      # reported in order, by the loop
                        self._loop_reports += 1
                        self._moving.put_nowait((call, CALL, None, None))
                else:
                    await self._move_batches(list(group))
            del items, group            # not held while waiting for the next ones

    async def _move_batches(self, batches: list) -> None:
        """Batches queued meanwhile (a takeover dispatched in slices) are
        moved as one: longer runs, so fewer and larger chunks."""
        taken = len(batches)
        batch = batches[0] if taken == 1 else [t for b in batches for t in b]
        self._taking(batch)
        try:
            for kind, run in _runs(batch):
                if kind in (UP, DOWN):
                    await self._before_vips([item[0] for item in run], kind)
                self._move_run(kind, run)
        except Exception:       # never let one failure stop later transitions
            log.exception("applying transitions failed")
        finally:
            self._moving.put_nowait((None, taken, None, None))

    def _move_batch_now(self, batch, runs: list) -> None:
        """_move_batches for one batch (its _runs) whose moves await nothing
        (_waits_first)."""
        self._taking(batch)
        try:
            for kind, run in runs:
                self._move_run(kind, run)
        except Exception:
            log.exception("applying transitions failed")
        finally:
            self._moving.put_nowait((None, 1, None, None))

    def _taking(self, batch) -> None:
        """The batch leaves the queue for the netlink thread."""
        self._effects_waiting -= len(batch)
        # A mass failover: the kernel's notifications of the VIPs we add
        # (each decoded in Python) wait in the link monitor's socket
        # until the transitions are through, instead of competing with
        # them; link events wait that long too (at most HOLD_MONITOR_S).
        # The collector waits as well (vrrpd.ops.collector).
        if self._held_since is None and len(batch) + self._effects_waiting >= HOLD_MONITOR:
            self._held_since = time.monotonic()
            self.links.hold()
            collector.pause()

    def _waits_first(self, runs: list) -> bool:
        """Whether one of a batch's _runs has _before_vips work to await (what
        it collects: the strict-mode drop going in, routes and rules going out)."""
        for kind, run in runs:
            if kind == UP and self.firewall is not None and _dropped([i for i, *_ in run]):
                return True
            if kind == DOWN and any(_routed([i for i, *_ in run])):
                return True
        return False

    async def _run_reports(self) -> None:
        while True:
            chunk, kind, insts, move = await self._moving.get()
            try:
                if chunk is None:
                    self._applied(kind)
                elif kind == CALL:
                    try:
                        chunk()
                    finally:
                        self._applied(1)
                else:
                    await self._report(chunk, kind, insts, move)
            except Exception:
                log.exception("applying transitions failed")
            finally:
                if chunk is not None and _loop_reports(move):
                    self._loop_reports -= 1
                chunk = insts = move = None
                self._moving.task_done()

    def _move_run(self, kind: int, run) -> None:
        """A run of one kind (UP, DOWN, CLEAR, OTHER) in chunks: the first
        worth one netlink send, so the first instances of a takeover of
        thousands do not wait for the last one's VIPs.  What masters hold
        besides VIPs (the strict-mode drop, routes, rules) goes in and out
        around them in keepalived's order (_before_vips, then _after_vips)."""
        if kind == OTHER:
            self._loop_reports += 1
            self._moving.put_nowait((run, kind, None, None))
            return
        for chunk, idxs in self._chunks(run):
            insts = [item[0] for item in chunk]
            move = self._move_vips(insts, kind == UP, self._followup(insts, chunk, kind), idxs)
            if _loop_reports(move):
                self._loop_reports += 1
            self._moving.put_nowait((chunk, kind, insts, move))

    def _followup(self, insts: list[Instance], chunk, kind: int) -> dict | None:
        """What the netlink thread does for a chunk as each instance's VIPs
        are ACKed (vrrpd._effects.Followup: the first GARP/NA burst, then the
        fifo line), as vip_move's keywords; None: the loop does it all.  Only
        when nothing of the loop's must come in between: no earlier item
        waiting for the loop's report (lines keep transition order), no
        routes or rules to add after the VIPs, no strict-mode drop to remove
        after them, no paced GARPs, no notify script or SMTP alert."""
        if kind not in (UP, DOWN) or self._loop_reports:
            return None
        if kind == UP:
            if [i for i in insts if i.garp_paced or i.routed]:
                return None
        elif [i for i in insts if i.garp_paced or self.firewall is not None and i.spec.needs_drop]:
            return None
        args: dict[str, Any] = {"announce": kind == UP}
        for h in self.hooks:
            if hasattr(h, "thread_lines"):
                lines = h.thread_lines(chunk)
                if lines is None:
                    return None
                args["words"], args["priorities"], args["gates"] = lines
        return args if kind == UP or "words" in args else None

    async def _report(self, chunk, kind: int, insts, move) -> None:
        """A chunk whose VIPs are on their way: once their ACKs are back, its
        routes and rules (UP) or the strict-mode drop (DOWN), then its GARPs
        and notifications, in turns of the loop of at most REPORT_TURN_S."""
        followup = None
        if kind != OTHER:
            failed = await self._vips_moved(insts, *move)
            if _loop_reports(move):     # (_followup's chunks have no routes, rules or drop)
                await self._after_vips(insts, kind)
            self._fault_failed(failed)
            if not _loop_reports(move):
                followup = move[0].followup
                for slot, frame in followup.deferred():     # a full device queue: retry
                    self.garp.resend(self._ifindex_of_slot(slot), frame)
        size = len(chunk) if followup is not None and kind == UP else REPORT_SLICE
        turn_ends = time.perf_counter() + REPORT_TURN_S
        for start in range(0, len(chunk), size):
            if time.perf_counter() > turn_ends:
                await asyncio.sleep(0)
                turn_ends = time.perf_counter() + REPORT_TURN_S
            self._announce_and_report(chunk[start:start + size], followup)
        if kind != OTHER:
            self.chunk_reported()

    def _applied(self, taken: int) -> None:
        """`taken` batches are through."""
        self._effects_unfinished -= taken
        for _ in range(taken):
            self._effects.task_done()
        held_since = self._held_since
        if held_since is not None and (self._effects_unfinished == 0 or
                                       time.monotonic() - held_since > HOLD_MONITOR_S):
            self._release_hold()
            if self._effects_unfinished == 0:
                # A mass failover's buffers (moves, follow-ups, batches) are
                # freed: their pages go back to the kernel, off the loop
                # (ctypes lets go of the GIL).
                asyncio.get_running_loop().run_in_executor(None, memtrim.trim)

    def _release_hold(self) -> None:
        """The end of a mass failover's hold (_taking)."""
        self._held_since = None
        self.links.release()
        collector.resume()

    def _chunks(self, run) -> list[tuple[list, list[int]]]:
        """Consecutive pieces of `run` (with their instances' idx): the first
        worth one netlink send, each next one twice the last up to
        CHUNK_GROWTH sends (fewer wake-ups of the loop and fewer exchanges).
        While moves are on their way (a takeover dispatched in slices), a run
        goes on from the size the last one reached."""
        is_prebuilt = self._is_prebuilt
        for inst in [item[0] for item in run if not is_prebuilt(item[0])]:
            self._prebuild(inst)
        idxs = [item[0].idx for item in run]
        requester = self.addresses.requester
        sends = self._chunk_sends if requester.busy else 1
        ends, reached = self.effects.chunk_ends(idxs, requester.chunk, sends, CHUNK_GROWTH,
                                                CHUNK_MAX)
        if reached != sends:        # a chunk was full: the next run goes on from there
            self._chunk_sends = reached
        out, start = [], 0
        for end in ends:
            out.append((run[start:end], idxs[start:end]))
            start = end
        return out

    async def _before_vips(self, insts: list[Instance], kind: int) -> None:
        """keepalived's vrrp_state_become_master: the strict-mode drop before
        the VIPs; vrrp_state_leave_master: rules and routes before them.
        Either waits until the chunks queued before are reported, whose
        _after_vips may touch the same drop, routes and rules."""
        if kind == UP:
            if self.firewall is not None and (drop := _dropped(insts)):
                await self._moving.join()
                await self.firewall.add_vips(drop)
        elif kind == DOWN:
            routes, rules = _routed(insts)
            if routes or rules:
                await self._moving.join()
                await self.routes.remove(routes, rules)

    async def _after_vips(self, insts: list[Instance], kind: int) -> None:
        """Routes and rules after the VIPs (UP), the drop after them (DOWN)."""
        if kind == UP:
            routes, rules = _routed(insts)
            if routes or rules:
                await self.routes.add(routes, rules)
        elif kind == DOWN and self.firewall is not None and (drop := _dropped(insts)):
            await self.firewall.remove_vips(drop)

    def _fault_failed(self, failed: list[Instance]) -> None:
        """Instances whose VIPs failed to go up: FAULT."""
        for inst in failed:
            # A master without its VIPs black-holes their traffic: FAULT (priority 0
            # goes out, the backup takes over) and try again later.
            inst.vip_fault = True
        if failed:
            self._loop.call_later(VIP_RETRY_S, self._retry_vips, failed)
            t = now_us()
            for inst in failed:
                self._apply_verdict(inst, t)
            self._pump()

    def _move_vips(self, insts: list[Instance], add: bool, followup: dict | None = None,
                   idxs: list[int] | None = None) -> tuple[Any, Any]:
        """Hand the instances' prebuilt VIP messages (and what follows them
        there: _followup) to the requester's thread -> (the VipMove, the
        future of its exchange), or Nones: nothing to send.  idxs: the
        instances' idx, when the caller has them."""
        if idxs is None:
            idxs = [i.idx for i in insts]
        move = self.effects.vip_move(idxs, add, **(followup or {}))
        if not move.count:
            return None, None
        if not add:
            self.expect_deleted(v for i in insts for v in i.vips)
        return move, self.addresses.requester.submit(move)

    async def _vips_moved(self, insts: list[Instance], move, exchange) -> list[Instance]:
        """Wait for a VipMove; -> the instances one of whose VIPs failed."""
        if move is None:
            return []
        add = move.add
        err = await exchange
        if err:                     # the kernel refused a send, or ACKs were lost
            log.error("%s %d VIPs: %s", "adding" if add else "removing", move.count,
                      os.strerror(err))
        failed = self.effects.finish(move)
        self.addresses.account(add, move.count - len(failed), len(failed))
        if failed:
            log.error("%s VIPs failed for %d instance(s): %s", "adding" if add else "removing",
                      len(failed), ", ".join(f"{insts[p].name} ({os.strerror(e)})"
                                             for p, e in failed[:LOG_EACH]))
        return [insts[p] for p, _ in failed]

    async def _vips(self, insts: list[Instance], add: bool) -> list[Instance]:
        """Add (remove) the instances' VIPs with their prebuilt messages.
        -> the instances one of whose VIPs failed."""
        return await self._vips_moved(insts, *self._move_vips(insts, add))

    def _retry_vips(self, insts: list[Instance]) -> None:
        """Instances FAULTed together by VIPs that failed, VIP_RETRY_S later:
        their verdicts again, dispatched as one batch."""
        if self.stopping:
            return
        t = now_us()
        for inst in insts:
            if self.instances.get(inst.name) is inst:       # not removed by a reload
                inst.vip_fault = False
                self._apply_verdict(inst, t)
        self._pump()

    def _announce_and_report(self, chunk, followup=None) -> None:
        """GARP/NA after the VIPs, then the notifications (keepalived's order),
        then a sync group's own line after its last member's.  followup: the
        netlink thread sent the first bursts and wrote the fifo lines."""
        masters = [inst for inst, old, new, _ in chunk
                   if new == MASTER and old != MASTER]
        left = [inst for inst, old, new, _ in chunk
                if old == MASTER and new != MASTER]
        if masters:
            self._announce(masters, first_sent=followup is not None)
        if left:
            self.effects.bump([i.idx for i in left])       # no delayed bursts now
            for inst in left:
                if _lower_prio_scheduled(inst):
                    for ifindex in {v.ifindex: None for v in inst.vips}:
                        self.garp.stop((inst.name, ifindex))
        for inst, _, new, _ in chunk:
            if new == BACKUP and not self._is_prebuilt(inst):
                self._prebuild(inst)    # built now rather than in the rush of a takeover
        for h in self.hooks:
            try:
                if hasattr(h, "on_transitions"):
                    h.on_transitions(chunk, self.effects, followup)
                else:
                    with coalesced():
                        for item in chunk:
                            h.on_transition(*item)
            except Exception:
                log.exception("transition hook failed")
        # A group's notification follows its last member's (keepalived).
        group_of = self.syncgroups.group_of
        for inst, _, new, _ in chunk if group_of else ():
            if inst.name in group_of:
                moved = self.syncgroups.reported(inst.name, new)
                if moved is not None:
                    for h in self.hooks:
                        h.on_group_transition(*moved)

    def _announce(self, masters: list[Instance], first_sent: bool = False) -> None:
        """The first GARP/NA burst of new masters from their prebuilt frames
        (one sendmmsg() per socket; first_sent: the netlink thread sent it),
        and one timer per garp_master_delay for the second burst.  Instances
        with a refresh or a pacing interval are announced by the
        GarpScheduler instead."""
        fast = [i for i in masters if not i.garp_paced]
        idxs = [i.idx for i in fast]
        self.effects.bump(idxs)
        if not first_sent:
            self._burst(idxs)
        later: dict[float, list[int]] = {}
        for inst in fast:
            delay = inst.spec.conf.garp_master_delay
            if delay > 0:
                later.setdefault(delay, []).append(inst.idx)
        for delay, ids in later.items():
            self._loop.call_later(delay, self._burst, ids, self.effects.gens(ids))
        if len(fast) < len(masters):
            for inst in masters:
                if inst.garp_paced:
                    for key, ann in self._announces(inst):
                        self.garp.master(key, ann)

    def _burst(self, idxs: list[int], gens: list[int] | None = None) -> None:
        """A burst of the instances' prebuilt GARP/NA frames; gens (a delayed
        burst): only those whose MASTER period is still the one it was for.
        Frames a full device queue refused go to the GarpScheduler's retry."""
        for slot, frame in self.effects.announce(idxs, gens):
            self.garp.resend(self._ifindex_of_slot(slot), frame)

    def announce_lower_prio(self, masters: list[Instance]) -> None:
        """Masters that received a lower-priority advert: keepalived sends a
        burst of garp_lower_prio_repeat rounds at once and another after
        garp_lower_prio_delay (unset: the garp_master_* values), the latter
        only while the VIPs are still set (vrrp_send_link_update).  Where
        that burst is the prebuilt one, all go in one sendmmsg() per socket
        and the delayed one is void once the instance left MASTER (its gen);
        paced instances and other repeats go through the GarpScheduler."""
        fast = []
        for inst in self._with_group_masters(masters):
            if not self._is_prebuilt(inst):
                self._prebuild(inst)            # also decides garp_paced
            if _lower_prio_scheduled(inst):
                for key, ann in self._announces(inst, keep=inst.garp_paced):
                    self.garp.lower_prio(key, ann)
            elif inst.spec.conf.garp_master_repeat > 0:
                fast.append(inst)
        if not fast:
            return
        self._burst([i.idx for i in fast])
        later: dict[float, list[int]] = {}
        for inst in fast:
            conf = inst.spec.conf
            delay = conf.garp_master_delay if conf.garp_lower_prio_delay is None \
                else conf.garp_lower_prio_delay
            if delay > 0:
                later.setdefault(delay, []).append(inst.idx)
        for delay, ids in later.items():
            self._lower_arming += 1
            for idx in ids:
                self._lower_armed[idx] = self._lower_arming
            self._loop.call_later(delay, self._announce_lower_again, ids,
                                  self.effects.gens(ids), self._lower_arming)

    def _with_group_masters(self, masters: list[Instance]) -> list[Instance]:
        """Each master, then the other members of its sync group whose VIPs
        are set: keepalived's vrrp_state_master_rx refreshes the ARP caches
        of the whole group when one member hears a lower priority (after a
        partition heals on one of the group's links, say), once per advert."""
        group_of = self.syncgroups.group_of
        if not group_of:
            return masters
        out = []
        for inst in masters:
            out.append(inst)
            group = group_of.get(inst.name)
            if group is None:
                continue
            for name in self.syncgroups.others(group, inst.name):
                other = self.instances.get(name)
                if other is not None and self.effects.vips_on(other.idx):
                    out.append(other)
        return out

    def _announce_lower_again(self, idxs: list[int], gens: list[int], arming: int) -> None:
        """garp_lower_prio_delay's burst, for those this arming is still the
        latest of and still MASTER since."""
        due = [(idx, gen) for idx, gen in zip(idxs, gens) if self._lower_armed.get(idx) == arming]
        for idx, _ in due:
            del self._lower_armed[idx]
        if due:
            self._burst([idx for idx, _ in due], [gen for _, gen in due])

    # -- prebuilt side effects (vrrpd._effects) -----------------------------------------
    def _is_prebuilt(self, inst: Instance) -> bool:
        # By identity: a reload's new spec, even an equal one, is built again
        # (what _prebuild reads of global_defs is not in the spec).
        pb = inst.prebuilt
        return bool(pb) and pb[0] is inst.spec and pb[1] is inst.vips and pb[2] == inst.name \
            and pb[3] == self._links_gen

    def _prebuild(self, inst: Instance) -> None:
        """The instance's VIP messages, GARP/NA frames and fifo name, built
        when it is added or becomes BACKUP (and again if its spec, VIPs, name
        or links changed since), never in the takeover itself."""
        conf = inst.spec.conf
        g = self.plan.config.global_defs
        inst.garp_paced = bool(conf.garp_master_refresh > 0 or g.vrrp_garp_interval
                               or g.vrrp_gna_interval)
        inst.routed = bool(conf.virtual_routes or conf.virtual_rules)
        encode = self.addresses.encode
        frames = []
        # Only the GarpScheduler (paced instances) needs the Announce objects
        # after this: the others' GARP/NA frames live in Effects.
        for _, ann in self._announces(inst, keep=inst.garp_paced):
            slot = self._slot(ann.ifindex)
            frames += [(slot, arp_frame(ann.mac, v)) for v in ann.vips4]
            if ann.vips6:
                router = ipv6_forwarding(ann.ifname) if ann.router is None else ann.router
                frames += [(slot, na_frame(ann.mac, v, router)) for v in ann.vips6]
        self.effects.set_instance(
            inst.idx,
            nl_add=b"".join(encode(nl.RTM_NEWADDR, v) for v in inst.vips),
            nl_del=b"".join(encode(nl.RTM_DELADDR, v) for v in inst.vips),
            nmsgs=len(inst.vips), frames=frames, repeat=conf.garp_master_repeat,
            name=b'"%s"' % inst.name.encode(errors="surrogateescape"))
        inst.prebuilt = (inst.spec, inst.vips, inst.name, self._links_gen)

    def _slot(self, ifindex: int) -> int:
        """The Effects socket slot of the interface's packet socket."""
        slot = self._slots.get(ifindex)
        if slot is None:
            slot = self._slots[ifindex] = len(self._slots)
            self._slot_ifindex.append(ifindex)
            try:
                fd = self.garp.sender.socket_for(ifindex).fileno()
            except OSError as e:
                log.warning("ifindex %d: no packet socket for GARP/NA: %s", ifindex, e)
                fd = -1
            self.effects.set_socket(slot, fd)
        return slot

    def _ifindex_of_slot(self, slot: int) -> int:
        return self._slot_ifindex[slot]

    def _announces(self, inst: Instance, keep: bool = True) -> list:
        """(key, Announce) per interface the instance's VIPs live on; rebuilt
        only when one of those links changed (a failover of thousands of
        instances must not rebuild them all).  keep=False: built for this
        once and not cached (an instance whose announcements are prebuilt
        frames does not hold them), an existing cache is dropped."""
        if not keep:
            inst.announces = NO_ANNOUNCES
            return list(self._build_announces(inst))
        links = self.links.links
        built_for, anns = inst.announces
        # What they depend on: the name, config and VIPs (a reload may change
        # them in place) and the name and MAC of each link the VIPs are on.
        now = (inst.name, inst.spec.conf, tuple(inst.vips)) + tuple(
            (ix, link.name, link.mac) if (link := links.get(ix)) is not None else (ix,)
            for ix in {v.ifindex: None for v in inst.vips})
        if now != built_for:
            anns = list(self._build_announces(inst))
            inst.announces = (now, anns)
        return anns

    def _build_announces(self, inst: Instance):
        conf = inst.spec.conf
        g = self.plan.config.global_defs
        cfg = GarpConfig(master_delay=conf.garp_master_delay, master_repeat=conf.garp_master_repeat,
                         master_refresh=conf.garp_master_refresh,
                         master_refresh_repeat=conf.garp_master_refresh_repeat,
                         lower_prio_delay=conf.garp_lower_prio_delay,
                         lower_prio_repeat=conf.garp_lower_prio_repeat,
                         garp_interval=g.vrrp_garp_interval, gna_interval=g.vrrp_gna_interval)
        by_if: dict[int, list[Vip]] = {}
        for v in inst.vips:
            by_if.setdefault(v.ifindex, []).append(v)
        for ifindex, vips in by_if.items():
            link = self.links.links.get(ifindex)
            if link is None or link.mac is None:
                continue
            yield (inst.name, ifindex), Announce(
                ifindex, link.name, link.mac,
                [v.packed for v in vips if v.family == socket.AF_INET],
                [v.packed for v in vips if v.family == socket.AF_INET6], cfg)

    # -- a reload's changes (vrrpd.core.reload) ----------------------------------------
    def stop_announcing(self, inst: Instance) -> None:
        """A master leaves without a transition (reload): its paced GARPs stop."""
        for key, _ in self._announces(inst):
            self.garp.stop(key)

    async def apply_changes(self, changes: NetChanges) -> None:
        """A reload's changes to what masters hold, in keepalived's order:
        routes and rules, VIPs, then the drop go; the drop, VIPs, then
        routes and rules come; GARPs for kept masters' new VIPs."""
        if changes.routes_remove or changes.rules_remove:
            await self.routes.remove(changes.routes_remove, changes.rules_remove)
        await _addresses(self.addresses.remove, changes.vips_remove, "removing")
        if changes.drop_remove and self.firewall is not None:
            await self.firewall.remove_vips(changes.drop_remove)
        if changes.drop_add:
            if self.firewall is None:
                self.firewall = strict.firewall_for(self.plan.config)
            await self.firewall.add_vips(changes.drop_add)
        await _addresses(self.addresses.add, changes.vips_add, "adding")
        if changes.routes_add or changes.rules_add:
            await self.routes.add(changes.routes_add, changes.rules_add)
        for inst in changes.announce:
            # keepalived sends GARPs after adding VIPs on reload (vrrp_send_link_update).
            if self.engine.state(inst.idx) == MASTER:
                for key, ann in self._announces(inst):
                    self.garp.master(key, ann)
