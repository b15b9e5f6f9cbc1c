"""What an instance tracks, and what that does to its priority or state.

Tracked objects (keepalived: track_script, track_interface, track_file,
track_process) each give an instance either a priority adjustment or FAULT.
Rules (keepalived.conf(5), vrrp_track.c):

* up/down objects (scripts, interfaces, processes) with weight w:
  w == 0: the instance is FAULT while the object is down ("weight 0
  reverse": while it is up).  w > 0: adds w while up.  w < 0: subtracts |w|
  while down.  `reverse` flips the sign of the adjustment (w > 0 reverse:
  subtracts w while up).
* track_file: the file holds an integer v.  w == 0: v != 0 means FAULT
  (reverse: v == 0).  Otherwise v * w (negated by reverse) is added; below
  -253 means FAULT, above 253 is capped at 253.  A missing or unparsable
  file reads as 0.  Entering that FAULT keeps the effective priority from
  before (keepalived does not recompute it then).
* effective priority = base + adjustments, clamped to 1..254; an address
  owner (255) never changes.
* sync-group members without `sync_group_tracking_weight`: a weighted
  track_script or track_file of the member's own is ignored altogether
  (keepalived 2.2.7 drops it: its failure changes nothing); interface and
  process weights stay in force, as in keepalived; the group's own track_*
  keep their weights.

Watchers: vrrp_script on its interval through ScriptRunner; track_file
through inotify on the file's directory (a small ctypes binding on
loop.add_reader; falls back to reading every second if inotify is missing);
track_process by scanning /proc on an interval in a worker thread (keepalived
uses the netlink proc connector; polling is simpler and documented here).
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import struct
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Sequence

from vrrpd.scripts.runner import Script, ScriptRunner, split_command

log = logging.getLogger(__name__)

PRIO_OWNER = 255
MAX_FILE_ADJUST = 253


# -- pure rules ------------------------------------------------------------------------

def bool_adjustment(up: bool, weight: int, reverse: bool = False) -> int | None:
    """Priority adjustment of an up/down tracked object; None means FAULT."""
    if weight == 0:
        return 0 if up != reverse else None
    applies = up if weight > 0 else not up
    return (-weight if reverse else weight) if applies else 0


def file_adjustment(value: int, weight: int, reverse: bool = False) -> int | None:
    """Priority adjustment from a track_file value; None means FAULT."""
    if weight == 0:
        return 0 if (value == 0) != reverse else None
    adj = value * weight * (-1 if reverse else 1)
    if adj < -MAX_FILE_ADJUST:
        return None
    return min(adj, MAX_FILE_ADJUST)


def effective_priority(base: int, adjustments: Iterable[int]) -> int:
    """base + adjustments clamped to 1..254; an owner (255) stays 255."""
    if base >= PRIO_OWNER:
        return PRIO_OWNER
    return max(1, min(PRIO_OWNER - 1, base + sum(adjustments)))


class Verdict(NamedTuple):
    fault: bool          # some weight-0 object is down (or a file went below -253)
    priority: int        # effective priority
    pending: bool        # a weight-0 script has not reported yet: stay in INIT (keepalived)


# -- vrrp_script ----------------------------------------------------------------------

class RiseFall:
    """keepalived's rise/fall counter for one vrrp_script.

    `result` runs 0..rise+fall-1; the script is up when result >= rise.  It
    starts at rise-1 (one success brings it up, one failure faults it) or at
    0 with init_fail.  Success: below rise-1 count up, else jump to the top.
    Failure: above rise count down, else drop to 0.
    """

    def __init__(self, rise: int = 1, fall: int = 1, init_fail: bool = False):
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise, self.fall = rise, fall
        self.result = 0 if init_fail else rise - 1
        self.up: bool | None = False if init_fail else None   # None: no result yet

    def record(self, success: bool) -> bool | None:
        """Feed one run's outcome; returns the new state if it changed (or was first known)."""
        if success:
            if self.result < self.rise - 1:
                self.result += 1
            else:
                self.result = self.rise + self.fall - 1
        elif self.result > self.rise:
            self.result -= 1
        else:
            self.result = 0
        up = self.result >= self.rise
        if up == self.up:
            return None
        self.up = up
        return up


@dataclass
class VrrpScript:
    """A vrrp_script block; field names are keepalived's keywords."""
    name: str
    script: Script | None                   # None: disabled (refused by ScriptRunner.prepare)
    interval: float = 1.0
    timeout: float | None = None            # keepalived: defaults to interval
    weight: int = 0
    reverse: bool = False
    rise: int = 1
    fall: int = 1
    init_fail: bool = False


