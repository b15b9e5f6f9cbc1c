"""The running daemon: wires the configuration to the engine, sockets, VIPs,
tracking and notify on one asyncio (uvloop) loop; start-up, the tracking
and sync-group verdicts, shutdown, and the public API reload uses.

Its parts, one job each: vrrpd.core.pump (receive pacing, the timer pump,
event dispatch) and vrrpd.core.transitions (the ordered side effects of a
batch of transitions).  use_vmac instances send, receive and hold their
VIPs on a macvlan made at start-up (vmac.py); static addresses/routes/rules
are set at start-up and, as keepalived does (vrrp_daemon.c stop_vrrp),
removed at shutdown.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterable
from typing import Any

from vrrpd import _effects
from vrrpd.engine import MASTER, Engine
from vrrpd.core.instance import Instance
from vrrpd.core.pump import TX_RETRY_US, Pump, now_us
from vrrpd.core.transitions import CHUNK_MAX, Transitions
from vrrpd.net import sockets, firewall as strict
from vrrpd.net.addresses import AddressManager, Vip
from vrrpd.net.garp import GarpScheduler
from vrrpd.net.links import Link, LinkEvent, LinkMonitor
from vrrpd.core.plan import InstanceSpec, engine_tunables
from vrrpd.ops.ratelimit import PerKey
from vrrpd.net.routes import RouteManager
from vrrpd.scripts.runner import ScriptRunner
from vrrpd.core.syncgroups import SyncGroups
from vrrpd.track.trackers import Trackers
from vrrpd.track.rules import Verdict
from vrrpd.core.vipwatch import VipWatch
from vrrpd.net.vmac import VmacManager, create_all

log = logging.getLogger("vrrpd")

__all__ = ["Daemon", "Instance", "now_us"]

ARPHRD_ETHER = 1          # links whose multicast adverts can go out as prebuilt frames
TX_DRAIN_S = 0.2          # at shutdown, for the priority-0 adverts


class Daemon(Pump, Transitions):
    """One vrrpd: its parts (Pump, Transitions) share the engine, the
    instances and the hooks; reload changes it through the public API below
    (add_instance ... replace_hook)."""

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
        self.trackers = self.make_trackers(plan.config, build=True)
        self.syncgroups = SyncGroups(plan.config)
        self._electing = False        # after vrrp_startup_delay: instances may start
        self.instances: dict[str, Instance] = {}
        self.by_idx: dict[int, Instance] = {}
        capacity = max_instances or max(1024, 2 * len(plan.instances))
        Pump.__init__(self, Engine(capacity, defer_sends=True))
        links = LinkMonitor(on_link=self._on_link)
        Transitions.__init__(self, plan, links, _effects.Effects(capacity), AddressManager(),
                             RouteManager(links.ifindex), GarpScheduler(),
                             # None: no instance needs the drop.
                             strict.firewall_for(plan.config))
        # A VIP deleted from outside.
        vipwatch = self.links.on_address = VipWatch(self, now_us,
                                                    lambda cb: self._loop.call_soon(cb))
        self.expect_deleted = vipwatch.expect_deleted
        self.vmacs = VmacManager()
        # sock_id -> (ifindex, packet socket)
        self._link_socks: dict[int, tuple[int, socket.socket]] = {}
        self.stopping = False
        # Objects with open(), on_transition(inst, old, new, reason),
        # on_group_transition(group, state), on_rx_lower_pri(inst, prio), on_stop(daemon).
        self.hooks: list[Any] = []
        self.lower_log = PerKey()       # lower-priority advert log lines, per instance

    # -- start-up --------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.links.start()
        await self.create_vmacs(self.plan.instances)
        await self._add_static()
        for spec in self.plan.instances:
            self.add_instance(spec)
        self.link_sync_groups()
        for h in self.hooks:
            h.open()
        self.start_effects()
        self.start_rx_pacing()
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
        wanted = [s.vmac for s in specs
                  if s.vmac is not None and s.vmac.name not in self.vmacs.vmacs]
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
                log.error("static_ipaddress %s: interface %s does not exist", v.with_prefixlen,
                          v.dev)
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
        """A VipSpec on an interface (its address text is the spec's: one object)."""
        return Vip(v.address, v.prefixlen, ifindex, label=v.label, scope=v.scope,
                   broadcast=v.broadcast)

    def vips_of(self, spec) -> list[Vip]:
        """The instance's VIPs, each on its interface (a vmac's if it has one)."""
        base = self.links.ifindex(spec.interface)
        return [self._vip(v, self.links.ifindex(v.dev) or base) for v in spec.vips]

    def _socket_for(self, ifname: str, family: int, link: Link) -> int:
        key = (ifname, family)
        if key not in self._sockets:
            groups = (self.plan.mcast_group4 if family == socket.AF_INET
                      else self.plan.mcast_group6,)
            sock = sockets.open_vrrp_socket(family, ifname, link.index, groups)
            sock_id = self.engine.add_socket(sock.fileno(), family, link.index)
            self.add_socket(key, sock_id, sock)
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

    def add_instance(self, spec) -> Instance:
        """A new instance (start-up, reload): its socket, engine slot and
        prebuilt side effects.  It starts with its tracking verdict
        (apply_verdicts)."""
        base = self.links.by_name(spec.interface)
        if base is None:
            raise RuntimeError(f"{self.plan.where(spec.name)}: instance {spec.name}: "
                               f"interface {spec.interface} does not exist")
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

    def _source(self, spec, base: Link, vmac) -> str:
        """IPv4: the base interface's primary address (a vmac has none of its own
        until it is master); IPv6: the link-local address (RFC 5798 5.1.2.1), the
        vmac's when sending from one."""
        if spec.family == socket.AF_INET:
            src = base.primary_ipv4()
            what = "IPv4 address"
        else:
            src = (vmac.link_local if vmac is not None and vmac.link_local
                   else base.ipv6_link_local())
            what = "IPv6 link-local address (an IPv6 instance sends its adverts from one)"
        if src is None:
            raise RuntimeError(f"{self.plan.where(spec.name)}: instance {spec.name}: "
                               f"no usable {what} on {spec.interface}")
        return src

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

    def _verdicts_settled(self) -> None:
        """A tracked object's change reached every instance tracking it: one
        pump for all their transitions (one batch: one netlink move of their
        VIPs, one log line), not one pump and one move each."""
        if self._electing:
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
        group = self.syncgroups.group_of.get(inst.name)
        members = self.syncgroups.members.get(group, ()) if group is not None else ()
        own = {m: self.trackers.verdict(m).fault for m in members}
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

    # -- the public API: what a reload (vrrpd.core.reload) changes -------------------
    @property
    def electing(self) -> bool:
        """Instances may start (vrrp_startup_delay is over)."""
        return self._electing

    def remove_instance(self, inst: Instance) -> bool:
        """The instance leaves (reload: removed or replaced): a master sends
        priority 0 (Engine.remove_instance) and stops its GARPs; its slot and
        prebuilt bytes go.  -> whether it was MASTER: the caller removes what
        it held (transitions.NetChanges.leave)."""
        # keepalived reports the effective priority (which tracking may have
        # changed since the last transition).
        inst.priority = self.engine.priority(inst.idx)
        master = self.engine.state(inst.idx) == MASTER
        if master:
            self.stop_announcing(inst)
        self.engine.remove_instance(inst.idx)
        self.effects.clear(inst.idx)
        del self.by_idx[inst.idx]
        if self.instances.get(inst.name) is inst:
            del self.instances[inst.name]
        return master

    def retune_instance(self, inst: Instance, spec) -> None:
        """A kept instance takes the engine settings of its new spec that can
        change in place (advert addresses, Engine.retune's tunables); the
        spec itself is swapped in by swap_plan."""
        if spec.advert_addrs != inst.spec.advert_addrs:
            self.engine.set_advert_addrs(inst.idx, [socket.inet_pton(spec.family, a)
                                                    for a in spec.advert_addrs])
        tunables = engine_tunables(spec)
        if tunables != engine_tunables(inst.spec):
            self.engine.retune(inst.idx, now_us(), **tunables)

    def is_master(self, inst: Instance) -> bool:
        """The engine's state now (Instance.state is the last one reported)."""
        return self.engine.state(inst.idx) == MASTER

    def make_trackers(self, config, build: bool = False) -> Trackers:
        """Tracking for a configuration, reporting its verdicts here; for a
        reload (build=False) built by the caller (Trackers.build) and
        swapped in by swap_plan."""
        return Trackers(config, self.runner, self._on_verdict, build=build,
                        on_settled=self._verdicts_settled)

    def swap_plan(self, plan, trackers: Trackers, syncgroups: SyncGroups,
                  kept: Iterable[tuple[Instance, InstanceSpec]] = ()) -> None:
        """One step of a reload: the new plan, tracking and sync groups.
        kept: (Instance, new spec) that stay with new settings (and maybe a
        new name)."""
        for inst, spec in kept:
            if self.instances.get(inst.name) is inst:
                del self.instances[inst.name]
            if inst.name != spec.name:
                log.info("(%s) renamed %s by reload", inst.name, spec.name)
            inst.name, inst.spec = spec.name, spec
        for inst, _ in kept:
            self.instances[inst.name] = inst
        self.plan = plan
        self.trackers, self.syncgroups = trackers, syncgroups

    def set_peers(self, insts) -> None:
        """Their specs' advert destinations to the engine (new unicast peers:
        through FAULT to BACKUP, as keepalived does)."""
        t = now_us()
        for inst in insts:
            self.engine.set_peers(inst.idx, self.advert_dsts(inst.spec), t)

    def ungroup(self, insts) -> None:
        """Out of their sync groups (link_sync_groups puts them in the new ones)."""
        for inst in insts:
            self.engine.set_sync_group([inst.idx])

    def apply_verdicts(self, insts):
        """Each instance's tracking verdict to the engine (it starts once no
        weight-0 script is pending, then priority and FAULT), then the pump.
        A generator, one step per instance: the caller may slice the work."""
        t = now_us()
        for inst in insts:
            self._apply_verdict(inst, t)
            yield
        self._pump()

    def replace_hook(self, old, new) -> None:
        """A hook (e.g. the notify Reporter) rebuilt for a new configuration."""
        self.hooks[self.hooks.index(old)] = new

    # -- shutdown --------------------------------------------------------------------
    def resign(self) -> None:
        """Every master sends priority 0 (RFC 5798 6.4.3) and every instance
        leaves for INIT, at once: called from the stop signal's callback so
        that no turn of the loop (a pump of thousands of adverts) comes
        between the signal and the backups' Skew_Time.  Instances already
        in INIT are left as they are, so calling it again stops only those
        started since."""
        self.stopping = True
        t = now_us()
        for inst in self.instances.values():
            self.engine.stop(inst.idx, t)
        self._pump()

    async def stop(self) -> None:
        """Priority-0 adverts from every master, VIPs removed, STOP reported."""
        self.resign()
        # The priority-0 burst may not fit the device queue at once; the peer
        # takes over after Skew_Time only with them (else Master_Down_Interval).
        # _pump's retry timer sends what is deferred; wait for it to finish.
        deadline = time.monotonic() + TX_DRAIN_S
        while self.engine.tx_pending() and time.monotonic() < deadline:
            await asyncio.sleep(TX_RETRY_US / 1e6)
        await self.effects_done()
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
        self.stop_timers()
        self.garp.close()
        self.stop_effects()
        for _, sock in self._sockets.values():
            self._loop.remove_reader(sock.fileno())
            sock.close()
        for _, psock in self._link_socks.values():
            psock.close()
        self.links.close()
        self.addresses.close()
        await self.vmacs.close()        # last: sockets and VIPs on them are gone
