"""SIGHUP and `vrrpctl reload`: re-read the configuration and apply the
difference without disturbing what did not change.

Like keepalived (vrrp_daemon.c reload_vrrp_thread, vrrp.c clear_diff_vrrp),
instances are matched by their identity, Config.instance_key (VRID, family,
interface, source address) -- not by name:

- kept: same key, same engine settings.  The engine slot, state and timers
  stay; name, VIPs, advert address list, advert_int, preempt, priority,
  notify and tracking are updated in place (keepalived keeps such an
  instance's state too).  A master adds the VIPs (with their strict-mode drop,
  routes and rules) that are new and sends GARPs for them, and removes
  those that went (keepalived restore_vrrp_state / clear_diff_vrrp_vip).
  No transition, no notify.
  A new version re-encodes its adverts (Engine.retune); new unicast peers
  take it through FAULT to BACKUP (Engine.set_peers), as keepalived 2.2.7
  does (tests/test_semantics.py).
- replaced: same key, but a setting the engine fixes at add_instance()
  changed (advert interface, source, auth, owner): the old one
  leaves as if removed, the new one starts.
- added: start.  removed: a master sends priority 0 (engine.remove_instance)
  and its routes, rules, VIPs and strict-mode drop entries are removed;
  then every removed instance is reported, in the old configuration's order,
  before anything new starts (Reporter.on_removed: DELETED or FAULT, as
  keepalived 2.2.7 does; tests/test_reload_notify.py).

A configuration with errors changes nothing: its errors are logged and
returned to `vrrpctl reload`.

Nothing here may hold the loop (adverts are due every 100 ms or less, and
a reload should delay none of them by more than a few ms): reading, resolving and
diffing the new configuration runs in a process of its own (reloadchild.py) that
sends back only what changed; what must run on the loop runs in slices of
about SLICE seconds.  Unchanged instances keep their objects; tracking and
notify scripts are extended in place when nothing global changed, else
rebuilt beside the running ones and swapped in.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from vrrpd.core import leftovers
from vrrpd.core.reload import child as reloadchild
from vrrpd.ops import collector, sdnotify
from vrrpd.ops.logs import Rows
from vrrpd.core.plan import InstanceSpec, Plan, lean_spec
from vrrpd.core.reload.child import ADDED, CHANGED, REPLACED, Outcome
from vrrpd.scripts.reporting import Reporter
from vrrpd.core.pump import now_us
from vrrpd.core.transitions import NetChanges
from vrrpd.core.syncgroups import SyncGroups

log = logging.getLogger("vrrpd")

SLICE = 0.001           # s of reload work on the loop between returns to it
ROOM_US = 1500          # resume only if no advert is due sooner (a slice fits)
SPAWN_ROOM_US = 3000    # starting the reader is the dearest step: between advert bursts
MAX_WAIT = 0.2          # s to wait for that room before going ahead anyway
READER_TIMEOUT = 30.0   # s the configuration reader may take (vrrpd --reload-timeout)
READER_MEMORY = 2 << 30 # bytes of address space it may use (vrrpd --reload-memory)


class Slices:
    """await slices() inside a loop: once SLICE seconds of synchronous work
    have run, return to the event loop and resume at a moment when the
    engine has no advert due for ROOM_US (its deadlines come in bursts)."""

    def __init__(self, engine):
        self.engine = engine
        self.t = time.perf_counter()

    async def __call__(self) -> None:
        if time.perf_counter() - self.t >= SLICE:
            await self.pause()

    async def pause(self, room_us: int = ROOM_US) -> None:
        await asyncio.sleep(0)
        give_up = time.perf_counter() + MAX_WAIT
        while time.perf_counter() < give_up:
            due = self.engine.next_deadline()
            wait = due - now_us()
            if due < 0 or wait > room_us:
                break
            await asyncio.sleep(max(wait, 0) / 1e6 + 0.0002)
        self.t = time.perf_counter()

    async def drain(self, steps) -> None:
        for _ in steps:
            await self()


@dataclass
class Prepared:
    """The new configuration, assembled on the loop from the child's outcome."""
    plan: Plan
    globals_same: bool
    unchanged: int = 0
    kept: list = field(default_factory=list)        # (Instance, new InstanceSpec): settings changed
    replaced: list = field(default_factory=list)    # (Instance, new InstanceSpec)
    added: list = field(default_factory=list)       # InstanceSpec
    removed: list = field(default_factory=list)     # Instance

    def summary(self) -> dict:
        return {"kept": self.unchanged + len(self.kept),
                "changed": sorted(s.name for _, s in self.kept),
                "replaced": sorted(s.name for _, s in self.replaced),
                "added": sorted(s.name for s in self.added),
                "removed": sorted(i.name for i in self.removed)}

    def starting(self) -> list[InstanceSpec]:
        return self.added + [s for _, s in self.replaced]