class VrrpScriptTracker:
    """Runs one vrrp_script every `interval` and reports up/down changes.

    A run still going when the next is due is skipped (keepalived), and a
    run longer than `timeout` is killed (process group) and counts as a
    failure.  on_change(name, up) is called on the loop.
    """

    def __init__(self, runner: ScriptRunner, vs: VrrpScript,
                 on_change: Callable[[str, bool], None]):
        self.runner, self.vs, self.on_change = runner, vs, on_change
        self.state = RiseFall(vs.rise, vs.fall, vs.init_fail)
        self.skipped = 0
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0

    @property
    def up(self) -> bool | None:
        return self.state.up

    def start(self) -> None:
        if self.vs.script is None:
            log.warning("vrrp_script %s is disabled; not tracking it", self.vs.name)
            return
        if self.state.up is not None:          # init_fail: known to be down from the start
            self.on_change(self.vs.name, self.state.up)
        self._next = asyncio.get_running_loop().time()
        self._tick()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        if self._running:
            self.skipped += 1
            log.debug("vrrp_script %s still running; skipping this run", self.vs.name)
        else:
            self._running = True
            timeout = self.vs.timeout if self.vs.timeout is not None else self.vs.interval
            self.runner.start(self.vs.script, timeout=timeout).add_done_callback(self._done)
        # Fixed rate; after a stall, resume from now instead of bursting.
        self._next = max(self._next + self.vs.interval, loop.time())
        self._timer = loop.call_at(self._next, self._tick)

    def _done(self, fut: asyncio.Future) -> None:
        self._running = False
        changed = self.state.record(fut.result().ok)
        if changed is not None:
            log.info("vrrp_script %s %s", self.vs.name, "succeeded" if changed else "failed")
            self.on_change(self.vs.name, changed)


# -- track_file -----------------------------------------------------------------------

@dataclass
class TrackFile:
    """A track_file (vrrp_track_file) block."""
    name: str
    file: str
    weight: int = 1
    reverse: bool = False
    init_file: int | None = None            # value to write at startup, None: don't
    overwrite: bool = False                 # init_file ... overwrite


def parse_track_value(data: bytes) -> int:
    """strtol(buf, NULL, 0) as keepalived reads a track file: 0 on anything odd."""
    s = data.decode("ascii", "replace").lstrip(" \t\n\r\f\v")
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in "+-":
        s = s[1:]
    if s[:2].lower() == "0x":
        base, s = 16, s[2:]
    elif s[:1] == "0":
        base = 8
    else:
        base = 10
    digits = "0123456789abcdef"[:base]
    n = 0
    while n < len(s) and s[n].lower() in digits:
        n += 1
    return sign * int(s[:n], base) if n else 0


