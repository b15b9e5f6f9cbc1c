"""The running daemon: wires the configuration to the engine, sockets, VIPs,
tracking and notify on one asyncio (uvloop) loop.

The C engine owns every timer and packet; Python only sees the rare events
it queues (state changes, lower-priority adverts) and the changes tracking
makes (priority, fault).  Per transition, in keepalived's order (vrrp.c
vrrp_state_become_master / vrrp_state_leave_master): VIPs are added and
GARPs sent before the MASTER notify, removed before the BACKUP/FAULT notify.
With them go the strict-mode VIP drop (added before the VIPs, removed after),
virtual_routes and virtual_rules (added after the VIPs, removed before).
use_vmac instances send, receive and hold their VIPs on a macvlan made at
start-up (vmac.py); static addresses/routes/rules are set at start-up and,
as keepalived does (vrrp_daemon.c stop_vrrp), removed at shutdown.
Those side effects run in one ordered queue so a burst of thousands of
transitions costs one netlink batch, and per instance they happen in
transition order.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from dataclasses import dataclass, field

from vrrpd import _effects
from vrrpd.engine import (BACKUP, EV_REJECT, EV_RX_LOWER_PRI, EV_SOCK_REJECT, EV_STATE, INIT,
                          MASTER, REASON_NAMES, REJECT_NAMES, STATE_NAMES, Engine)
from vrrpd.net import netlink as nl, sockets, firewall as strict
from vrrpd.net.addresses import AddressManager, Vip
from vrrpd.net.garp import (
    Announce,
    GarpConfig,
    GarpScheduler,
    arp_frame,
    ipv6_forwarding,
    na_frame,
)
from vrrpd.net.links import Link, LinkEvent, LinkMonitor
from vrrpd.scripts.notify import coalesced
from vrrpd.core.plan import engine_tunables
from vrrpd.ops.ratelimit import PerKey
from vrrpd.net.routes import RouteManager
from vrrpd.scripts.runner import ScriptRunner
from vrrpd.core.syncgroups import SyncGroups
from vrrpd.track.trackers import Trackers
from vrrpd.track.rules import Verdict
from vrrpd.core.vipwatch import VipWatch
from vrrpd.net.vmac import VmacManager, create_all

log = logging.getLogger("vrrpd")

NO_ANNOUNCES = ((), ())      # Instance.announces when none are cached


CHUNK_MAX = 512           # instances per chunk of a takeover (besides the netlink budget)
VIP_RETRY_S = 5.0         # an instance FAULTed by a VIP it could not add tries again after this
UP, DOWN, CLEAR, OTHER = range(4)       # what a transition does to the instance's VIPs
HOLD_MONITOR = 64         # transitions waiting for their effects: a mass failover (_run_effects)
HOLD_MONITOR_S = 1.0
ARPHRD_ETHER = 1          # links whose multicast adverts can go out as prebuilt frames
TX_RETRY_US = 1000        # sends a full device queue deferred are retried this often
TX_DRAIN_S = 0.2          # at shutdown, for the priority-0 adverts
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


LOG_EACH = 8      # transitions per batch logged one line each at INFO; more are summarised


def log_transitions(batch) -> None:
    """keepalived's "(VI_1) Entering MASTER STATE" per transition.  A failover
    of thousands of instances would spend a line's formatting and writing per
    instance before its VIPs go up, so a large batch is logged as one INFO
    line per (state, reason) naming every instance, and the per-instance
    lines go to DEBUG."""
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
        for inst, _, new, reason in batch:
            log.debug("(%s) Entering %s STATE (%s)", inst.name, STATE_NAMES.get(new, new), reason)


def _kind(old: int, new: int) -> int:
    if new == MASTER and old != MASTER:
        return UP
    if old == MASTER and new != MASTER:
        return DOWN
    if old == INIT:
        return CLEAR
    return OTHER


def _runs(batch):
    """(kind, consecutive transitions of that kind) in batch order."""
    start = 0
    for i in range(1, len(batch) + 1):
        if i == len(batch) or _kind(*batch[i][1:3]) != _kind(*batch[start][1:3]):
            yield _kind(*batch[start][1:3]), batch[start:i]
            start = i


def now_us() -> int:
    return time.monotonic_ns() // 1000


def _addr(packed: bytes | None) -> str:
    if not packed:
        return "?"
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


@dataclass(slots=True)
class Instance:
    """Runtime view of one vrrp_instance."""
    name: str
    spec: object          # plan.InstanceSpec
    family: int
    ifname: str
    idx: int = -1
    sock_id: int = -1
    vips: list[Vip] = field(default_factory=list)
    state: int = INIT
    priority: int = 0             # effective priority as last reported
    started: bool = False         # engine.start() done (held while a script is pending)
    transitions: int = 0
    last_transition: float = 0.0
    last_reason: str = ""
    announces: tuple = ((), ())       # (what they were built from, ((key, Announce), ...)): _announces
    prebuilt: tuple = ()          # (spec, vips, name, links_gen) its Effects bytes were built from
    garp_paced: bool = False      # announced by GarpScheduler (refresh or pacing configured)
    vip_fault: bool = False       # a VIP could not be added: FAULT until the retry


class Daemon:
    def __init__(self, plan, runner: ScriptRunner | None = None, *,
                 max_instances: int | None = None, advert_tx: str = "frame"):
        """plan: vrrpd.core.plan.Plan, the configuration resolved for the runtime;
        runner: runs track scripts (shared with the notify hook); advert_tx:
        "frame" sends multicast adverts on Ethernet links as prebuilt frames,
        "ip" through the kernel's IP output (vrrpd.net.sockets)."""
        self.plan = plan
        self.advert_tx = advert_tx
        g = plan.config.global_defs
        self.runner = runner or ScriptRunner(script_user=g.script_user, script_group=g.script_group,
                                             enable_script_security=g.enable_script_security)
        self.trackers = Trackers(plan.config, self.runner, self._on_verdict)
        self.syncgroups = SyncGroups(plan.config)
        self._electing = False        # after vrrp_startup_delay: instances may start
        self.instances: dict[str, Instance] = {}
        self.by_idx: dict[int, Instance] = {}
        capacity = max_instances or max(1024, 2 * len(plan.instances))
        self.engine = Engine(capacity, defer_sends=True)
        self.effects = _effects.Effects(capacity)
        self._links_gen = 0             # bumped when a link's name, MAC or existence changes
        self._slots: dict[int, int] = {}    # ifindex -> socket slot of Effects
        self.links = LinkMonitor(on_link=self._on_link)
        self.vipwatch = self.links.on_address = VipWatch(self, now_us)  # a VIP deleted from outside
        self.addresses = AddressManager()
        self.vmacs = VmacManager()
        self.routes = RouteManager(self.links.ifindex)
        self.firewall = strict.firewall_for(plan.config)     # None: no instance needs the drop
        self.garp = GarpScheduler()
        self._sockets: dict[tuple[str, int], tuple[int, socket.socket]] = {}
        self._link_socks: dict[int, tuple[int, socket.socket]] = {}   # sock_id -> (ifindex, packet socket)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = -1
        self._effects: asyncio.Queue = asyncio.Queue()
        self._effects_task: asyncio.Task | None = None
        self._effects_waiting = 0       # transitions queued in _effects
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rx_packets = 0            # since the last pacing check
        self._rx_poll: asyncio.TimerHandle | None = None     # set while polling
        self._rx_check: asyncio.TimerHandle | None = None
        self.stopping = False
        # Objects with open(), on_transition(inst, old, new, reason),
        # on_group_transition(group, state), on_rx_lower_pri(inst, prio), on_stop(daemon).
        self.hooks = []
        self.lower_log = PerKey()       # lower-priority advert log lines, per instance

    # -- start-up --------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.links.start()
        await self.create_vmacs(self.plan.instances)
        await self._add_static()
        for spec in self.plan.instances:
            self._add_instance(spec)
        self.link_sync_groups()
        for h in self.hooks:
            h.open()
        self._effects_task = asyncio.create_task(self._run_effects())
        self._rx_check = self._loop.call_later(RX_CHECK_S, self._check_rx)
        self.trackers.start(self.links.links)
        await self.trackers.ready()
        if self.plan.startup_delay:
            # keepalived's vrrp_startup_delay: let the network settle before electing.
            await asyncio.sleep(self.plan.startup_delay)
        self._electing = True
        # keepalived (vrrp_init_state) announces a sync group before its members.
        verdicts = {n: self.trackers.verdict(n) for n in self.instances}
        for group, state in self.syncgroups.initial({n: v.pending for n, v in verdicts.items()},
                                                    {n: v.fault for n, v in verdicts.items()}):
            for h in self.hooks:
                h.on_group_transition(group, state)
        t = now_us()
        for inst in self.instances.values():
            self._apply_verdict(inst, t)
        self._pump()

    async def create_vmacs(self, specs, timeout: float = 5.0) -> None:
        """The macvlans of use_vmac instances, then wait until the link monitor
        knows them (their index and MAC feed the sockets and GARPs).  A vmac
        that cannot be made is logged; its instance runs on the base interface."""
        wanted = [s.vmac for s in specs if s.vmac is not None and s.vmac.name not in self.vmacs.vmacs]
        if not wanted:
            return
        made = await create_all(self.vmacs, wanted, self.links.by_name)
        deadline = self._loop.time() + timeout
        while any(self.links.by_name(name) is None for name in made):
            if self._loop.time() > deadline:
                log.error("vmacs %s not reported by netlink",
                          sorted(n for n in made if self.links.by_name(n) is None))
                return
            await asyncio.sleep(0.01)

    async def _add_static(self) -> None:
        """Global static_ipaddress / static_routes / static_rules: set once, not tracked."""
        vips = []
        for v in self.plan.static_vips:
            index = self.links.ifindex(v.dev) if v.dev else None
            if index is None:
                log.error("static_ipaddress %s: interface %s does not exist", v.address, v.dev)
                continue
            vips.append(self._vip(v, index))
        if vips:
            r = await self.addresses.add(vips)
            for vip, err in r.failed:
                log.warning("adding static address %s failed: errno %d", vip.address, err)
        c = self.plan.config
        if c.static_routes or c.static_rules:
            await self.routes.add(c.static_routes, c.static_rules)

    @staticmethod
    def _vip(v, ifindex: int) -> Vip:
        return Vip.parse(v.address, ifindex, label=v.label, scope=v.scope, broadcast=v.broadcast)

    def vips_of(self, spec) -> list[Vip]:
        """The instance's VIPs, each on its interface (a vmac's if it has one)."""
        base = self.links.ifindex(spec.interface)
        return [self._vip(v, self.links.ifindex(v.dev) or base) for v in spec.vips]

    def _socket_for(self, ifname: str, family: int, link: Link) -> int:
        key = (ifname, family)
        if key not in self._sockets:
            groups = [self.plan.mcast_group4 if family == socket.AF_INET else self.plan.mcast_group6]
            sock = sockets.open_vrrp_socket(family, ifname, link.index, groups)
            sock_id = self.engine.add_socket(sock.fileno(), family, link.index)
            if self._rx_poll is None:
                self._loop.add_reader(sock.fileno(), self._on_readable, sock_id)
            self._sockets[key] = (sock_id, sock)
            if self.advert_tx == "frame":
                self._link_tx(sock_id, link)
        return self._sockets[key][0]

    def _link_tx(self, sock_id: int, link: Link) -> None:
        """Multicast adverts of an Ethernet link as frames (Engine.set_link_tx)."""
        if link.link_type != ARPHRD_ETHER or not link.mac or len(link.mac) != 6:
            return
        try:
            psock = sockets.open_link_socket()
        except OSError as e:
            log.warning("%s: adverts go through the IP stack (no packet socket: %s)",
                        link.name, e)
            return
        self.engine.set_link_tx(sock_id, psock.fileno(), link.mac)
        self._link_socks[sock_id] = (link.index, psock)

    def _add_instance(self, spec) -> Instance:
        base = self.links.by_name(spec.interface)
        if base is None:
            raise RuntimeError(f"{spec.where}: instance {spec.name}: interface {spec.interface} does not exist")
        vmac = self.vmacs.vmacs.get(spec.vmac.name) if spec.vmac else None
        link = self.links.by_name(spec.advert_interface) if vmac else None
        link = link or base
        src = spec.src_ip or self._source(spec, base, vmac if link is not base else None)
        inst = Instance(spec.name, spec, spec.family, link.name)
        inst.sock_id = self._socket_for(link.name, spec.family, link)
        inst.vips = self.vips_of(spec)
        family = spec.family
        inst.idx = self.engine.add_instance(
            sock_id=inst.sock_id, vrid=spec.vrid, priority=spec.priority,
            src=socket.inet_pton(family, src), dsts=self.advert_dsts(spec),
            vips=[socket.inet_pton(family, a) for a in spec.advert_addrs],
            auth_type=spec.auth_type, auth_pass=spec.auth_pass,
            v3_checksum_as_v2=spec.v3_checksum_as_v2, owner=spec.priority == 255,
            **engine_tunables(spec))
        self.instances[spec.name] = inst
        self.by_idx[inst.idx] = inst
        self.effects.clear(inst.idx)
        self._prebuild(inst)
        return inst

    def advert_dsts(self, spec) -> list[bytes]:
        """Where the instance's adverts go (packed): its unicast peers, else the group."""
        group = self.plan.mcast_group4 if spec.family == socket.AF_INET else self.plan.mcast_group6
        return [socket.inet_pton(spec.family, d) for d in spec.unicast_peers or [group]]

    def forget(self, inst: Instance) -> None:
        """The instance is gone (reload): its slot's prebuilt bytes go too."""
        self.effects.clear(inst.idx)

    @staticmethod
    def _source(spec, base: Link, vmac) -> str:
        """IPv4: the base interface's primary address (a vmac has none of its own
        until it is master); IPv6: the link-local address (RFC 5798 5.1.2.1), the
        vmac's when sending from one."""
        if spec.family == socket.AF_INET:
            src = base.primary_ipv4()
            what = "IPv4 address"
        else:
            src = vmac.link_local if vmac is not None and vmac.link_local else base.ipv6_link_local()
            what = "IPv6 link-local address (an IPv6 instance sends its adverts from one)"
        if src is None:
            raise RuntimeError(f"{spec.where}: instance {spec.name}: no usable {what} on "
                               f"{spec.interface}")
        return src

    # -- the hot loop's Python side --------------------------------------------------
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

    def _on_timer(self) -> None:
        self._timer = None
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
        self.engine.tick(t)
        # Sync-group moves queue more events; drain until quiet.
        while events := self.engine.pop_events():
            self._on_events(events)
        self.engine.flush()         # what tracking and sync groups queued, in one batch
        next_at = self.engine.next_deadline()
        if self.engine.tx_pending():    # a device queue was full: try again soon
            retry = now_us() + TX_RETRY_US
            next_at = retry if next_at < 0 else min(next_at, retry)
        if next_at < 0:
            return
        if self._timer is not None and self._timer_at <= next_at:
            return          # the armed timer fires first; tick() handles whatever is due then
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = next_at
        delay = max(0.0, (next_at - now_us()) / 1e6)
        self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_events(self, events) -> None:
        batch, lower = [], []
        for idx, kind, code, detail in events:      # engine.Event
            if kind == EV_SOCK_REJECT:
                log.warning("advert from %s on socket %d rejected: %s", _addr(detail), idx,
                            REJECT_NAMES[code])
                continue
            inst = self.by_idx.get(idx)
            if inst is None:
                continue
            if kind == EV_STATE:
                old, new = inst.state, code
                reason = REASON_NAMES[detail]
                inst.state = new
                inst.priority = self.engine.priority(idx)
                inst.transitions += 1
                inst.last_transition = time.time()
                inst.last_reason = reason
                batch.append((inst, old, new, reason))
                self._follow_group(inst, old, new, reason)
            elif kind == EV_RX_LOWER_PRI:
                # Every advert is answered by the engine and counted (rx_lower_pri);
                # the log line goes out at most once per advert interval.
                if self.lower_log.allow(inst.name, inst.spec.advert_int_cs / 100):
                    lower.append((inst.name, code, _addr(detail),
                                  self.lower_log.take_held(inst.name)))
                for key, ann in self._announces(inst, keep=inst.garp_paced):
                    self.garp.lower_prio(key, ann)
                for h in self.hooks:
                    h.on_rx_lower_pri(inst, code)
            elif kind == EV_REJECT:
                # The engine rate-limits these events; its counters stay exact.
                log.warning("(%s) advert from %s rejected: %s", inst.name, _addr(detail),
                            REJECT_NAMES[code])
        if len(lower) > LOG_EACH:       # a storm of them: one line, as for transitions
            log.info("%d masters received lower priority adverts: %s", len(lower),
                     ", ".join(f"{n} ({p} from {a})" for n, p, a, _ in lower))
        else:
            for name, prio, addr, held in lower:
                log.info("(%s) received lower priority (%d) advert from %s%s", name, prio, addr,
                         f" ({held} more not logged)" if held else "")
        if batch:
            log_transitions(batch)
            self._effects_waiting += len(batch)
            self._effects.put_nowait(batch)

    # -- side effects, in order ------------------------------------------------------
    async def _run_effects(self) -> None:
        held_since = None
        while True:
            batch = await self._effects.get()
            self._effects_waiting -= len(batch)
            # A mass failover: the kernel's notifications of the VIPs we add
            # (each costs decoding on the loop) wait in the link monitor's socket
            # until the transitions are through, instead of competing with
            # them; link events wait that long too (at most HOLD_MONITOR_S).
            if held_since is None and len(batch) + self._effects_waiting >= HOLD_MONITOR:
                held_since = time.monotonic()
                self.links.hold()
            try:
                await self._apply(batch)
            except Exception:       # never let one failure stop later transitions
                log.exception("applying transitions failed")
            finally:
                batch = None        # not held while waiting for the next one
                self._effects.task_done()
                if held_since is not None and (self._effects.empty() or
                                               time.monotonic() - held_since > HOLD_MONITOR_S):
                    held_since = None
                    self.links.release()

    async def _apply(self, batch) -> None:
        """A batch of transitions, in order, as runs of one kind (UP, DOWN,
        CLEAR, OTHER).  A run moves in chunks, pipelined: a chunk's VIPs go
        in (one netlink send) and, as soon as their ACKs are back, its GARPs
        and notifications follow, so the first instance of a takeover of
        thousands does not wait for the last one's VIPs."""
        for kind, run in _runs(batch):
            if kind == OTHER:
                self._announce_and_report(run)
                continue
            for chunk in self._chunks(run):
                insts = [item[0] for item in chunk]
                if kind == UP:
                    await self._become_master(insts)
                else:
                    await self._leave_master(insts, kind == CLEAR)
                self._announce_and_report(chunk)

    def _chunks(self, run):
        """Consecutive pieces of `run` worth one netlink send each."""
        budget = self.addresses.requester.chunk
        start, msgs = 0, 0
        for i, (inst, *_) in enumerate(run):
            if not self._is_prebuilt(inst):
                self._prebuild(inst)
            msgs += self.effects.nmsgs(inst.idx)
            if msgs >= budget or i + 1 - start >= CHUNK_MAX:
                yield run[start:i + 1]
                start, msgs = i + 1, 0
        if start < len(run):
            yield run[start:]

    async def _become_master(self, insts: list[Instance]) -> None:
        """keepalived's vrrp_state_become_master: the strict-mode drop, VIPs, routes, rules."""
        drop = [v for i in insts if i.spec.needs_drop for v in i.vips]
        if drop and self.firewall is not None:
            await self.firewall.add_vips(drop)
        failed = await self._vips(insts, True)
        routes = [r for i in insts for r in i.spec.conf.virtual_routes]
        rules = [r for i in insts for r in i.spec.conf.virtual_rules]
        if routes or rules:
            await self.routes.add(routes, rules)
        for inst in failed:
            # A master without its VIPs black-holes their traffic: FAULT (priority 0
            # goes out, the backup takes over) and try again later.
            inst.vip_fault = True
            self._loop.call_later(VIP_RETRY_S, self._retry_vips, inst)
        if failed:
            t = now_us()
            for inst in failed:
                self._apply_verdict(inst, t)
            self._pump()

    async def _leave_master(self, insts: list[Instance], stale: bool) -> None:
        """keepalived's vrrp_state_leave_master: rules, routes, VIPs, then the
        drop.  stale: starting as BACKUP/FAULT, clear the VIPs a crashed
        previous run may have left (only the master holds them)."""
        if not stale:
            routes = [r for i in insts for r in i.spec.conf.virtual_routes]
            rules = [r for i in insts for r in i.spec.conf.virtual_rules]
            if routes or rules:
                await self.routes.remove(routes, rules)
        await self._vips(insts, False)
        drop = [v for i in insts if i.spec.needs_drop for v in i.vips]
        if drop and not stale and self.firewall is not None:
            await self.firewall.remove_vips(drop)

    async def _vips(self, insts: list[Instance], add: bool) -> list[Instance]:
        """Add (remove) the instances' VIPs with their prebuilt messages in one
        netlink send.  -> the instances one of whose VIPs failed."""
        idxs = [i.idx for i in insts]
        effects = self.effects
        first = [0]
        count = [0]

        def build(seq0: int):
            first[0] = seq0
            data, count[0] = effects.netlink(idxs, add, seq0)
            return data, count[0]

        if not any(effects.nmsgs(i) for i in idxs):
            return []
        if not add:
            self.vipwatch.expect_deleted(v for i in insts for v in i.vips)
        try:
            await self.addresses.requester.request_built(
                build, lambda view: effects.acks(view, first[0]))
        except OSError as e:        # the kernel refused the whole send
            log.error("%s %d VIPs: %s", "adding" if add else "removing", count[0], e)
        failed = effects.results(idxs, add)
        self.addresses.account(add, count[0] - len(failed), len(failed))
        if failed:
            log.error("%s VIPs failed for %d instance(s): %s", "adding" if add else "removing",
                      len(failed), ", ".join(f"{insts[p].name} ({os.strerror(e)})"
                                             for p, e in failed[:LOG_EACH]))
        return [insts[p] for p, _ in failed]

    def _retry_vips(self, inst: Instance) -> None:
        if self.instances.get(inst.name) is not inst or self.stopping:
            return
        inst.vip_fault = False
        self._apply_verdict(inst, now_us())
        self._pump()

    def _announce_and_report(self, chunk) -> None:
        """GARP/NA after the VIPs, then the notifications (keepalived's order),
        then a sync group's own line after its last member's."""
        masters = [inst for inst, old, new, _ in chunk
                   if new == MASTER and old != MASTER]
        left = [inst for inst, old, new, _ in chunk
                if old == MASTER and new != MASTER]
        if masters:
            self._announce(masters)
        if left:
            self.effects.bump([i.idx for i in left])       # no delayed bursts now
            for inst in left:
                if inst.garp_paced:
                    for key, _ in self._announces(inst):
                        self.garp.stop(key)
        for inst, old, new, _ in chunk:
            if new == BACKUP and not self._is_prebuilt(inst):
                self._prebuild(inst)    # built now rather than in the rush of a takeover
        for h in self.hooks:
            try:
                if hasattr(h, "on_transitions"):
                    h.on_transitions(chunk, self.effects)
                else:
                    with coalesced():
                        for item in chunk:
                            h.on_transition(*item)
            except Exception:
                log.exception("transition hook failed")
        # A group's notification follows its last member's (keepalived).
        group_of = self.syncgroups.group_of
        for inst, _, new, _ in chunk:
            if inst.name in group_of:
                moved = self.syncgroups.reported(inst.name, new)
                if moved is not None:
                    for h in self.hooks:
                        h.on_group_transition(*moved)

    def _announce(self, masters: list[Instance]) -> None:
        """The first GARP/NA burst of new masters from their prebuilt frames
        (one sendmmsg() per socket), and one timer per garp_master_delay for
        the second burst.  Instances with a refresh or a pacing interval are
        announced by the GarpScheduler instead."""
        fast = [i for i in masters if not i.garp_paced]
        idxs = [i.idx for i in fast]
        self.effects.bump(idxs)
        for slot, frame in self.effects.announce(idxs):     # a full device queue: retry
            self.garp.resend(self._ifindex_of_slot(slot), frame)
        later: dict[float, list[Instance]] = {}
        for inst in fast:
            delay = inst.spec.conf.garp_master_delay
            if delay > 0:
                later.setdefault(delay, []).append(inst)
        for delay, insts in later.items():
            ids = [i.idx for i in insts]
            self._loop.call_later(delay, self._announce_again, ids,
                                  [self.effects.gen(i) for i in ids])
        for inst in masters:
            if inst.garp_paced:
                for key, ann in self._announces(inst):
                    self.garp.master(key, ann)

    def _announce_again(self, idxs: list[int], gens: list[int]) -> None:
        """garp_master_delay's second burst, for those still MASTER since."""
        for slot, frame in self.effects.announce(idxs, gens):
            self.garp.resend(self._ifindex_of_slot(slot), frame)

    # -- prebuilt side effects (vrrpd._effects) -----------------------------------------
    def _is_prebuilt(self, inst: Instance) -> bool:
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
            try:
                fd = self.garp.sender.socket_for(ifindex).fileno()
            except OSError as e:
                log.warning("ifindex %d: no packet socket for GARP/NA: %s", ifindex, e)
                fd = -1
            self.effects.set_socket(slot, fd)
        return slot

    def _ifindex_of_slot(self, slot: int) -> int:
        return next(ix for ix, s in self._slots.items() if s == slot)

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

    # -- tracking and sync groups ----------------------------------------------------
    def _on_link(self, link: Link, event: LinkEvent, old: Link | None) -> None:
        if event in (LinkEvent.MAC, LinkEvent.RENAMED, LinkEvent.NEW, LinkEvent.DELETED):
            self._links_gen += 1        # announcements are rebuilt before they are next sent
        if event == LinkEvent.MAC:
            for sock_id, (index, psock) in self._link_socks.items():
                if index == link.index:     # frames carry the new source MAC from now on
                    ok = link.mac is not None and len(link.mac) == 6
                    self.engine.set_link_tx(sock_id, psock.fileno() if ok else -1, link.mac)
        self.trackers.on_link(link, event, old)

    def _on_verdict(self, name: str, verdict: Verdict) -> None:
        inst = self.instances.get(name)
        if inst is None or not self._electing:
            return
        t = now_us()
        group = self.syncgroups.group_of.get(name)
        members = self.syncgroups.members[group] if group else (name,)
        for m in members:
            self._apply_verdict(self.instances[m], t)
        self._pump()

    def _apply_verdict(self, inst: Instance, t: int) -> None:
        """Tracking verdict -> engine: start once no weight-0 script is pending
        (keepalived holds the instance in INIT until then), then priority and
        FAULT (a group member is FAULT while any member is)."""
        verdict = self.trackers.verdict(inst.name)
        if not inst.started:
            if verdict.pending:
                return
            inst.started = True
            # keepalived: only an address owner with `state MASTER` skips BACKUP.
            self.engine.start(inst.idx, t, want_master=inst.spec.conf.state == "MASTER")
        if not inst.spec.priority == 255 and verdict.priority != self.engine.priority(inst.idx):
            log.info("(%s) effective priority %d", inst.name, verdict.priority)
            self.engine.set_priority(inst.idx, verdict.priority, t)
        own = {m: self.trackers.verdict(m).fault
               for m in self.syncgroups.members.get(self.syncgroups.group_of.get(inst.name), ())}
        own[inst.name] = verdict.fault or inst.vip_fault
        self.engine.set_fault(inst.idx, self.syncgroups.group_faulted(inst.name, own), t)

    def link_sync_groups(self) -> None:
        """Tell the engine which instances form each sync group (it holds a
        member whose down timer ran out until all want MASTER)."""
        for members in self.syncgroups.members.values():
            idxs = [self.instances[m].idx for m in members if m in self.instances]
            if idxs:
                self.engine.set_sync_group(idxs)

    def _follow_group(self, inst: Instance, old: int, new: int, reason: str) -> None:
        moved = self.syncgroups.followers(inst.name, new, old, reason)
        if moved is None:
            return
        group, state = moved
        t = now_us()
        for m in self.syncgroups.others(group, inst.name):
            other = self.instances[m]
            if other.started:
                self.engine.force_state(other.idx, state, t)

    # -- shutdown --------------------------------------------------------------------
    async def stop(self) -> None:
        """Priority-0 adverts from every master, VIPs removed, STOP reported."""
        self.stopping = True
        t = now_us()
        for inst in self.instances.values():
            self.engine.stop(inst.idx, t)
        self._pump()
        # The priority-0 burst may not fit the device queue at once; the peer
        # takes over after Skew_Time only with them (else Master_Down_Interval).
        # _pump's retry timer sends what is deferred; wait for it to finish.
        deadline = time.monotonic() + TX_DRAIN_S
        while self.engine.tx_pending() and time.monotonic() < deadline:
            await asyncio.sleep(TX_RETRY_US / 1e6)
        await self._effects.join()
        # VIPs a transition added that no later one removed (e.g. kept by a
        # failed removal): removed with their prebuilt messages.
        on = [i for i in self.instances.values() if self.effects.vips_on(i.idx)]
        for k in range(0, len(on), CHUNK_MAX):
            await self._vips(on[k:k + CHUNK_MAX], False)
        for group in self.syncgroups.members:
            for h in self.hooks:
                h.on_group_transition(group, None)      # None: STOP
        await self.trackers.stop()
        r = await self.addresses.remove_all()
        if r.failed:
            log.warning("%d VIPs could not be removed at shutdown", len(r.failed))
        await self.routes.remove_all()
        self.routes.close()
        if self.firewall is not None:
            await self.firewall.close()
        for h in self.hooks:
            await h.on_stop(self)
        for handle in (self._timer, self._rx_poll, self._rx_check):
            if handle is not None:
                handle.cancel()
        self.garp.close()
        if self._effects_task is not None:
            self._effects_task.cancel()
        for sock_id, sock in self._sockets.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for _, psock in self._link_socks.values():
            psock.close()
        self.links.close()
        self.addresses.close()
        await self.vmacs.close()        # last: sockets and VIPs on them are gone