class Reloader:
    """daemon.reload's driver: serialises reloads, reports to systemd."""

    def __init__(self, daemon, path: str, config_id: str | None,
                 running: "reloadchild.Fingerprints | bytes", timeout: float = READER_TIMEOUT,
                 memory: int = READER_MEMORY):
        """running: fingerprints of daemon.plan (reloadchild.fingerprints, or
        their pickle as the reader sends them), made before the instances start.
        timeout (s), memory (bytes of address space, 0: none): the reader's limits."""
        self.daemon, self.path, self.config_id = daemon, path, config_id
        self.vips_record: str | None = None     # leftovers.state_path(): kept current
        self.timeout, self.memory = timeout, memory
        self.stopping = False
        self._proc: subprocess.Popen | None = None
        self._lock = asyncio.Lock()
        self.reloads = 0
        self.failures = 0
        self.spawn_seconds = 0.0     # the last reader start's cost in the daemon
        # What the reader diffs against; then what it sends back (set with no errors).
        self.running: reloadchild.Fingerprints | bytes | None = running

    def abort(self) -> None:
        """The daemon is stopping: a running reader is killed (its reload is
        rejected) and reloads still queued are refused."""
        self.stopping = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()

    @property
    def busy(self) -> bool:
        """A reload is reading or applying a configuration."""
        return self._lock.locked()

    async def __call__(self) -> dict:
        async with self._lock:
            if self.stopping:
                return {"ok": False, "errors": ["reload: the daemon is stopping"], "warnings": []}
            sdnotify.reloading()
            try:
                return await self._reload()
            finally:
                sdnotify.notify("READY=1")

    async def _reload(self) -> dict:
        log.info("reloading configuration from %s", self.path)
        # No collections while the new configuration is swapped in: a full
        # pass holds the loop (and the adverts) for tens of ms.  Afterwards
        # it is frozen like the first one.
        collector.pause()
        try:
            return await self._reload_gc_off()
        finally:
            gc.freeze()
            collector.resume()

    async def _reload_gc_off(self) -> dict:
        slices = Slices(self.daemon.engine)
        outcome = await self._child(slices)
        out: dict[str, Any] = {"ok": not outcome.errors, "errors": outcome.errors,
                               "warnings": outcome.warnings}
        # One record each for the writer thread: a hostile file has up to a
        # thousand errors, whose records alone would hold the loop for ms.
        if outcome.warnings:
            log.warning(Rows("%s", [(w,) for w in outcome.warnings]))
        if outcome.errors:
            self.failures += 1
            log.error(Rows("%s", [(e,) for e in outcome.errors]))
            log.error("reload rejected: %d errors; the running configuration stays",
                      len(outcome.errors))
            return out
        try:
            prepared = await prepare(self.daemon, outcome, slices)
            if self.vips_record:
                # Old and new: a crash during the swap leaves nothing unknown behind.
                await leftovers.save(self.vips_record, [self.daemon.plan, prepared.plan])
            await apply(self.daemon, prepared, slices)
            if self.vips_record:
                await leftovers.save(self.vips_record, [self.daemon.plan])
        except (RuntimeError, OSError, ValueError) as e:
            # e.g. a new instance on an interface that does not exist.
            self.failures += 1
            log.error("reload failed part-way: %s", e)
            out.update(ok=False, errors=[str(e)])
            return out
        self.reloads += 1
        self.running = outcome.fingerprints
        out.update(prepared.summary())
        log.info("reload done: %d kept (%d changed), %d replaced, %d added, %d removed",
                 out["kept"], len(out["changed"]), len(out["replaced"]), len(out["added"]),
                 len(out["removed"]))
        return out

    async def _child(self, slices: Slices) -> Outcome:
        """Start the reader (python -m vrrpd.core.reload), collect its outcome
        without blocking.  Its input goes through a memfd (written at once,
        whatever its size); Popen uses vfork, so starting it costs the
        daemon no copy of its page tables."""
        loop = asyncio.get_running_loop()
        request = pickle.dumps((self.path, self.config_id, self.running, self.memory),
                               protocol=pickle.HIGHEST_PROTOCOL)
        await slices.pause(SPAWN_ROOM_US)
        t = time.perf_counter()
        infd = os.memfd_create("vrrpd-reload", os.MFD_CLOEXEC)
        try:
            os.write(infd, request)
            os.lseek(infd, 0, os.SEEK_SET)
            proc = subprocess.Popen([sys.executable, "-m", "vrrpd.core.reload"], stdin=infd,
                                    stdout=subprocess.PIPE)
        except OSError as e:
            return Outcome(errors=[f"reload: cannot start the configuration reader: {e}"])
        finally:
            os.close(infd)
        self.spawn_seconds = time.perf_counter() - t
        log.debug("reload: reader started in %.2f ms", self.spawn_seconds * 1000)
        self._proc = proc
        try:
            # stdout=PIPE: proc.stdout is set.
            data = await asyncio.wait_for(_read_all(loop, proc.stdout.fileno()),  # type: ignore[union-attr]
                                          self.timeout)
        except asyncio.TimeoutError:
            proc.kill()
            data = None
        finally:
            proc.stdout.close()         # type: ignore[union-attr]  # stdout=PIPE: set
            await _reap(loop, proc)
            self._proc = None
        if data is None:
            return Outcome(errors=[f"reload: reading the configuration took longer than "
                                   f"{self.timeout:g} s (the reader's limit): stopped"])
        if not data:
            why = "the daemon is stopping" if self.stopping else \
                f"the configuration reader died (exit status {proc.returncode})"
            return Outcome(errors=[f"reload: {why}"])
        await slices.pause()
        return pickle.loads(data)           # small: changed instances stay pickled


