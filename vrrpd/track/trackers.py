"""Every tracked object of the configuration, feeding each instance's verdict.

Builds, from the config model, one vrrpd.track.instance.TrackedInstance per
vrrp_instance (its track_* entries with keepalived's default weights, the
sync group's own track_*, and its own interface unless dont_track_primary),
runs the watchers (vrrp_script trackers, track_file inotify, track_process
scan), feeds link events, and reports each changed Verdict(fault, priority,
pending) to the daemon.
"""
from __future__ import annotations

import asyncio
import logging
from operator import methodcaller
from typing import Callable

from vrrpd.config.model import Config, Track, VrrpInstance
from vrrpd.net.links import Link, LinkEvent
from vrrpd.scripts.runner import ScriptRunner
from vrrpd.track.instance import Tracked, TrackedInstance, track_entry, track_key
from vrrpd.track.rules import TRACK_KINDS, Verdict
from vrrpd.track.track_file import TrackFileWatcher
from vrrpd.track.track_process import ProcessWatcher
from vrrpd.track.vrrp_script import VrrpScriptTracker

log = logging.getLogger("vrrpd.track")


def _tracks(kind: str, entries: tuple[Track, ...], defaults: dict) -> list[Tracked]:
    """track_* lines -> (kind, Track) with the weight resolved, an omitted
    weight taking the object's own (keepalived: 'an unspecified weight means
    the script's weight is used')."""
    out = []
    for t in entries:
        if t.weight is None:
            weight, reverse = defaults.get(t.name, (0, False))
        else:
            weight, reverse = t.weight, t.reverse
        out.append(track_entry(kind, t.name, weight, reverse))
    return out


