"""Run vrrpd or keepalived on a lab host (a network namespace) and watch it.

Both daemons get the same keepalived.conf and write their transitions to a
notify fifo (`vrrp_notify_fifo`), read here by a thread that stamps each
line with time.monotonic() on arrival.  Shared by vrrpd-lab and the tests.
"""
from __future__ import annotations

import bisect
import os
import re
import shutil
import signal
import subprocess
import tempfile
import sys
import threading
import time

from vrrpd.core.leftovers import state_path
from vrrpd.lab.net import Netns, wait_for
from vrrpd.scripts.notify import enlarge_pipe

VENV_BIN = os.path.dirname(sys.executable)
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
FIFO_LINE = re.compile(r'^(INSTANCE|GROUP) "([^"]+)" (\S+) (\d+)$')
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Fifo lines that report an event, not a state change (keepalived: vrrp_notify.c).
EVENTS = {"MASTER_RX_LOWER_PRI", "MASTER_PRIORITY", "BACKUP_PRIORITY"}


def default_vrrpd() -> str:
    """The vrrpd beside the running interpreter (a venv), else the one on PATH."""
    here = os.path.join(VENV_BIN, "vrrpd")
    return here if os.access(here, os.X_OK) else (shutil.which("vrrpd") or "vrrpd")


