"""State-change notifications: notify_* scripts, the generic notify, notify fifos.

Per transition, in this order (keepalived's vrrp_notify.c, measured on 2.2.7):
1. notify_<state> is started with its own configured arguments;
2. the generic `notify` is started with its configured arguments plus four:
   INSTANCE|GROUP, name, state, priority (always 0 for a GROUP);
3. one line per fifo: `INSTANCE "VI_1" MASTER 100`;
4. the SMTP alert, if enabled.
Scripts are started in that order but never waited for (keepalived does not
wait either, so their completion order is a race), except notify_stop at
shutdown, which the daemon may wait up to a second for.

A fifo is created if missing, opened O_RDWR|O_NONBLOCK (so opening never
waits for a reader and a reader that restarts loses nothing already
written).  When the reader is slow or absent and the pipe is full, lines are
queued up to a bound and then dropped -- counted and logged, where keepalived
drops silently.  The optional fifo script is started with the fifo's path as
its last argument and stopped at shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import stat
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from vrrpd._effects import FifoGate

from vrrpd.scripts.runner import Script, ScriptRunner

log = logging.getLogger(__name__)

STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "DELETED")
KINDS = ("INSTANCE", "GROUP")
STOP_WAIT = 1.0                  # keepalived waits up to 1 s for notify_stop at shutdown
# A notify fifo's pipe holds a takeover of thousands of lines (~30 bytes each) while its
# reader catches up, rather than the default 64 kB: lines beyond what the pipe takes wait
# in the daemon's queue (bounded, the rest dropped) and in the loop's turns.
FIFO_PIPE_SIZE = 1 << 20


def enlarge_pipe(fd: int) -> None:
    """Make the pipe behind `fd` FIFO_PIPE_SIZE bytes, where the system allows
    (above pipe-max-size it takes CAP_SYS_RESOURCE)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, FIFO_PIPE_SIZE)


@dataclass(slots=True)
class NotifyScripts:
    """The notify scripts of one vrrp_instance or vrrp_sync_group (keepalived keywords)."""
    notify_master: Script | None = None
    notify_backup: Script | None = None
    notify_fault: Script | None = None
    notify_stop: Script | None = None
    notify_deleted: Script | None = None
    notify: Script | None = None
    notify_master_rx_lower_pri: Script | None = None

    def for_state(self, state: str) -> Script | None:
        return getattr(self, f"notify_{state.lower()}")


_held: list | None = None         # fifos holding lines, inside coalesced()


@contextlib.contextmanager
def coalesced():
    """Fifo lines written inside go out at the end, in as few writes as
    PIPE_BUF allows: a failover of thousands of instances is thousands of
    lines, and one write per line would be a real part of its cost."""
    global _held
    if _held is not None:             # nested: the outer one writes
        yield
        return
    _held = []
    try:
        yield
    finally:
        fifos, _held = _held, None
        for f in fifos:
            f._release()


def fifo_line(kind: str, name: str, state: str, priority: int) -> str:
    """keepalived's `%s "%s" %s %d\\n`."""
    return f'{kind} "{name}" {state} {priority}\n'


