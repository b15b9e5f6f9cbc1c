"""vrrp_script: keepalived's rise/fall counter and the tracker that runs a
script on its interval and reports it up or down."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from vrrpd.config.model import VrrpScript
from vrrpd.scripts.runner import Script, ScriptRunner

log = logging.getLogger(__name__)


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


class VrrpScriptTracker:
    """Runs one vrrp_script every `interval` and reports up/down changes.

    `vs` is the configured block (interval, timeout, rise, fall, init_fail
    are read from it); `script` is its command as ScriptRunner.prepare()
    accepted it, None when refused (the script is disabled).  A run still
    going when the next is due is skipped (keepalived), and a run longer
    than the timeout is killed (process group) and counts as a failure.
    on_change(name, up) is called on the loop.
    """

    def __init__(self, runner: ScriptRunner, vs: VrrpScript, script: Script | None,
                 on_change: Callable[[str, bool], None]):
        self.runner, self.vs, self.script, self.on_change = runner, vs, script, on_change
        self.state = RiseFall(vs.rise, vs.fall, vs.init_fail)
        self.skipped = 0
        self._running = False
        self._timer: asyncio.TimerHandle | None = None
        self._next = 0.0

    @property
    def up(self) -> bool | None:
        return self.state.up

    def start(self) -> None:
        if self.script is None:
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
        assert self.script is not None      # start() runs no disabled script
        if self._running:
            self.skipped += 1
            log.debug("vrrp_script %s still running; skipping this run", self.vs.name)
        else:
            self._running = True
            self.runner.start(self.script, timeout=self.vs.effective_timeout
                              ).add_done_callback(self._done)
        # Fixed rate; after a stall, resume from now instead of bursting.
        self._next = max(self._next + self.vs.interval, loop.time())
        self._timer = loop.call_at(self._next, self._tick)

    def _done(self, fut: asyncio.Future) -> None:
        self._running = False
        changed = self.state.record(fut.result().ok)
        if changed is not None:
            log.info("vrrp_script %s %s", self.vs.name, "succeeded" if changed else "failed")
            self.on_change(self.vs.name, changed)