class FifoReader(threading.Thread):
    """Reads a notify fifo; lines are parsed on arrival so that polling stays cheap at scale."""

    def __init__(self, path: str):
        super().__init__(daemon=True)
        if not os.path.exists(path):
            os.mkfifo(path, 0o600)
        self.path = path
        # O_RDWR: never blocks on open and never sees EOF when a writer restarts.
        self.fd = os.open(path, os.O_RDWR)
        # Either daemon's takeover of thousands of lines fits in the pipe: a
        # moment of this reader's lateness is not what the lab measures.
        enlarge_pipe(self.fd)
        self.lines: list[tuple[float, str]] = []
        self._events: list[tuple[float, str, str, str, int]] = []
        self.lock = threading.Lock()
        self.start()

    def run(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.monotonic()
            buf += chunk
            *done, buf = buf.split(b"\n")
            with self.lock:
                for raw in done:
                    line = raw.decode(errors="replace")
                    self.lines.append((now, line))
                    m = FIFO_LINE.match(line)
                    if m:
                        self._events.append((now, m[1], m[2], m[3], int(m[4])))

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def events(self, since: float = 0.0) -> list[tuple[float, str, str, str, int]]:
        """(time, kind, name, state, priority) for each well-formed line at or after `since`."""
        with self.lock:
            start = bisect.bisect_left(self._events, (since,))
            return self._events[start:]


class DaemonProc:
    """One daemon on one namespace host.

    binary: the vrrpd (or keepalived) executable; default: the vrrpd next to
    sys.executable, else the one on PATH (keepalived: Debian's).  extra_args:
    more command-line options for it.
    """

    def __init__(self, ns: Netns, kind: str, config_text: str, workdir: str, tag: str = "",
                 binary: str | None = None, detail: bool = True, extra_args: tuple = ()):
        if kind not in ("vrrpd", "keepalived"):
            raise ValueError(f"unknown daemon {kind!r}")
        self.ns, self.kind = ns, kind
        self.detail = detail            # -D: keepalived's detailed log (vrrpd: DEBUG)
        self.extra_args = list(extra_args)
        self.binary = binary or (default_vrrpd() if kind == "vrrpd" else KEEPALIVED)
        base = os.path.join(workdir, f"{ns.name}{tag}")
        self.ctl_path = os.path.join(tempfile.gettempdir(), f"vrrpd-{ns.name}{tag}.ctl")
        self.conf = base + ".conf"
        self.fifo_path = base + ".fifo"
        self.log_path = base + f".{kind}.log"
        self.pidfile = base + ".pid"
        config_text = config_text.replace("@FIFO@", self.fifo_path)
        with open(self.conf, "w") as f:
            f.write(config_text)
        self.fifo = FifoReader(self.fifo_path)
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def argv(self) -> list[str]:
        if self.kind == "vrrpd":
            # Each lab daemon gets its own control socket (a short path: the
            # limit is 108 bytes), not the shared default under /run/vrrpd.
            return [self.binary, "-l", *self._detail(), "-f", self.conf,
                    "--control-socket", self.ctl_path, *self.extra_args]
        # Unique pid files: keepalived refuses to start when another copy's exist.
        # -G: its log goes to the console (our log file) only, as vrrpd's does.  keepalived
        # also logs to syslog by default, and where no syslog daemon listens on /dev/log,
        # glibc's LOG_CONS writes each line to /dev/console instead: a serial console's
        # write blocks the VRRP process (n_tty_write) at every line of a takeover.
        return [self.binary, "-n", "-l", "-G", *self._detail(), "--vrrp", "-f", self.conf,
                "-p", self.pidfile, "-r", self.pidfile + ".vrrp", "-c", self.pidfile + ".chk",
                *self.extra_args]

    def _detail(self) -> list[str]:
        return ["-D"] if self.detail else []

    def start(self) -> "DaemonProc":
        self.started = time.monotonic()
        # After a kill -9 keepalived's pid files remain, and it refuses to start over them.
        for suffix in ("", ".vrrp", ".chk"):
            try:
                os.unlink(self.pidfile + suffix)
            except FileNotFoundError:
                pass
        with open(self.log_path, "ab") as log:
            self.proc = self.ns.popen(*self.argv(), stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def state(self, name: str) -> str | None:
        return self.states().get(name)

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> float:
        """Wait until `name` is in `state`; returns the fifo line's arrival time."""
        def found():
            self.check_alive()
            for t, kind, n, st, _ in reversed(self.fifo.events(self.started)):
                if kind == "INSTANCE" and n == name and st not in EVENTS:
                    return t if st == state else None
            return None
        return wait_for(found, timeout, what=f"{self.kind} {name} {state}\n{self.log_tail()}")

    def states(self) -> dict[str, str]:
        """State of each instance as told by this run of the daemon (the fifo outlives restarts)."""
        return {n: st for _, k, n, st, _ in self.fifo.events(self.started)
                if k == "INSTANCE" and st not in EVENTS}

    def wait_all(self, names, state: str, timeout: float = 60.0, progress=None) -> None:
        """Wait until every instance in `names` is in `state` (progress(n_done) is called)."""
        names = set(names)

        def done():
            self.check_alive()
            states = self.states()
            n = sum(1 for x in names if states.get(x) == state)
            if progress:
                progress(n)
            return n == len(names)
        wait_for(done, timeout, interval=0.05, what=f"{self.kind}: all {len(names)} {state}")

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.kind} exited {self.proc.returncode}:\n{self.log_tail()}")

    def signal(self, sig: int) -> float:
        """Send sig; returns the time.monotonic() just before it was sent."""
        t = time.monotonic()
        if self.kind == "keepalived" and sig == signal.SIGKILL:
            # keepalived's VRRP work is in a child process: kill the whole group,
            # as a crash of the machine would.
            os.killpg(self._popen.pid, sig)
        else:
            os.kill(self.main_pid(), sig)
        return t

    @property
    def _popen(self) -> subprocess.Popen:
        if self.proc is None:
            raise RuntimeError(f"{self.kind} was not started")
        return self.proc

    def main_pid(self) -> int:
        # ip netns exec execs the daemon, so the Popen pid is the daemon's.
        return self._popen.pid

    def pids(self) -> list[int]:
        """The daemon and all its descendants (keepalived: parent + VRRP child)."""
        return process_tree(self.main_pid())

    def vrrp_pid(self) -> int:
        """The process doing the VRRP work: keepalived's VRRP child, or vrrpd itself."""
        if self.kind == "keepalived":
            try:
                with open(self.pidfile + ".vrrp") as f:
                    return int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        return self.main_pid()

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self._popen.wait(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the daemon's process group and reap it; the fifo stays open."""
        if self.alive():
            try:
                os.killpg(self._popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._popen.wait(10)

    def stop(self) -> None:
        self.kill()
        self.fifo.close()
        # Left behind by a kill -9: the control socket and vrrpd's record of
        # the VIPs it held (vrrpd.core.leftovers), whose namespace is gone.
        for path in filter(None, (self.ctl_path, state_path(self.ctl_path))):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def vips_on(ns: Netns, dev: str = "eth0") -> set[str]:
    out = ns.run("ip", "-o", "addr", "show", "dev", dev).stdout
    return {line.split()[3] for line in out.splitlines()}


# -- /proc accounting (steady-state CPU and memory) ------------------------------------

def process_tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    # Field 4 (ppid) follows "(comm)", which may contain spaces.
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        tree += frontier
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