class NotifyFifo:
    """One notify fifo: never blocks the loop; a bounded queue; drops are counted."""

    def __init__(self, path: str, script: Script | None = None, *,
                 uid: int | None = None, gid: int | None = None, max_queue: int = 10_000):
        self.path = path
        self.script = script
        self.uid, self.gid = uid, gid
        self.max_queue = max_queue
        self.lines = 0           # lines handed to the kernel
        self.drops = 0           # lines lost because the queue was full
        self.errors = 0          # write errors other than "pipe full"
        self._fd = -1
        self._created = False
        self._queue: deque[bytes] = deque()
        self._dropping = 0       # drops in the current backlog episode, for one log line each
        self._script_run: asyncio.Future | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._held: list[str] = []      # lines written inside coalesced()
        # The netlink thread's view, for the lines it writes after a takeover's VIPs.
        self.gate: FifoGate | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    def open(self, runner: ScriptRunner | None = None) -> bool:
        """Create (if missing) and open the fifo, starting its script first."""
        self._loop = asyncio.get_running_loop()
        try:
            os.mkfifo(self.path, 0o644)
            self._created = True
            if self.uid is not None or self.gid is not None:
                os.chown(self.path, -1 if self.uid is None else self.uid,
                         -1 if self.gid is None else self.gid)
        except FileExistsError:
            pass
        except OSError as e:
            log.error("cannot create notify fifo %s: %s", self.path, e)
            return False
        if self.script is not None and runner is not None:
            # keepalived passes the fifo's name as the script's last parameter.
            self._script_run = runner.start(self.script, self.path)
            self._script_run.add_done_callback(self._script_exited)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(f"{self.path} is not a fifo")
            enlarge_pipe(fd)
        except OSError as e:
            log.error("cannot open notify fifo %s: %s", self.path, e)
            self._unlink()
            return False
        self._fd = fd
        self.gate = FifoGate(fd)
        return True

    def _script_exited(self, fut: asyncio.Future) -> None:
        log.warning("notify fifo script for %s ended: %s", self.path, fut.result())

    def write_line(self, line: str) -> None:
        if self._fd < 0:
            return
        if _held is not None:                 # inside coalesced(): written at its end
            if not self._held:
                _held.append(self)
            self._held.append(line)
            return
        self._write(line.encode())

    def write_blocks(self, blocks: list[bytes]) -> None:
        """Whole lines, each block at most PIPE_BUF bytes (one write lands whole)."""
        if self._fd < 0:
            return
        if _held is not None and self._held:    # keep order behind held lines
            self._release()
        for block in blocks:
            if self._queue or not self._write_whole([block]):
                for line in block.splitlines(keepends=True):   # the reader is behind
                    self._write(line)
            else:
                self.lines += block.count(b"\n") - 1     # _write_whole counted one

    def _release(self) -> None:
        """Write the lines held by coalesced(), as many per write as fit in
        PIPE_BUF: such a write lands whole or not at all, so lines never tear."""
        lines, self._held = [line.encode() for line in self._held], []
        start = 0
        while start < len(lines) and self._fd >= 0:
            end, size = start + 1, len(lines[start])
            while end < len(lines) and size + len(lines[end]) <= select.PIPE_BUF:
                size += len(lines[end])
                end += 1
            if self._queue or end - start == 1 or not self._write_whole(lines[start:end]):
                for data in lines[start:end]:     # the reader is behind: bounded queue
                    self._write(data)
            start = end

    def take(self, followup) -> None:
        """A vrrpd._effects.Followup is through: count the lines the netlink
        thread wrote here and write (or queue) those it left to the loop."""
        if self.gate is None:
            return
        written, errors, left = followup.fifo_take(self.gate)
        self.lines += written
        if errors:
            self.errors += errors
            log.error("notify fifo %s: %d writes failed", self.path, errors)
        if left is not None:
            self.write_blocks(left)
            self.gate.settle()

    def _write_whole(self, lines: list[bytes]) -> bool:
        try:
            os.write(self._fd, b"".join(lines))
        except BlockingIOError:
            return False
        except OSError as e:
            self.errors += 1
            log.error("notify fifo %s: write failed: %s", self.path, e)
            return True
        self.lines += len(lines)
        return True

    def _write(self, data: bytes) -> None:
        if self._queue:                       # keep order behind what is already waiting
            self._enqueue(data)
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self.errors += 1
            log.error("notify fifo %s: write failed: %s", self.path, e)
            return
        if n == len(data):
            self.lines += 1
        else:
            self._enqueue(data[n:])

    def _enqueue(self, data: bytes) -> None:
        if len(self._queue) >= self.max_queue:
            self.drops += 1
            if not self._dropping:
                log.warning("notify fifo %s: reader too slow, queue of %d full; dropping events",
                            self.path, self.max_queue)
            self._dropping += 1
            return
        if not self._queue:
            assert self._loop is not None and self.gate is not None    # by open()
            self._loop.add_writer(self._fd, self._flush)
            self.gate.set_blocked(True)
        self._queue.append(data)

    def _flush(self) -> None:
        while self._queue:
            data = self._queue[0]
            try:
                n = os.write(self._fd, data)
            except BlockingIOError:
                return
            except OSError as e:
                self.errors += 1
                log.error("notify fifo %s: write failed: %s", self.path, e)
                n = len(data)                 # give up on this line
            if n < len(data):
                self._queue[0] = data[n:]     # only lines over PIPE_BUF can be split
                return
            self._queue.popleft()
            self.lines += 1
        assert self._loop is not None and self.gate is not None    # by open()
        self._loop.remove_writer(self._fd)
        self.gate.set_blocked(False)
        if self._dropping:
            log.warning("notify fifo %s: reader caught up; %d events were dropped",
                        self.path, self._dropping)
            self._dropping = 0

    async def close(self, runner: ScriptRunner | None = None) -> None:
        """Unlink (if we made it) first, so a reader loop cannot reopen it; then close."""
        self._unlink()
        if self._fd >= 0:
            if self._queue:
                assert self._loop is not None   # by open()
                self._loop.remove_writer(self._fd)
                self._queue.clear()
            if self.gate is not None:
                self.gate.close()
            os.close(self._fd)
            self._fd = -1
        if self._script_run is not None and not self._script_run.done() and runner is not None:
            self._script_run.remove_done_callback(self._script_exited)
            await runner.stop(self._script_run, grace=STOP_WAIT)

    def _unlink(self) -> None:
        if self._created:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self._created = False


