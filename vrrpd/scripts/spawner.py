"""The script spawner: a small process of its own that forks, execs, times
out and reaps the daemon's scripts.

Why a process and not a thread: subprocess.Popen spends much Python per
script holding the GIL; on a worker thread that competes with the event
loop, and with many hanging track scripts adverts go out late (figures:
bench/results/NOTES.md).
Here it has its own interpreter and GIL; the daemon only exchanges a few
small messages per script.  The process is exec'd afresh (not a fork of the
daemon), so it holds none of the daemon's memory or sockets.

Protocol: one marshal'd tuple per SOCK_SEQPACKET message.
  daemon -> spawner: (RUN, id, argv, uid, gid, timeout)   timeout <= 0: none
                     (STOP, id, grace)   SIGTERM the group, SIGKILL after grace
  spawner -> daemon: (STARTED, id, pid) | (FAILED, id, why)
                     (TIMEDOUT, id)      the timeout's SIGTERM was sent
                     (EXITED, id, returncode)   returncode: status or -signal
Requests run in arrival order, so scripts start in the order asked for
(keepalived's notify ordering).  EOF from the daemon (it exited, or was
killed) ends the spawner; scripts still running are left to finish, as
keepalived's are when it dies.
"""
from __future__ import annotations

import asyncio
import collections
import errno
import heapq
import marshal
import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from typing import Any

RUN, STOP, STARTED, FAILED, TIMEDOUT, EXITED = range(6)
KILL_DELAY = 2.0            # keepalived: SIGKILL the group 2 s after the timeout SIGTERM
REPLIES_PER_WAKEUP = 8
MAX_MESSAGE = 1 << 16       # under the socket buffer: a larger request is refused


def killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass          # the whole group is already gone


def spawn(argv: list[str], uid: int, gid: int) -> subprocess.Popen:
    """fork+exec one script: no shell, own session and process group (a
    timeout kills everything it forked), stdio on /dev/null (keepalived's
    set_std_fd(): a script that floods stdout costs nothing)."""
    kw: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    if uid != os.geteuid() or gid != os.getegid():
        # keepalived: setgid, setgroups(1, &gid), setuid in the child.
        kw.update(user=uid, group=gid, extra_groups=[gid])
    try:
        return subprocess.Popen(argv, **kw)
    except OSError as e:
        if e.errno != errno.ENOEXEC:
            raise
        # No #! line: keepalived then runs it through /bin/sh (system()).
        return subprocess.Popen(["/bin/sh", *argv], **kw)


class _Child:
    __slots__ = ("id", "proc", "pidfd")

    def __init__(self, id_: int, proc: subprocess.Popen, pidfd: int):
        self.id, self.proc, self.pidfd = id_, proc, pidfd


