"""The hot loop's Python side: receive pacing, the timer pump and event
dispatch.  The C engine owns every timer and packet; this part runs what is
due, reads the sockets (by event, or polled above RX_POLL_RATE), and turns
the rare events the engine queues into a batch of transitions for the side
effects (vrrpd.core.transitions) and into log lines.

Pump is one part of vrrpd.core.daemon.Daemon; it uses the daemon's engine,
instances (by_idx), hooks, and Transitions' GARP bursts and queue.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vrrpd._timer import DeadlineTimer
from vrrpd.engine import (
    EV_REJECT,
    EV_RX_LOWER_PRI,
    EV_SOCK_REJECT,
    EV_STATE,
    REASON_NAMES,
    REJECT_NAMES,
    STATE_NAMES,
)
from vrrpd.ops.logs import Rows
from vrrpd.scripts.notify import coalesced

if TYPE_CHECKING:
    from vrrpd.core.instance import Instance
    from vrrpd.core.syncgroups import SyncGroups
    from vrrpd.ops.ratelimit import PerKey

log = logging.getLogger("vrrpd")

TX_RETRY_US = 1000        # sends a full device queue deferred are retried this often

# Receive pacing.  Woken per readable socket, a backup of thousands of
# instances wakes for every few adverts (each wake-up is also paid by the
# sender's kernel, in sock_def_readable): above RX_POLL_RATE packets/s the
# sockets leave the event loop and are read every RX_POLL_S instead, which
# delays what an advert does by at most that much (a master-down timer is
# hundreds of ms; Skew_Time tens).  Below a quarter of the rate: back to events.
RX_POLL_S = 0.005
RX_POLL_RATE = 2000
RX_CHECK_S = 1.0
RX_LATE_US = 5000         # timers this late: read the sockets before running them
RX_CALL_MAX = 16 * 64     # packets Engine.on_readable reads at most per call

DISPATCH_SLICE = 128      # events handed to the effects queue per turn of the loop
# ... once a chunk is reported, and as many of those per turn as fit in
# DISPATCH_TURN_S.  Bounded: a master's answer to a lower-priority advert costs
# Python much more than a transition, and a rebooted router's preempt of
# thousands brings one per instance; unbounded slices held the loop (and every
# advert) long enough for the peer's down timers to run out.
DISPATCH_MAX = 1024
DISPATCH_TURN_S = 0.020
HEAD_START = DISPATCH_SLICE     # new masters of a takeover whose side effects go first
HEAD_START_S = 0.010      # at most this long before the rest of the takeover goes on
LOG_EACH = 8      # transitions per batch logged one line each at INFO; more are summarised


def log_transitions(batch) -> None:
    """keepalived's "(VI_1) Entering MASTER STATE" per transition.  A failover
    of thousands of instances would spend ~60 us per line (a tenth of a second
    per 2,000) before its VIPs go up, so a large batch is logged as one INFO
    line per (state, reason) naming every instance, and the per-instance
    lines go to DEBUG, as one record the log writer's thread expands."""
    if len(batch) <= LOG_EACH:
        for inst, _, new, reason in batch:
            log.info("(%s) Entering %s STATE (%s)", inst.name, STATE_NAMES.get(new, new), reason)
        return
    groups: dict[tuple, list[str]] = {}
    for inst, _, new, reason in batch:
        groups.setdefault((new, reason), []).append(inst.name)
    for (new, reason), names in groups.items():
        log.info("%d instances Entering %s STATE (%s): %s", len(names),
                 STATE_NAMES.get(new, new), reason, " ".join(names))
    if log.isEnabledFor(logging.DEBUG):
        log.debug(Rows("(%s) Entering %s STATE (%s)",
                       [(inst.name, STATE_NAMES.get(new, new), reason)
                        for inst, _, new, reason in batch]))


def now_us() -> int:
    return time.monotonic_ns() // 1000


def _addr(packed: bytes | None) -> str:
    if not packed:
        return "?"
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