async def _read_all(loop, fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable() -> None:
        while not done.done():
            try:
                data = os.read(fd, 1 << 20)
            except BlockingIOError:
                return
            except OSError as e:
                done.set_exception(e)
                return
            if not data:
                done.set_result(None)
            chunks.append(data)

    loop.add_reader(fd, readable)
    try:
        await done
    finally:
        loop.remove_reader(fd)
    return b"".join(chunks)


async def _reap(loop, proc: subprocess.Popen) -> None:
    """Wait for the reader without blocking the loop (pidfd)."""
    pidfd = os.pidfd_open(proc.pid)
    exited = loop.create_future()
    loop.add_reader(pidfd, lambda: exited.done() or exited.set_result(None))
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    proc.wait()


async def prepare(daemon, o: Outcome, slices: Slices) -> Prepared:
    """The new plan from the child's outcome: unchanged instances keep their
    running spec objects (where each block now is comes with the outcome's
    positions); changed ones are unpickled one at a time.  The walk over
    thousands of instances runs in slices too."""
    # The reader sends a skeleton whenever it found no errors (the only case here).
    assert o.skeleton is not None
    running = daemon.instances
    p = Prepared(plan=o.skeleton, globals_same=o.globals_same)
    names = o.names.split("\n") if o.names else []
    ordered: list = [None] * len(names)
    # A changed instance configured like running ones shares their conf.
    shared = {}
    if o.changes:
        distinct = {id(s.conf): s.conf for s in daemon.plan.instances}
        shared = {c: c for c in distinct.values()}
    for (pos, kind, name), blob in zip(o.changes, o.specs):
        spec = ordered[pos] = lean_spec(pickle.loads(blob), shared)
        if kind == CHANGED:
            p.kept.append((running[name], spec))
        elif kind == REPLACED:
            p.replaced.append((running[name], spec))
        else:
            assert kind == ADDED
            p.added.append(spec)
        await slices()
    for pos, name in enumerate(names):
        if ordered[pos] is None:                # SAME
            ordered[pos] = running[name].spec
        await slices()
    p.unchanged = len(ordered) - len(o.changes)
    p.removed = [running[name] for name in o.removed]
    instances = {}
    for spec in ordered:
        instances[spec.name] = spec.conf
        await slices()
    config = dataclasses.replace(o.skeleton.config, instances=instances)
    p.plan = dataclasses.replace(o.skeleton, config=config, instances=ordered,
                                 positions=o.positions)
    return p


async def apply(daemon, p: Prepared, slices: Slices) -> None:
    """Swap in the new configuration, in slices: the engine keeps running the
    old configuration for what is not yet swapped."""
    for spec in p.starting():                    # fail before changing anything
        if daemon.links.by_name(spec.interface) is None:
            raise RuntimeError(f"{p.plan.where(spec.name)}: instance {spec.name}: "
                               f"interface {spec.interface} does not exist")
    # New vmacs before anything changes (vmacs of removed instances stay until shutdown).
    await daemon.create_vmacs(p.starting())
    config = p.plan.config
    new_specs = [s for _, s in p.kept] + p.starting()
    rebuilt = [s.name for s in new_specs]
    # Tracking and notify scripts: extended in place when nothing global
    # changed and no new tracked object needs a watcher; else rebuilt beside.
    old_trackers = daemon.trackers
    old_verdicts = {n: ti.verdict for n, ti in old_trackers.instances.items()}
    in_place = p.globals_same and old_trackers.watches_all(s.conf for s in new_specs)
    if in_place:
        trackers = old_trackers
        trackers.config = config
        await slices.drain(trackers.build(rebuilt))
    else:
        trackers = daemon.make_trackers(config)
        await slices.drain(trackers.build(list(config.instances), carry=old_trackers))
    reporter = next((h for h in daemon.hooks if isinstance(h, Reporter)), None)
    # The removed instances' notify scripts, before a new instance or a
    # renamed one takes over the name.
    removed_scripts = [reporter.scripts.get(i.name) for i in p.removed] if reporter else []
    if reporter is not None:
        if p.globals_same:
            reporter.config = config
            await slices.drain(reporter.build(rebuilt))
        else:
            new_reporter = Reporter(config, daemon.runner, build=False)
            await slices.drain(new_reporter.build(list(config.instances)))

    gone = NetChanges()         # what leaving masters held
    net = NetChanges()          # kept masters' changes
    syncgroups = SyncGroups(config)
    syncgroups.carry(daemon.syncgroups)

    def leave(inst, spec) -> None:
        log.info("(%s) %s by reload", inst.name, "removed" if spec is None else "replaced")
        if daemon.remove_instance(inst):            # a master sends priority 0
            gone.leave(inst)

    # Sync-group members leave and join in one step with the groups
    # themselves (the runtime looks members up by name); the rest in slices.
    leaving = [(i, None) for i in p.removed] + p.replaced
    grouped_old, grouped_new = daemon.syncgroups.group_of, syncgroups.group_of
    for inst, spec in leaving:                   # old slots first: a replacement reuses the VRID
        if inst.name not in grouped_old:
            leave(inst, spec)
            await slices()
    old_names = {}                              # id(kept Instance) -> its name before the reload
    repeer = []                                 # kept instances with new destinations
    for inst, spec in p.kept:
        old_names[id(inst)] = inst.name
        daemon.retune_instance(inst, spec)
        new_vips = daemon.vips_of(spec)
        peers = spec.unicast_peers != inst.spec.unicast_peers
        if peers:
            repeer.append(inst)
        if daemon.is_master(inst):
            # New peers: it leaves MASTER (set_peers); its FAULT removes the rest.
            net.update(inst, spec, new_vips, staying=not peers)
        inst.vips = new_vips
        await slices()
    check = [inst for inst, _ in p.kept] if in_place else list(daemon.instances.values())
    # One step: the swap.
    leaving_ids = {id(inst) for inst, _ in leaving}
    regroup = [daemon.instances[m] for m in grouped_old
               if m in daemon.instances and id(daemon.instances[m]) not in leaving_ids]
    for inst, spec in leaving:
        if inst.name in grouped_old:
            leave(inst, spec)
    daemon.swap_plan(p.plan, trackers, syncgroups, kept=p.kept)
    touched = [daemon.add_instance(s) for s in p.starting() if s.name in grouped_new]
    daemon.set_peers(repeer)                    # after the swap: reported under the new name
    daemon.ungroup(regroup)                     # out of their old groups, into the new ones
    daemon.link_sync_groups()
    if in_place:
        # Forget instances that went away (or were renamed) only now: until
        # here the runtime could still ask for their verdicts.
        for name in set(old_verdicts) - set(config.instances):
            trackers.drop(name)
    for spec in p.starting():
        if spec.name not in grouped_new:
            touched.append(daemon.add_instance(spec))
            await slices()
    # What left is gone, then reported, before anything starts (keepalived's
    # clear_diff_vrrp runs before the new instances start; a notify sees the
    # state it reports).
    await daemon.apply_changes(gone)
    for inst, scripts in zip(p.removed, removed_scripts):
        # removed_scripts is empty without a reporter.
        reporter.on_removed(inst, scripts)     # type: ignore[union-attr]
        await slices()
    # Priority and fault from the new tracking where it differs; new
    # instances start here (or once their weight-0 scripts have reported).
    for inst in check:
        if daemon.instances.get(inst.name) is inst and \
                trackers.verdict(inst.name) != old_verdicts.get(old_names.get(id(inst), inst.name)):
            touched.append(inst)
        await slices()
    await slices.drain(daemon.apply_verdicts(touched))
    # The rest may await: the engine already runs the new configuration.
    if not in_place:
        await old_trackers.stop()
        trackers.start(daemon.links.links)
    if reporter is not None and not p.globals_same:
        await _swap_reporter(daemon, reporter, new_reporter)
    elif reporter is not None:
        for name in set(reporter.scripts) - set(config.instances):
            del reporter.scripts[name]
    await daemon.apply_changes(net)


async def _swap_reporter(daemon, old: Reporter, new: Reporter) -> None:
    """Notify scripts follow the new configuration; the fifos stay open (and
    keep their queued lines) when their settings did not change."""
    if [(f.path, f.script) for f in old.notifier.fifos] == \
            [(f.path, f.script) for f in new.notifier.fifos]:
        new.notifier = old.notifier
    else:
        await daemon.effects_done()     # the netlink thread may be writing to them
        for f in old.notifier.fifos:
            await f.close(old.runner)
        new.open()
    daemon.replace_hook(old, new)
