"""Run vrrpd or keepalived on a namespace host and watch its state.

Both daemons get the same keepalived.conf and write their transitions to a
notify fifo (`vrrp_notify_fifo`), read here by a thread that stamps each
line with time.monotonic() on arrival.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

from netns import Netns, wait_for

VENV_BIN = os.path.dirname(sys.executable)
KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"
FIFO_LINE = re.compile(r'^(INSTANCE|GROUP) "([^"]+)" (\S+) (\d+)$')


class FifoReader(threading.Thread):
    def __init__(self, path: str):
        super().__init__(daemon=True)
        if not os.path.exists(path):
            os.mkfifo(path, 0o600)
        self.path = path
        # O_RDWR: never blocks on open and never sees EOF when a writer restarts.
        self.fd = os.open(path, os.O_RDWR)
        self.lines: list[tuple[float, str]] = []
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
                self.lines.extend((now, line.decode()) for line in done)

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass

    def events(self) -> list[tuple[float, str, str, str, int]]:
        """(time, kind, name, state, priority) for each well-formed line."""
        out = []
        with self.lock:
            lines = list(self.lines)
        for t, line in lines:
            m = FIFO_LINE.match(line)
            if m:
                out.append((t, m[1], m[2], m[3], int(m[4])))
        return out


class DaemonProc:
    """One daemon on one namespace host."""

    def __init__(self, ns: Netns, kind: str, config_text: str, workdir: str, tag: str = ""):
        assert kind in ("vrrpd", "keepalived")
        self.ns, self.kind = ns, kind
        base = os.path.join(workdir, f"{ns.name}{tag}")
        self.conf = base + ".conf"
        self.fifo_path = base + ".fifo"
        self.log_path = base + f".{kind}.log"
        self.pidfile = base + ".pid"
        config_text = config_text.replace("@FIFO@", self.fifo_path)
        with open(self.conf, "w") as f:
            f.write(config_text)
        self.fifo = FifoReader(self.fifo_path)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "DaemonProc":
        log = open(self.log_path, "ab")
        if self.kind == "vrrpd":
            argv = [os.path.join(VENV_BIN, "vrrpd"), "-l", "-D", "-f", self.conf]
        else:
            # Unique pid files: keepalived refuses to start when another copy's exist.
            argv = [KEEPALIVED, "-n", "-l", "-D", "--vrrp", "-f", self.conf,
                    "-p", self.pidfile, "-r", self.pidfile + ".vrrp",
                    "-c", self.pidfile + ".chk"]
        self.proc = self.ns.popen(*argv, stdout=log, stderr=subprocess.STDOUT)
        return self

    def state(self, name: str) -> str | None:
        last = None
        for _, kind, n, st, _ in self.fifo.events():
            if kind == "INSTANCE" and n == name:
                last = st
        return last

    def wait_state(self, name: str, state: str, timeout: float = 15.0) -> float:
        """Wait until `name` is in `state`; returns the fifo line's arrival time."""
        def found():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.log_tail()}")
            for t, kind, n, st, _ in reversed(self.fifo.events()):
                if kind == "INSTANCE" and n == name:
                    return t if st == state else None
            return None
        return wait_for(found, timeout, what=f"{self.kind} {name} {state}\n{self.log_tail()}")

    def signal(self, sig: int) -> float:
        t = time.monotonic()
        if self.kind == "keepalived" and sig == signal.SIGKILL:
            # keepalived's VRRP work is in a child process: kill the whole group,
            # as a crash of the machine would.
            os.killpg(self.proc.pid, sig)
        elif self.kind == "keepalived":
            os.kill(self.main_pid(), sig)
        else:
            os.kill(self.main_pid(), sig)
        return t

    def main_pid(self) -> int:
        # ip netns exec execs the daemon, so the Popen pid is the daemon's.
        return self.proc.pid

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        self.fifo.close()


def vips_on(ns: Netns, dev: str = "eth0") -> set[str]:
    out = ns.run("ip", "-o", "addr", "show", "dev", dev).stdout
    return {line.split()[3] for line in out.splitlines()}