class Server:
    """The spawner process's loop: requests from the daemon, pidfds of the
    children, and a heap of kill timers."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sel = selectors.DefaultSelector()
        self.sel.register(sock, selectors.EVENT_READ, None)
        self.children: dict[int, _Child] = {}
        self.timers: list = []        # (when, seq, child id or None, signal, pgid)
        self._seq = 0

    def serve(self) -> None:
        while True:
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            for key, _ in self.sel.select(timeout):
                if key.data is None:
                    if not self._requests():
                        return
                else:
                    self._reap(key.data)
            self._fire_timers()

    def _send(self, *msg) -> None:
        try:
            self.sock.send(marshal.dumps(msg))
        except OSError:
            pass                  # the daemon is gone: EOF will end us

    def _requests(self) -> bool:
        """Drain the socket; False at EOF."""
        while True:
            try:
                data = self.sock.recv(MAX_MESSAGE, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not data:
                return False
            msg = marshal.loads(data)
            if msg[0] == RUN:
                self._run(*msg[1:])
            elif msg[0] == STOP:
                self._stop(*msg[1:])

    def _run(self, id_: int, argv: list[str], uid: int, gid: int, timeout: float) -> None:
        try:
            proc = spawn(argv, uid, gid)
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            self._send(FAILED, id_, str(e))
            return
        child = _Child(id_, proc, os.pidfd_open(proc.pid))
        self.children[id_] = child
        self.sel.register(child.pidfd, selectors.EVENT_READ, child)
        self._send(STARTED, id_, proc.pid)
        if timeout > 0:
            self._at(timeout, id_, signal.SIGTERM, proc.pid)

    def _stop(self, id_: int, grace: float) -> None:
        child = self.children.get(id_)
        if child is not None:
            killpg(child.proc.pid, signal.SIGTERM)
            self._at(grace, id_, signal.SIGKILL, child.proc.pid)

    def _at(self, delay: float, id_: int | None, sig: int, pgid: int) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._seq, id_, sig, pgid))

    def _fire_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, id_, sig, pgid = heapq.heappop(self.timers)
            if id_ is None:
                killpg(pgid, sig)          # the group outlives its leader: no id needed
                continue
            if id_ not in self.children:
                continue                   # already exited
            killpg(pgid, sig)
            if sig == signal.SIGTERM:      # the script's own timeout
                self._send(TIMEDOUT, id_)
                # SIGKILL the group later even if the leader obeys: its children may not.
                self._at(KILL_DELAY, None, signal.SIGKILL, pgid)

    def _reap(self, child: _Child) -> None:
        if child.proc.poll() is None:       # spurious wakeup
            return
        self.sel.unregister(child.pidfd)
        os.close(child.pidfd)
        del self.children[child.id]
        self._send(EXITED, child.id, child.proc.returncode)


class Spawner:
    """The daemon's end: starts the spawner process, sends requests without
    ever blocking the loop (a backlog waits in a queue for the socket to
    drain), and hands each reply to `on_reply(msg)`.  `on_lost()` is called
    once if the spawner goes away while we still want it."""

    def __init__(self, loop, on_reply, on_lost):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vrrpd.scripts.spawner", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.sock, self.loop = ours, loop
        self._on_reply, self._on_lost = on_reply, on_lost
        self._backlog: collections.deque[bytes] = collections.deque()
        self._closed = False
        loop.add_reader(ours.fileno(), self._readable)

    def send(self, *msg) -> None:
        """ValueError if the request is too large to send."""
        data = marshal.dumps(msg)
        if len(data) > MAX_MESSAGE:
            raise ValueError(f"request of {len(data)} bytes (at most {MAX_MESSAGE})")
        if self._backlog:
            self._backlog.append(data)
            return
        try:
            self.sock.send(data)
        except BlockingIOError:
            self._backlog.append(data)
            self.loop.add_writer(self.sock.fileno(), self._writable)
        except OSError:
            self._lose()

    def _writable(self) -> None:
        while self._backlog:
            try:
                self.sock.send(self._backlog[0])
            except BlockingIOError:
                return
            except OSError:
                self._lose()
                return
            self._backlog.popleft()
        self.loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        # A few replies per wake-up: each can move the priority of many
        # instances (100 track scripts timing out together = 1,000 priority
        # changes); the loop's advert timer gets its turn in between.
        for _ in range(REPLIES_PER_WAKEUP):
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lose()
                return
            self._on_reply(marshal.loads(data))

    def _lose(self) -> None:
        if not self._closed:
            self.close()
            self._on_lost()

    def close(self) -> None:
        """Closing our end is the spawner's signal to exit."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        if self._backlog:
            self.loop.remove_writer(self.sock.fileno())
        self.sock.close()

    async def wait_closed(self, timeout: float = 1.0) -> None:
        """Reap the spawner process (it exits as soon as it sees EOF)."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)


def _ignore_until_exec(signum, frame) -> None:
    """A handler, not SIG_IGN: handled signals are reset at exec, ignored
    ones would be inherited by the scripts (which must die of SIGTERM)."""


def main(argv: list[str]) -> int:
    # The daemon ends us by closing its end; signals meant for it (Ctrl-C to
    # the foreground group, SIGHUP) must not take the spawner with them.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, _ignore_until_exec)
    # Blocking sends (the daemon always reads; a lost reply would leave a
    # script's result pending forever), non-blocking reads (MSG_DONTWAIT).
    Server(socket.socket(fileno=int(argv[0]))).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