class Pump:
    # Pump is one part of vrrpd.core.daemon.Daemon: what it uses of the other
    # parts (Daemon's own attributes, Transitions' GARPs and effects queue).
    by_idx: dict[int, Instance]
    lower_log: PerKey
    hooks: list[Any]
    syncgroups: SyncGroups

    if TYPE_CHECKING:
        def _follow_group(self, inst: Instance, old: int, new: int, reason: str) -> None: ...

        def announce_lower_prio(self, masters: list[Instance]) -> None: ...

        def queue(self, batch) -> None: ...

        def after_effects(self, call: Callable[[], None]) -> None: ...

        @property
        def effects_idle(self) -> bool: ...      # Transitions': no batch queued or applying

    def __init__(self, engine, loop: asyncio.AbstractEventLoop | None = None):
        """engine: a vrrpd.Engine (or a fake of its calls); loop: the
        running loop, else set at start-up."""
        self.engine = engine
        # None only until start-up sets it: nothing here runs before then.
        self._loop: asyncio.AbstractEventLoop = loop  # type: ignore[assignment]
        self._sockets: dict[tuple[str, int], tuple[int, socket.socket]] = {}
        self._timer = DeadlineTimer()       # the engine's next deadline (see _arm)
        self._timer_at = -1                 # what it is armed for; -1: not armed
        self._timer_polled = False
        self._rx_packets = 0            # since the last pacing check
        self._rx_poll: asyncio.TimerHandle | None = None     # set while polling
        self._rx_check: asyncio.TimerHandle | None = None
        self._more: asyncio.Handle | None = None     # set while a dispatch goes on in slices
        self._reported = False      # a chunk of it has its side effects (see _next_slice)
        self._head: asyncio.TimerHandle | None = None    # set during a takeover's head start

    def add_socket(self, key: tuple[str, int], sock_id: int, sock: socket.socket) -> None:
        """A VRRP socket (the engine's sock_id) to read when readable: key is
        (interface, family)."""
        if self._rx_poll is None:
            self._loop.add_reader(sock.fileno(), self._on_readable, sock_id)
        self._sockets[key] = (sock_id, sock)

    def start_rx_pacing(self) -> None:
        """From now on, the packet rate is checked every RX_CHECK_S."""
        self._rx_check = self._loop.call_later(RX_CHECK_S, self._check_rx)

    @property
    def sockets(self) -> dict[tuple[str, int], tuple[int, socket.socket]]:
        """(interface, family) -> (the engine's sock_id, the VRRP socket)."""
        return self._sockets

    def pump(self) -> None:
        """Run what is due now (after changing the engine from outside)."""
        self._pump()

    @property
    def polling(self) -> bool:
        """The sockets are polled every RX_POLL_S rather than read on events."""
        return self._rx_poll is not None

    def _on_readable(self, sock_id: int) -> None:
        self._rx_packets += self.engine.on_readable(sock_id, now_us())
        self._pump()

    def _poll_rx(self) -> None:
        self._rx_poll = self._loop.call_later(RX_POLL_S, self._poll_rx)
        self._drain_rx()
        self._pump()

    def _check_rx(self) -> None:
        """Switch between per-socket wake-ups and polling by the packet rate."""
        self._rx_check = self._loop.call_later(RX_CHECK_S, self._check_rx)
        rate, self._rx_packets = self._rx_packets / RX_CHECK_S, 0
        if self._rx_poll is None and rate > RX_POLL_RATE:
            for _, sock in self._sockets.values():
                self._loop.remove_reader(sock.fileno())
            self._rx_poll = self._loop.call_later(RX_POLL_S, self._poll_rx)
            log.debug("receiving %.0f adverts/s: polling sockets every %g s", rate, RX_POLL_S)
        elif self._rx_poll is not None and rate < RX_POLL_RATE / 4:
            self._rx_poll.cancel()
            self._rx_poll = None
            for sock_id, sock in self._sockets.values():
                self._loop.add_reader(sock.fileno(), self._on_readable, sock_id)
            log.debug("receiving %.0f adverts/s: back to socket events", rate)

    @property
    def dispatching(self) -> bool:
        """Events are still being handed out in slices (see _pump)."""
        return self._more is not None

    def _pump_more(self) -> None:
        self._more = None
        self._pump()

    def chunk_reported(self) -> None:
        """A chunk of transitions has its side effects (Transitions._report)."""
        self._reported = True
        self.end_head_start()

    def end_head_start(self) -> None:
        """A takeover's first new masters have their side effects (or
        HEAD_START_S passed): the rest of it goes on."""
        if self._head is not None:
            self._head.cancel()
            self._head = None
            self._pump()

    def _on_timer(self) -> None:
        if self._timer.expired():
            self._timer_at = -1
            self._pump()

    def _drain_rx(self) -> None:
        t = now_us()
        for sock_id, _ in self._sockets.values():
            while (n := self.engine.on_readable(sock_id, t)) >= RX_CALL_MAX:
                self._rx_packets += n
            self._rx_packets += n

    def _pump(self) -> None:
        """Run due timers, hand events to the effects queue, re-arm the one timer."""
        t = now_us()
        if 0 <= self.engine.next_deadline() < t - RX_LATE_US:
            # The loop was held up (start-up of thousands of instances, a
            # full GC): adverts may wait unread while master-down timers ran
            # out.  Read them first, so that a stall does not look like a
            # dead master.
            self._drain_rx()
        # A takeover's head start: when nothing is in flight, the tick makes
        # at most HEAD_START new masters; if more are due, no more are made
        # (and timers due after theirs wait too; at most HEAD_START_S) until
        # those first ones have their VIPs, GARPs and notify lines, as
        # keepalived does instance by instance.  The later new masters'
        # adverts go a few ms late rather than the first side effect after
        # every advert of thousands.
        if self._head is not None:
            self.engine.tick(t, 0)
        elif self._more is None and self.effects_idle:
            self.engine.tick(t, HEAD_START)
            if 0 <= self.engine.next_deadline() <= t:
                self._head = self._loop.call_later(HEAD_START_S, self.end_head_start)
        else:
            self.engine.tick(t)
        # Sync-group moves queue more events; drain until quiet.  A takeover
        # of thousands reaches Python in slices (_next_slice): until its first
        # chunk is reported, the loop turns after each, so the effects queue
        # starts on that slice (its VIPs, GARPs and notify lines) while the
        # next one is dispatched; then slices go on in one turn for at most
        # DISPATCH_TURN_S (each turn also sends the adverts due, thousands at
        # 10,000 masters).
        # Past its head start, the engine's own work (states, timers, the new
        # masters' adverts) is not sliced: a new master's advert must not wait
        # for many others' side effects, or a third router's timers run out too.
        turn_end = time.perf_counter() + DISPATCH_TURN_S
        while events := self.engine.pop_events(size := self._next_slice()):
            self._on_events(events)
            if len(events) == size and not (self._reported and time.perf_counter() < turn_end):
                self.engine.flush()
                if self._more is None and self._head is None:
                    self._more = self._loop.call_soon(self._pump_more)
                return
        if self._head is None:
            self._reported = False      # the next takeover starts small
        self.engine.flush()         # what tracking and sync groups queued, in one batch
        if self._head is not None:
            return                  # end_head_start pumps again
        next_at = self.engine.next_deadline()
        if self.engine.tx_pending():    # a device queue was full: try again soon
            retry = now_us() + TX_RETRY_US
            next_at = retry if next_at < 0 else min(next_at, retry)
        if next_at < 0:
            return
        if 0 <= self._timer_at <= next_at:
            return          # the armed timer fires first; tick() handles whatever is due then
        self._arm(next_at)

    def _arm(self, deadline_us: int) -> None:
        """The loop's wake-up for the engine: a timerfd at the deadline, not
        call_later, which libuv times from the clock it read before this pass
        of callbacks: a long pass would make the adverts due in it late by its
        length (pyx/_timer.pyx)."""
        if not self._timer_polled:
            self._loop.add_reader(self._timer.fileno(), self._on_timer)
            self._timer_polled = True
        self._timer_at = deadline_us
        self._timer.arm(deadline_us)

    def stop_timers(self) -> None:
        """Shutdown: no more ticks or socket pacing."""
        if self._timer_polled:
            self._loop.remove_reader(self._timer.fileno())
            self._timer_polled = False
        self._timer.disarm()
        self._timer_at = -1
        for handle in (self._rx_poll, self._rx_check):
            if handle is not None:
                handle.cancel()

    def _next_slice(self) -> int:
        """Events the next turn of a dispatch hands out: DISPATCH_SLICE until
        a chunk of it is reported, so that the first chunk's report (its ACKs
        back in the netlink thread) waits behind no large slice of Python;
        then DISPATCH_MAX."""
        return DISPATCH_MAX if self._reported else DISPATCH_SLICE

    def _on_events(self, events) -> None:
        batch: list = []
        lower: list = []
        answered: list[tuple[Instance, int]] = []
        by_idx, priority = self.by_idx, self.engine.priority
        grouped = self.syncgroups.group_of
        now = time.time()
        for idx, kind, code, detail in events:
            if kind == EV_STATE:        # first: a takeover is thousands of these
                inst = by_idx.get(idx)
                if inst is None:
                    continue
                if answered:        # answers heard before this transition go first
                    self._answer_lower(answered)
                    answered = []
                old = inst.state
                reason = REASON_NAMES[detail]
                inst.state = code
                inst.priority = priority(idx)
                inst.transitions += 1
                inst.last_transition = now
                inst.last_reason = reason
                batch.append((inst, old, code, reason))
                if grouped and inst.name in grouped:
                    self._follow_group(inst, old, code, reason)
                continue
            if kind == EV_SOCK_REJECT:
                log.warning("advert from %s on socket %d rejected: %s", _addr(detail), idx,
                            REJECT_NAMES[code])
                continue
            inst = by_idx.get(idx)
            if inst is None:
                continue
            if kind == EV_RX_LOWER_PRI:
                if batch:           # transitions before this answer go first
                    self._queue_logged(batch)
                    batch = []
                # Every advert is answered by the engine and counted (rx_lower_pri);
                # the log line goes out at most once per advert interval.
                if self.lower_log.allow(inst.name, inst.spec.advert_int_cs / 100):
                    lower.append((inst.name, code, _addr(detail),
                                  self.lower_log.take_held(inst.name)))
                answered.append((inst, code))
            elif kind == EV_REJECT:
                # The engine rate-limits these events; its counters stay exact.
                log.warning("(%s) advert from %s rejected: %s", inst.name, _addr(detail),
                            REJECT_NAMES[code])
        if answered:
            self._answer_lower(answered)
        if len(lower) > LOG_EACH:       # a storm of them: one line, as for transitions
            log.info("%d masters received lower priority adverts: %s", len(lower),
                     ", ".join(f"{n} ({p} from {a})" for n, p, a, _ in lower))
        else:
            for name, prio, addr, held in lower:
                log.info("(%s) received lower priority (%d) advert from %s%s", name, prio, addr,
                         f" ({held} more not logged)" if held else "")
        if batch:
            self._queue_logged(batch)

    def _queue_logged(self, batch) -> None:
        log_transitions(batch)
        self.queue(batch)

    def _answer_lower(self, answered: list[tuple[Instance, int]]) -> None:
        """Masters' answers to lower-priority adverts, once the transitions
        queued before have their side effects: keepalived applies a
        transition whole before it reads the next advert, so an instance's
        MASTER line (and its VIPs) come before its MASTER_RX_LOWER_PRI (and
        the GARPs that answer it)."""
        def answer() -> None:
            # keepalived's order: the GARP/NA burst, then MASTER_RX_LOWER_PRI.
            self.announce_lower_prio([inst for inst, _ in answered])
            with coalesced():           # a storm's lines in few writes
                for inst, prio in answered:
                    for h in self.hooks:
                        h.on_rx_lower_pri(inst, prio)
        self.after_effects(answer)

