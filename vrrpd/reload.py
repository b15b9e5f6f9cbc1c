"""SIGHUP and `vrrpctl reload`: re-read the configuration and apply the
difference without disturbing what did not change.

Like keepalived (vrrp_daemon.c reload_vrrp_thread, vrrp.c clear_diff_vrrp),
instances are matched by their identity, Config.instance_key (VRID, family,
interface, source address) -- not by name:

- kept: same key, same engine settings.  The engine slot, state and timers
  stay; name, VIPs, priority, notify and tracking are updated in place (a
  master adds/removes the VIPs that changed).  No transition, no notify.
- replaced: same key, but a setting the engine fixes at add_instance()
  changed (version, advert_int, preempt, advert addresses, peers, auth...):
  the old one leaves as if removed, the new one starts.
- added: start.  removed: a master sends priority 0 (engine.remove_instance)
  and its VIPs are removed.

A configuration with errors changes nothing: its errors are logged and
returned to `vrrpctl reload`.  Reading and resolving the new configuration
(about 0.3 s for 1,000 instances) runs in a worker thread, and so does
building the new trackers and notify hook, so the loop keeps sending
adverts on time; only the swap runs on the loop.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import sys
import dataclasses
from dataclasses import dataclass, field

from . import _engine, sdnotify
from .addresses import Vip
from .config import Config, load
from .plan import InstanceSpec, build_plan
from .runtime import now_us
from .reporting import Reporter
from .syncgroups import SyncGroups
from .trackers import Trackers

log = logging.getLogger("vrrpd")

# While the worker thread parses, hand the GIL back to the loop quickly
# (the default 5 ms would delay adverts by up to that much).
RELOAD_SWITCH_INTERVAL = 0.0005


def engine_settings(spec: InstanceSpec) -> tuple:
    """What Engine.add_instance() fixes; a change means replacing the instance."""
    return (spec.advert_interface, spec.version, spec.advert_int_cs, spec.preempt,
            spec.preempt_delay_cs, spec.src_ip, tuple(spec.unicast_peers), tuple(spec.advert_addrs), spec.auth_type, spec.auth_pass,
            spec.v3_checksum_as_v2, spec.priority == 255, spec.conf.down_timer_adverts)


@dataclass
class Diff:
    kept: list = field(default_factory=list)        # (Instance, new InstanceSpec)
    replaced: list = field(default_factory=list)    # (Instance, new InstanceSpec)
    added: list = field(default_factory=list)       # InstanceSpec
    removed: list = field(default_factory=list)     # Instance
    changed: list = field(default_factory=list)     # names of kept instances with new settings

    def summary(self) -> dict:
        return {"kept": len(self.kept), "changed": sorted(self.changed),
                "replaced": sorted(s.name for _, s in self.replaced),
                "added": sorted(s.name for s in self.added),
                "removed": sorted(i.name for i in self.removed)}


def diff(instances, new_specs) -> Diff:
    old = {Config.instance_key(i.spec.conf): i for i in instances}
    d = Diff()
    for spec in new_specs:
        inst = old.pop(Config.instance_key(spec.conf), None)
        if inst is None:
            d.added.append(spec)
        elif engine_settings(inst.spec) == engine_settings(spec):
            d.kept.append((inst, spec))
            if _settings(inst.spec) != _settings(spec):
                d.changed.append(spec.name)
        else:
            d.replaced.append((inst, spec))
    d.removed = list(old.values())
    return d


def _settings(spec: InstanceSpec):
    # Where it was read from does not make an instance different.
    return spec.name, dataclasses.replace(spec.conf, name="", where=("", 0))


@dataclass
class Prepared:
    """Everything built off the loop for one reload."""
    plan: object
    diff: Diff
    trackers: Trackers
    syncgroups: SyncGroups
    reporter: Reporter | None


class Reloader:
    """daemon.reload's driver: serialises reloads, reports to systemd."""

    def __init__(self, daemon, path: str, config_id: str | None):
        self.daemon, self.path, self.config_id = daemon, path, config_id
        self._lock = asyncio.Lock()
        self.reloads = 0
        self.failures = 0

    async def __call__(self) -> dict:
        async with self._lock:
            sdnotify.reloading()
            try:
                return await self._reload()
            finally:
                sdnotify.notify("READY=1")

    async def _reload(self) -> dict:
        log.info("reloading configuration from %s", self.path)
        loop = asyncio.get_running_loop()
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(RELOAD_SWITCH_INTERVAL)
        # No collections while the new configuration is built and swapped in:
        # a full pass over it, in either thread, holds the GIL (and the
        # adverts) for tens of ms.  Afterwards it is frozen like the first one
        # (the old one is freed by reference counting: it has no cycles).
        gc.disable()
        try:
            return await self._reload_gc_off(loop, old_interval)
        finally:
            sys.setswitchinterval(old_interval)
            gc.freeze()
            gc.enable()

    async def _reload_gc_off(self, loop, old_interval) -> dict:
        try:
            result, prepared = await loop.run_in_executor(None, self._prepare)
        finally:
            sys.setswitchinterval(old_interval)
        out = {"ok": not result.errors, "errors": [str(e) for e in result.errors],
               "warnings": [str(w) for w in result.warnings]}
        for w in result.warnings:
            log.warning("%s", w)
        if result.errors:
            self.failures += 1
            for e in result.errors:
                log.error("%s", e)
            log.error("reload rejected: %d errors; the running configuration stays",
                      len(result.errors))
            return out
        try:
            await apply(self.daemon, prepared)
        except (RuntimeError, OSError, ValueError) as e:
            # e.g. a new instance on an interface that does not exist.
            self.failures += 1
            log.error("reload failed part-way: %s", e)
            out.update(ok=False, errors=[str(e)])
            return out
        self.reloads += 1
        out.update(prepared.diff.summary())
        log.info("reload done: %d kept (%d changed), %d replaced, %d added, %d removed",
                 out["kept"], len(out["changed"]), len(out["replaced"]), len(out["added"]),
                 len(out["removed"]))
        return out

    def _prepare(self):
        """Worker thread: parse, plan, diff, and build the new trackers and hooks."""
        result = load(self.path, config_id=self.config_id)
        if result.errors:
            return result, None
        d = self.daemon
        plan = build_plan(result.config)
        trackers = Trackers(plan.config, d.runner, d._on_verdict)
        _carry_tracking(d.trackers, trackers)
        has_reporter = any(isinstance(h, Reporter) for h in d.hooks)
        return result, Prepared(plan, diff(list(d.instances.values()), plan.instances), trackers,
                                SyncGroups(plan.config),
                                Reporter(plan.config, d.runner) if has_reporter else None)