class Trackers:
    """The tracking of one configuration: every instance's TrackedInstance,
    indexed by the objects they track, and the watchers feeding them."""

    def __init__(self, config: Config, runner: ScriptRunner,
                 on_verdict: Callable[[str, Verdict], None], *, build: bool = True,
                 on_settled: Callable[[], None] | None = None):
        """on_verdict(name, verdict): an instance's verdict changed;
        on_settled(): a tracked object's change has reached every instance
        tracking it (a script or link that thousands track moves them as
        one batch, not one each).  build=False: empty; a reload fills it
        with build() in slices."""
        self.config = config
        self.runner = runner
        self.on_verdict = on_verdict
        self.on_settled = on_settled
        self.instances: dict[str, TrackedInstance] = {}
        # (kind, name) -> the instances tracking it: one tracked object's change
        # touches only those, not every instance (100 scripts x 10,000 instances).
        self._by_object: dict[tuple[str, str], list[TrackedInstance]] = {}
        self._links: dict[int, Link] = {}
        self._script_trackers: list[VrrpScriptTracker] = []
        self._files: TrackFileWatcher | None = None
        self._processes: ProcessWatcher | None = None
        self._shared: dict = {}
        if build:
            for _ in self.build(config.instances):
                pass

    def _defaults(self) -> dict:
        c = self.config
        return {
            "script": {n: (s.weight, s.weight_reverse) for n, s in c.scripts.items()},
            "file": {n: (f.weight, f.weight_reverse) for n, f in c.track_files.items()},
            "process": {n: (p.weight, p.weight_reverse) for n, p in c.track_processes.items()},
            "interface": {},
        }

    def build(self, names, carry: "Trackers | None" = None):
        """(Re)build the tracking of the named instances of self.config, one
        per step (a generator, so a reload can yield to the loop between
        steps).  Values known for their tracked objects -- here, in `carry`
        (the previous Trackers), or the link table -- are carried over, so a
        kept instance keeps its effective priority instead of falling back
        to its base until every watcher has reported again."""
        defaults = self._defaults()
        for name in names:
            old = self.drop(name)
            inst = self.config.instances[name]
            group = self.config.sync_groups.get(inst.sync_group) if inst.sync_group else None
            ti = TrackedInstance(
                name, inst.priority, map(self._share, self._own_tracks(inst, defaults)),
                map(self._share, self._group_tracks(group, defaults)) if group else (),
                sync_group=group is not None,
                sync_group_tracking_weight=bool(group and group.sync_group_tracking_weight),
                on_change=self.on_verdict, named=True)
            ti.tracks = self._share(ti.tracks)
            for key in {track_key(kind, t.name) for kind, t in ti.tracks}:
                value = self._known(key, old, carry)
                if value is not None:
                    ti.set_value(*key, value)
                self._by_object.setdefault(key, []).append(ti)
            ti.verdict = ti.evaluate()
            self.instances[name] = ti
            yield

    def _share(self, obj):
        """One object for equal tracks and equal track lists: instances of a
        lab or a data centre mostly track the same few things."""
        return self._shared.setdefault(obj, obj)

    def _known(self, key: tuple[str, str], old: TrackedInstance | None, carry):
        for source in (old, *self._by_object.get(key, ())[:1],
                       *((carry._by_object.get(key) or ())[:1] if carry else ())):
            value = source.value(*key) if source is not None else None
            if value is not None:
                return value
        if key[0] == "interface" and self._links:
            link = next((lk for lk in self._links.values() if lk.name == key[1]), None)
            return bool(link and link.is_up)
        return None

    def drop(self, name: str) -> TrackedInstance | None:
        """Forget an instance (reload); returns its tracking."""
        ti = self.instances.pop(name, None)
        if ti is not None:
            for key in {(kind, t.name) for kind, t in ti.tracks}:
                users = self._by_object.get(key)
                if users is not None and ti in users:
                    users.remove(ti)
        return ti

    def watches_all(self, instances) -> bool:
        """Whether every script/file/process these instances track is already
        watched here: then a reload can extend this object in place."""
        defaults = self._defaults()
        for inst in instances:
            group = self.config.sync_groups.get(inst.sync_group) if inst.sync_group else None
            for kind, t in self._own_tracks(inst, defaults) + (
                    self._group_tracks(group, defaults) if group else []):
                if kind != "interface" and not self._by_object.get((kind, t.name)):
                    return False
        return True

    @staticmethod
    def _own_tracks(inst: VrrpInstance, defaults) -> list[Tracked]:
        tracks = []
        for kind in TRACK_KINDS:
            tracks += _tracks(kind, getattr(inst, f"track_{kind}"), defaults[kind])
        if not inst.dont_track_primary and inst.interface is not None:
            # The instance's own interface going down is FAULT (keepalived),
            # not subject to the sync-group weight rule: weight 0 already.
            # (No interface: unicast peers only, nothing of its own to track.)
            tracks.append(track_entry("interface", inst.interface, 0))
        return tracks

    @staticmethod
    def _group_tracks(group, defaults) -> list[Tracked]:
        tracks = []
        for kind in TRACK_KINDS:
            tracks += _tracks(kind, getattr(group, f"track_{kind}"), defaults[kind])
        return tracks

    def _used(self, kind: str) -> set[str]:
        return {name for (k, name), users in self._by_object.items() if k == kind and users}

    # -- lifecycle -------------------------------------------------------------------
    def start(self, links: dict[int, Link]) -> None:
        self._links = links
        by_name = {link.name: link for link in links.values()}
        for name in self._used("interface"):
            link = by_name.get(name)
            self._update("interface", name, bool(link and link.is_up))
        for name in sorted(self._used("script")):
            vs = self.config.scripts[name]
            script = None
            if vs.script is not None:
                script = self.runner.prepare(list(vs.script.argv), vs.user or vs.script.user,
                                             vs.group or vs.script.group,
                                             label=f"vrrp_script {name}")
            if script is None:
                # keepalived removes a disabled script from its instances.
                log.warning("vrrp_script %s disabled: its instances ignore it", name)
                self._settle(self._by_object.pop(("script", name), ()),
                             methodcaller("remove", "script", name))
                continue
            tracker = VrrpScriptTracker(self.runner, vs, script,
                                        lambda n, up: self._update("script", n, up))
            self._script_trackers.append(tracker)
            tracker.start()
        used = self._used("file")
        files = [f for n, f in self.config.track_files.items() if n in used and f.file]
        if files:
            self._files = TrackFileWatcher(lambda n, v: self._update("file", n, v))
            self._files.start(files)
        used = self._used("process")
        procs = [p for n, p in self.config.track_processes.items() if n in used]
        if procs:
            self._processes = ProcessWatcher(procs, lambda n, up: self._update("process", n, up))
            self._processes.start()

    async def ready(self, timeout: float = 5.0) -> None:
        """Wait for the first /proc scan: keepalived scans before its instances
        start, so a tracked process's weight counts from the first advert."""
        if self._processes is not None and self._processes.scanned is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._processes.scanned), timeout)
            except asyncio.TimeoutError:
                log.warning("track_process: first /proc scan not done after %.0f s", timeout)

    async def stop(self) -> None:
        for t in self._script_trackers:
            t.stop()
        if self._files is not None:
            self._files.stop()
        if self._processes is not None:
            await self._processes.stop()

    # -- inputs ----------------------------------------------------------------------
    def on_link(self, link: Link, event: LinkEvent, old: Link | None) -> None:
        up = event not in (LinkEvent.DOWN, LinkEvent.DELETED) and link.is_up
        if event == LinkEvent.RENAMED and old is not None:
            self._update("interface", old.name, False)
        self._update("interface", link.name, up)

    def _update(self, kind: str, name: str, value) -> None:
        self._settle(self._by_object.get((kind, name), ()),
                     methodcaller("update", kind, name, value))

    def _settle(self, users, change: Callable[[TrackedInstance], object]) -> None:
        """change() each instance (its verdict, if new, to on_verdict), then
        on_settled once if any verdict changed."""
        changed = False
        for ti in users:
            before = ti.verdict
            change(ti)
            changed = changed or ti.verdict is not before
        if changed and self.on_settled is not None:
            self.on_settled()

    def verdict(self, name: str) -> Verdict:
        return self.instances[name].verdict