def read_track_file(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        return parse_track_value(os.read(fd, 127))
    except OSError:
        return 0
    finally:
        os.close(fd)


def init_track_file(tf: TrackFile) -> None:
    """init_file [VALUE] [overwrite]: create (or overwrite) the file at startup."""
    if tf.init_file is None or (os.path.exists(tf.file) and not tf.overwrite):
        return
    try:
        with open(tf.file, "w") as f:
            f.write(f"{tf.init_file}\n")
    except OSError as e:
        log.error("track_file %s: cannot initialise %s: %s", tf.name, tf.file, e)


class _Inotify:
    """The three inotify calls we need, via ctypes (the stdlib has none)."""
    IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_DELETE = 0x8, 0x40, 0x80, 0x200
    IN_Q_OVERFLOW, IN_ISDIR = 0x4000, 0x40000000
    MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_DELETE
    EVENT = struct.Struct("iIII")

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")

    def watch(self, directory: str) -> int:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(directory), self.MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        return wd

    def events(self) -> Iterable[tuple[int, int, str]]:
        """(wd, mask, name) for everything queued now."""
        while True:
            try:
                buf = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return
            off = 0
            while off + self.EVENT.size <= len(buf):
                wd, mask, _cookie, length = self.EVENT.unpack_from(buf, off)
                off += self.EVENT.size
                name = buf[off:off + length].rstrip(b"\0").decode(errors="surrogateescape")
                off += length
                yield wd, mask, name

    def close(self) -> None:
        os.close(self.fd)


class TrackFileWatcher:
    """Reads track files at start and whenever they are written, moved or deleted."""

    POLL_INTERVAL = 1.0          # only without inotify

    def __init__(self, on_value: Callable[[str, int], None]):
        self.on_value = on_value
        self.files: dict[str, TrackFile] = {}
        self.values: dict[str, int] = {}
        self._by_dir: dict[int, list[TrackFile]] = {}
        self._ino: _Inotify | None = None
        self._poll: asyncio.TimerHandle | None = None

    def start(self, files: Iterable[TrackFile]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._ino = _Inotify()
            loop.add_reader(self._ino.fd, self._on_events)
        except (OSError, AttributeError) as e:
            log.warning("inotify unavailable (%s): reading track files every %.0f s",
                        e, self.POLL_INTERVAL)
            self._ino = None
        for tf in files:
            init_track_file(tf)
            self.files[tf.name] = tf
            if self._ino is not None:
                directory = os.path.dirname(os.path.abspath(tf.file))
                try:
                    self._by_dir.setdefault(self._ino.watch(directory), []).append(tf)
                except OSError as e:
                    log.error("track_file %s: cannot watch %s: %s", tf.name, directory, e)
            self._update(tf, read_track_file(tf.file), force=True)
        if self._ino is None:
            self._poll = loop.call_later(self.POLL_INTERVAL, self._poll_all)

    def stop(self) -> None:
        if self._ino is not None:
            asyncio.get_running_loop().remove_reader(self._ino.fd)
            self._ino.close()
            self._ino = None
        if self._poll is not None:
            self._poll.cancel()

    def _update(self, tf: TrackFile, value: int, force: bool = False) -> None:
        if force or self.values.get(tf.name) != value:
            self.values[tf.name] = value
            self.on_value(tf.name, value)

    def _on_events(self) -> None:
        for wd, mask, name in self._ino.events():
            if mask & _Inotify.IN_Q_OVERFLOW:          # lost events: re-read everything
                for tf in self.files.values():
                    self._update(tf, read_track_file(tf.file))
                continue
            if mask & _Inotify.IN_ISDIR:
                continue
            for tf in self._by_dir.get(wd, ()):
                if os.path.basename(tf.file) == name:
                    gone = mask & (_Inotify.IN_DELETE | _Inotify.IN_MOVED_FROM)
                    self._update(tf, 0 if gone else read_track_file(tf.file))

    def _poll_all(self) -> None:
        for tf in self.files.values():
            self._update(tf, read_track_file(tf.file))
        self._poll = asyncio.get_running_loop().call_later(self.POLL_INTERVAL, self._poll_all)


# -- track_process --------------------------------------------------------------------

@dataclass
class VrrpTrackProcess:
    """A vrrp_track_process block."""
    name: str
    process: str | Sequence[str]            # "name [params...]" or already split
    param_match: str | None = None          # None | "initial" | "partial"
    weight: int = 1
    reverse: bool = False
    quorum: int = 1
    quorum_max: int | None = None
    fork_delay: float = 0.0
    terminate_delay: float = 0.0
    full_command: bool = False

    def __post_init__(self):
        words = split_command(self.process) if isinstance(self.process, str) else list(self.process)
        self._cmd, self._params = words[0], words[1:]
        self._by_cmdline = self.full_command or bool(self._params) or self.param_match is not None

    def matches(self, comm: str, cmdline: list[str] | None) -> bool:
        """comm: /proc/PID/comm; cmdline: argv (read only if needs_cmdline)."""
        if not self._by_cmdline:
            # The kernel keeps 15 characters of a process name.
            return comm == self._cmd[:15]
        if not cmdline or cmdline[0] != self._cmd:
            return False
        args, want = cmdline[1:], self._params
        if self.param_match is None:
            return not want or args == want
        if not want:
            return not args                           # param_match alone: no parameters
        if len(args) < len(want) or args[:len(want) - 1] != want[:-1]:
            return False
        last = args[len(want) - 1]
        return last == want[-1] if self.param_match == "partial" else last.startswith(want[-1])

    @property
    def needs_cmdline(self) -> bool:
        return self._by_cmdline

    def quorum_ok(self, count: int) -> bool:
        return count >= self.quorum and (self.quorum_max is None or count <= self.quorum_max)


def scan_processes(specs: Sequence[VrrpTrackProcess], proc: str = "/proc") -> list[int]:
    """Count running (non-zombie) processes matching each spec.  Blocking: run off-loop."""
    counts = [0] * len(specs)
    want_cmdline = any(s.needs_cmdline for s in specs)
    with os.scandir(proc) as entries:
        pids = [e.path for e in entries if e.name.isdigit()]
    for path in pids:
        try:
            with open(f"{path}/stat", "rb") as f:
                stat = f.read()
            lpar, rpar = stat.index(b"("), stat.rindex(b")")
            if stat[rpar + 2:rpar + 3] == b"Z":
                continue
            comm = stat[lpar + 1:rpar].decode(errors="surrogateescape")
            cmdline = None
            if want_cmdline:
                with open(f"{path}/cmdline", "rb") as f:
                    raw = f.read()
                cmdline = [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]]
        except (OSError, ValueError):
            continue            # it exited while we looked
        for i, spec in enumerate(specs):
            if spec.matches(comm, cmdline):
                counts[i] += 1
    return counts


class ProcessWatcher:
    """Polls /proc every `interval` for all vrrp_track_process entries at once.

    on_change(name, up) is called on the loop; the first scan reports every
    process at once, later changes wait fork_delay (going up) or
    terminate_delay (going down) and are dropped if they revert meanwhile.
    """

    def __init__(self, specs: Iterable[VrrpTrackProcess],
                 on_change: Callable[[str, bool], None], interval: float = 1.0):
        self.specs = list(specs)
        self.on_change = on_change
        self.interval = interval
        self.state: dict[str, bool] = {}
        self.counts: dict[str, int] = {}
        self._delayed: dict[str, asyncio.TimerHandle] = {}
        self._task: asyncio.Task | None = None
        self.scanned: asyncio.Future | None = None     # done after the first scan

    def start(self) -> None:
        if self.specs:
            loop = asyncio.get_running_loop()
            self.scanned = loop.create_future()
            self._task = loop.create_task(self._run())

    async def stop(self) -> None:
        for h in self._delayed.values():
            h.cancel()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                counts = await loop.run_in_executor(None, scan_processes, self.specs)
            except OSError as e:
                log.error("track_process: cannot scan /proc: %s", e)
            else:
                for spec, count in zip(self.specs, counts):
                    self.counts[spec.name] = count
                    self._observe(spec, spec.quorum_ok(count))
            if not self.scanned.done():
                self.scanned.set_result(None)
            await asyncio.sleep(self.interval)

    def _observe(self, spec: VrrpTrackProcess, up: bool) -> None:
        name = spec.name
        if name not in self.state:
            self._set(name, up)
            return
        pending = self._delayed.pop(name, None)
        if pending is not None:
            pending.cancel()
        if up == self.state[name]:
            return
        delay = spec.fork_delay if up else spec.terminate_delay
        if delay > 0:
            self._delayed[name] = asyncio.get_running_loop().call_later(delay, self._set, name, up)
        else:
            self._set(name, up)

    def _set(self, name: str, up: bool) -> None:
        self._delayed.pop(name, None)
        self.state[name] = up
        log.info("track_process %s is %s (%d running)", name, "up" if up else "down",
                 self.counts.get(name, 0))
        self.on_change(name, up)


# -- per-instance aggregation -----------------------------------------------------------

TRACK_KINDS = ("script", "interface", "file", "process")
# Weighted own tracks keepalived 2.2.7 removes from a sync-group member.
SYNC_DROPPED_KINDS = ("script", "file")


@dataclass(frozen=True, slots=True)
class Track:
    """One track_* entry of an instance or sync group."""
    kind: str                   # one of TRACK_KINDS
    name: str
    weight: int = 0
    reverse: bool = False

    def __post_init__(self):
        if self.kind not in TRACK_KINDS:
            raise ValueError(f"unknown track kind {self.kind!r}")


_KEYS: dict[tuple[str, str], tuple[str, str]] = {}


def track_key(kind: str, name: str) -> tuple[str, str]:
    """(kind, name) of a tracked object, one tuple for all the instances
    that track it (thousands of instances tracking their interface)."""
    key = (kind, name)
    return _KEYS.setdefault(key, key)


class _Values(dict):
    """A TrackedInstance's tracked values, shared by every instance with
    equal ones (thousands of instances tracking one interface): never
    changed in place, replaced by _values_with() / _values_without()."""
    __slots__ = ("__weakref__",)


_VALUES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _shared_values(items: dict) -> _Values:
    # The value's type is part of the key: True == 1 would merge a bool with an int.
    key = tuple(sorted((k, type(v), v) for k, v in items.items()))
    values = _VALUES.get(key)
    if values is None:
        values = _VALUES[key] = _Values(items)
    return values


NO_VALUES = _shared_values({})


def _values_with(values: dict, key: tuple[str, str], value) -> _Values:
    return _shared_values({**values, key: value})


def _values_without(values: dict, key: tuple[str, str]) -> _Values:
    return _shared_values({k: v for k, v in values.items() if k != key})


@functools.lru_cache(maxsize=None)
def _verdict(fault: bool, priority: int, pending: bool) -> Verdict:
    # Few distinct verdicts (priority is 1..255): one object each, shared.
    return Verdict(fault, priority, pending)


class TrackedInstance:
    """Combines an instance's tracked objects into (fault, priority, pending).

    The caller feeds states with update(kind, name, value): bool for
    script/interface/process, int for file.  An object not yet reported
    contributes nothing, except a weight-0 script which keeps the instance
    pending (keepalived holds it in INIT until its scripts have run).
    on_change(Verdict) fires whenever the verdict changes; or, with
    named=True, on_change(name, Verdict): one callable for all instances
    instead of a closure each.
    """

    __slots__ = ("name", "base_priority", "tracks", "on_change", "named", "_values", "verdict")

    def __init__(self, name: str, priority: int, tracks: Iterable[Track] = (),
                 group_tracks: Iterable[Track] = (), *, sync_group: bool = False,
                 sync_group_tracking_weight: bool = False,
                 on_change: Callable[..., None] | None = None, named: bool = False):
        self.name = name
        self.base_priority = priority
        own = tuple(tracks)
        if sync_group and not sync_group_tracking_weight:
            own = tuple(t for t in own if not (t.weight and t.kind in SYNC_DROPPED_KINDS))
        self.tracks: tuple[Track, ...] = own + tuple(group_tracks)
        self.on_change = on_change
        self.named = named
        self._values: dict[tuple[str, str], bool | int] = NO_VALUES    # shared, read-only
        self.verdict = self._evaluate()

    def update(self, kind: str, name: str, value: bool | int) -> Verdict:
        if self._values.get((kind, name)) == value and (kind, name) in self._values:
            return self.verdict             # nothing new (a re-dump, a reload)
        self.set_value(kind, name, value)
        verdict = self._evaluate()
        if kind == "file" and self._file_faults(name, value):
            # keepalived (vrrp_track.c) takes the file's old share out of its
            # total on the way into FAULT without recomputing the effective
            # priority: FAULT is reported with the priority from before.
            verdict = verdict._replace(priority=self.verdict.priority)
        return self._changed(verdict)

    def set_value(self, kind: str, name: str, value: bool | int) -> None:
        """Record a value without evaluating (the caller re-evaluates)."""
        self._values = _values_with(self._values, track_key(kind, name), value)

    def _file_faults(self, name: str, value) -> bool:
        """Whether this value of file `name` puts the instance in FAULT by its weight."""
        return any(t.kind == "file" and t.name == name and t.weight and
                   file_adjustment(int(value), t.weight, t.reverse) is None for t in self.tracks)

    def _changed(self, verdict: Verdict) -> Verdict:
        if verdict != self.verdict:
            self.verdict = verdict
            if self.on_change is not None:
                if self.named:
                    self.on_change(self.name, verdict)
                else:
                    self.on_change(verdict)
        return verdict

    def remove(self, kind: str, name: str) -> Verdict:
        """Stop tracking an object (keepalived drops a disabled script)."""
        self.tracks = tuple(t for t in self.tracks if not (t.kind == kind and t.name == name))
        self._values = _values_without(self._values, (kind, name))
        return self._changed(self._evaluate())

    def tracks_object(self, kind: str, name: str) -> bool:
        return any(t.kind == kind and t.name == name for t in self.tracks)

    def _evaluate(self) -> Verdict:
        adjustments, fault, pending = [], False, False
        for t in self.tracks:
            value = self._values.get((t.kind, t.name))
            if value is None:
                pending |= t.kind == "script" and t.weight == 0
                continue
            if t.kind == "file":
                adj = file_adjustment(int(value), t.weight, t.reverse)
            else:
                adj = bool_adjustment(bool(value), t.weight, t.reverse)
            if adj is None:
                fault = True
            else:
                adjustments.append(adj)
        return _verdict(fault, effective_priority(self.base_priority, adjustments), pending)