class Notifier:
    """Runs the notifications of every transition, in order, without blocking."""

    def __init__(self, runner: ScriptRunner, fifos: Iterable[NotifyFifo] = (), smtp=None, *,
                 timeout: float | None = None, kill_on_stop: bool = False):
        """timeout, kill_on_stop: notify_script_timeout / notify_script_kill_on_stop
        (vrrpd extensions; keepalived neither limits nor stops its notify scripts)."""
        self.runner = runner
        self.fifos = list(fifos)
        self.smtp = smtp                      # vrrpd.scripts.smtp.SmtpAlerter or None
        self.timeout = timeout
        self.kill_on_stop = kill_on_stop
        self._stops: list[asyncio.Future] = []

    def open(self) -> None:
        self.fifos = [f for f in self.fifos if f.open(self.runner)]

    def notify(self, kind: str, name: str, state: str, priority: int,
               scripts: NotifyScripts | None = None, *, smtp_alert: bool = False,
               fifo: bool = True) -> None:
        """A transition of an INSTANCE or GROUP to MASTER/BACKUP/FAULT/STOP/DELETED.
        fifo=False: the caller writes the fifo line itself (in a batch)."""
        if kind not in KINDS or state not in STATES:
            raise ValueError(f"bad notification {kind} {state}")
        if kind == "GROUP":
            priority = 0                      # keepalived: a group's priority is always 0
        if scripts is not None:
            # keepalived waits for STOP scripts at shutdown (then kills them) and
            # leaves the others to finish (vrrp_notify.c: system_call_script vs notify_exec).
            stop = state == "STOP"
            for script, args in ((scripts.for_state(state), ()),
                                 (scripts.notify, (kind, name, state, str(priority)))):
                if script is not None:
                    fut = self.runner.start(script, *args, timeout=self.timeout,
                                            detached=not (stop or self.kill_on_stop))
                    if stop:
                        self._stops.append(fut)
        if fifo:
            self._to_fifos(fifo_line(kind, name, state, priority))
        if smtp_alert and self.smtp is not None and state in ("MASTER", "BACKUP", "FAULT"):
            self.smtp.alert(kind, name, state)

    def master_rx_lower_pri(self, name: str, priority: int,
                            scripts: NotifyScripts | None = None) -> None:
        """A master received a lower-priority advert (keepalived's MASTER_RX_LOWER_PRI)."""
        if scripts is not None and scripts.notify_master_rx_lower_pri is not None:
            self.runner.start(scripts.notify_master_rx_lower_pri, timeout=self.timeout,
                              detached=not self.kill_on_stop)
        self._to_fifos(fifo_line("INSTANCE", name, "MASTER_RX_LOWER_PRI", priority))

    def priority_changed(self, name: str, state: str, priority: int) -> None:
        """notify_priority_changes: MASTER_PRIORITY / BACKUP_PRIORITY fifo lines."""
        self._to_fifos(fifo_line("INSTANCE", name, f"{state}_PRIORITY", priority))

    def _to_fifos(self, line: str) -> None:
        for f in self.fifos:
            f.write_line(line)

    async def shutdown(self, stop_wait: float = STOP_WAIT) -> None:
        """After the STOP notifications: wait for their scripts (bounded), close the fifos."""
        pending = [f for f in self._stops if not f.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=stop_wait)
            if late:
                log.warning("%d notify_stop script(s) still running after %.1f s",
                            len(late), stop_wait)
        for f in self.fifos:
            await f.close(self.runner)