def _vips(daemon, spec) -> list[Vip]:
    return daemon.vips_of(spec)


async def apply(daemon, p: Prepared) -> None:
    """Swap in the new configuration.  The engine part runs without awaiting,
    and per-instance work only for what changed: the loop must not stall for
    more than a few milliseconds (adverts are due every 100 ms or less)."""
    d = p.diff
    for spec in d.added + [s for _, s in d.replaced]:      # fail before changing anything
        if daemon.links.by_name(spec.interface) is None:
            raise RuntimeError(f"{spec.where}: instance {spec.name}: "
                               f"interface {spec.interface} does not exist")
    # New vmacs before anything changes (awaits; vmacs of removed instances stay until shutdown).
    await daemon.create_vmacs(d.added + [s for _, s in d.replaced])
    engine = daemon.engine
    old_verdicts = {id(inst): daemon.trackers.verdict(inst.name) for inst, _ in d.kept}
    vip_add, vip_remove = [], []
    # Old slots first: a replacement reuses the VRID on the same socket.
    for inst, spec in [(i, None) for i in d.removed] + d.replaced:
        log.info("(%s) %s by reload", inst.name, "removed" if spec is None else "replaced")
        if engine.state(inst.idx) == _engine.MASTER:
            # A replacement's own INIT transition sets the VIPs it keeps.
            keep = _vips(daemon, spec) if spec is not None else []
            vip_remove += [v for v in inst.vips if v not in keep]
            for key, _ in daemon._announces(inst):
                daemon.garp.stop(key)
        engine.remove_instance(inst.idx)             # a master sends priority 0
        del daemon.by_idx[inst.idx]
        daemon.instances.pop(inst.name, None)
    renamed = []
    for inst, spec in d.kept:
        if spec.vips != inst.spec.vips:
            new_vips = _vips(daemon, spec)
            if engine.state(inst.idx) == _engine.MASTER:
                vip_add += [v for v in new_vips if v not in inst.vips]
                vip_remove += [v for v in inst.vips if v not in new_vips]
            inst.vips = new_vips
        if inst.name != spec.name:
            log.info("(%s) renamed %s by reload", inst.name, spec.name)
            renamed.append(inst)
            daemon.instances.pop(inst.name, None)
            inst.name = spec.name
        inst.spec = spec
    for inst in renamed:
        daemon.instances[inst.name] = inst
    daemon.plan = p.plan
    old_trackers, daemon.trackers = daemon.trackers, p.trackers
    p.syncgroups.carry(daemon.syncgroups)
    daemon.syncgroups = p.syncgroups
    touched = [daemon._add_instance(spec) for spec in d.added + [s for _, s in d.replaced]]
    # Priority and fault from the new trackers where they differ; new
    # instances start here (or once their weight-0 scripts have reported).
    touched += [inst for inst, spec in d.kept
                if p.trackers.verdict(inst.name) != old_verdicts[id(inst)]]
    t = now_us()
    for inst in touched:
        daemon._apply_verdict(inst, t)
    daemon._pump()
    # The rest may await: the engine already runs the new configuration.
    await old_trackers.stop()
    p.trackers.start(daemon.links.links)
    if p.reporter is not None:
        await _swap_reporter(daemon, p.reporter)
    if vip_remove:
        r = await daemon.addresses.remove(vip_remove)
        for vip, err in r.failed:
            log.warning("removing VIP %s failed: errno %d", vip.address, err)
    if vip_add:
        r = await daemon.addresses.add(vip_add)
        for vip, err in r.failed:
            log.warning("adding VIP %s failed: errno %d", vip.address, err)


def _carry_tracking(old: Trackers, new: Trackers) -> None:
    """Known tracked values (scripts' last results, links, files, processes)
    carry over, so a kept instance keeps its effective priority instead of
    falling back to its base until every watcher has reported again."""
    known: dict = {}
    for ti in list(old.instances.values()):
        known.update(dict(ti._values))
    for ti in new.instances.values():
        for t in ti.tracks:
            value = known.get((t.kind, t.name))
            if value is not None:
                ti._values[(t.kind, t.name)] = value
        ti.verdict = ti._evaluate()


async def _swap_reporter(daemon, new: Reporter) -> None:
    """Notify scripts follow the new configuration; the fifos stay open (and
    keep their queued lines) when their settings did not change."""
    i, old = next((i, h) for i, h in enumerate(daemon.hooks) if isinstance(h, Reporter))
    if [(f.path, f.script) for f in old.notifier.fifos] == \
            [(f.path, f.script) for f in new.notifier.fifos]:
        new.notifier = old.notifier
    else:
        for f in old.notifier.fifos:
            await f.close(old.runner)
        new.open()
    daemon.hooks[i] = new
