"""track_process (vrrp_track_process): which running processes match a
block, counting them in /proc, and the watcher that reports each block up
(its quorum is met) or down.

keepalived learns of processes through the netlink proc connector; vrrpd
scans /proc on an interval in a worker thread, which needs no privileges
beyond reading /proc and cannot lose events.
"""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Callable, Iterable, Sequence

from vrrpd.config.model import TrackProcess

log = logging.getLogger(__name__)


class ProcessMatch:
    """The process test of one vrrp_track_process block, prepared once for
    the many /proc entries it is applied to."""

    __slots__ = ("spec", "_cmd", "_params", "needs_cmdline")

    def __init__(self, spec: TrackProcess):
        self.spec = spec
        words = list(spec.process)
        self._cmd = words[0] if words else ""
        self._params = words[1:]
        # Matched by the command line (read from /proc/PID/cmdline) rather than
        # the kernel's process name (keepalived: full_command, parameters, param_match).
        self.needs_cmdline = (spec.full_command or bool(self._params)
                              or spec.param_match is not None)

    def matches(self, comm: str, cmdline: list[str] | None) -> bool:
        """comm: /proc/PID/comm; cmdline: argv (read only if needs_cmdline)."""
        if not self.needs_cmdline:
            # The kernel keeps 15 characters of a process name.
            return comm == self._cmd[:15]
        if not cmdline or cmdline[0] != self._cmd:
            return False
        args, want = cmdline[1:], self._params
        param_match = self.spec.param_match
        if param_match is None:
            return not want or args == want
        if not want:
            return not args                           # param_match alone: no parameters
        if len(args) < len(want) or args[:len(want) - 1] != want[:-1]:
            return False
        last = args[len(want) - 1]
        return last == want[-1] if param_match == "partial" else last.startswith(want[-1])

    def quorum_ok(self, count: int) -> bool:
        spec = self.spec
        return count >= spec.quorum and (spec.quorum_max is None or count <= spec.quorum_max)


def scan_processes(matches: Sequence[ProcessMatch], proc: str = "/proc") -> list[int]:
    """Count running (non-zombie) processes passing each test.  Blocking: run off-loop."""
    counts = [0] * len(matches)
    want_cmdline = any(m.needs_cmdline for m in matches)
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
        for i, m in enumerate(matches):
            if m.matches(comm, cmdline):
                counts[i] += 1
    return counts


class ProcessWatcher:
    """Polls /proc every `interval` for all vrrp_track_process blocks at once.

    on_change(name, up) is called on the loop; the first scan reports every
    process at once, later changes wait fork_delay (going up) or
    terminate_delay (going down) and are dropped if they revert meanwhile.
    """

    def __init__(self, specs: Iterable[TrackProcess],
                 on_change: Callable[[str, bool], None], interval: float = 1.0):
        self.matches = [ProcessMatch(s) for s in specs]
        self.on_change = on_change
        self.interval = interval
        self.state: dict[str, bool] = {}
        self.counts: dict[str, int] = {}
        self._delayed: dict[str, asyncio.TimerHandle] = {}
        self._task: asyncio.Task | None = None
        self.scanned: asyncio.Future | None = None     # done after the first scan

    def start(self) -> None:
        if self.matches:
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
        scanned = self.scanned
        assert scanned is not None          # made by start()
        while True:
            try:
                counts = await loop.run_in_executor(None, scan_processes, self.matches)
            except OSError as e:
                log.error("track_process: cannot scan /proc: %s", e)
            else:
                for m, count in zip(self.matches, counts):
                    self.counts[m.spec.name] = count
                    self._observe(m.spec, m.quorum_ok(count))
            if not scanned.done():
                scanned.set_result(None)
            await asyncio.sleep(self.interval)

    def _observe(self, spec: TrackProcess, up: bool) -> None:
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
