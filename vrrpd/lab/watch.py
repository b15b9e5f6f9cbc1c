"""Independent observers of a takeover: VIPs appearing (netlink) and adverts on the wire.

VIP presence comes from iproute2's `ip -ts -o monitor address` run in the
host's namespace: a separate process (no setns dance, no GIL shared with
the lab's fifo readers) that stamps each netlink event when it reads it,
and an oracle that is not ours.  Its stamps are wall-clock; they are turned
into time.monotonic() values, the clock of the fifo readers and the faults.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import datetime
from typing import Any, Protocol

from vrrpd.lab.net import Netns, wait_for


class Namespace(Protocol):
    """Where to run a command: a lab.net.Netns, or observe's host namespace."""
    def popen(self, *args: str, **kw: Any) -> subprocess.Popen: ...


def mono_from_wall(wall: float) -> float:
    return wall - (time.time() - time.monotonic())


class AddrMonitor(threading.Thread):
    """Addresses added in a namespace, as (monotonic time, address) pairs."""

    def __init__(self, ns: Namespace):
        super().__init__(daemon=True)
        self.proc = ns.popen("ip", "-ts", "-o", "monitor", "address",
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.added: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.start()

    def run(self) -> None:
        assert self.proc.stdout is not None     # piped
        for line in self.proc.stdout:
            # [2026-11-25T14:18:52.268231] 1: lo    inet 198.19.0.1/32 scope global lo\ ...
            stamp, _, rest = line.partition("] ")
            words = rest.split()
            if not words or words[0] == "Deleted" or "tentative" in words:
                continue
            try:
                addr = words[words.index("inet" if "inet" in words else "inet6") + 1]
                t = mono_from_wall(datetime.fromisoformat(stamp.lstrip("[")).timestamp())
            except (ValueError, IndexError):
                continue
            with self.lock:
                self.added.append((t, addr.split("/")[0]))

    def added_from(self, index: int) -> list[tuple[float, str]]:
        """The additions read since the first `index` ones."""
        with self.lock:
            return self.added[index:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass                    # deleting the namespace kills what is left


class Takeover:
    """Per instance, since `since`: its first MASTER line (a lab.run.FifoReader)
    and its VIP's first addition (an AddrMonitor), as monotonic times by name.
    Each poll reads only what arrived after the last one: polling a takeover
    of thousands must not take the CPUs (and this process's GIL, which the
    fifo reader needs to stamp its lines) from the daemons it measures."""

    def __init__(self, reader, monitor: AddrMonitor | None, names: list[str], vips: list[str],
                 since: float):
        """monitor None: the fifo line alone (both daemons add an instance's
        VIP before they write its line: tests/test_takeover_order.py)."""
        self._reader, self._monitor, self._since = reader, monitor, since
        self._name_of = dict(zip(vips, names))
        self._names = set(names)
        self._lines = self._additions = 0       # how many of each were read
        self.fifo: dict[str, float] = {}
        self.vips: dict[str, float] = {}
        self.done = 0                           # instances with both

    def poll(self) -> int:
        """-> how many instances have both."""
        events = self._reader.events(self._since)
        for t, kind, name, state, _ in events[self._lines:]:
            if kind == "INSTANCE" and state == "MASTER" and name in self._names \
                    and name not in self.fifo:
                self.fifo[name] = t
                self.done += self._monitor is None or name in self.vips
        self._lines = len(events)
        if self._monitor is None:
            return self.done
        added = self._monitor.added_from(self._additions)
        self._additions += len(added)
        for t, addr in added:
            name = self._name_of.get(addr)
            if t >= self._since and name is not None and name not in self.vips:
                self.vips[name] = t
                self.done += name in self.fifo
        return self.done

    def wait(self, timeout: float, progress=None) -> int:
        """Poll until every instance has both or `timeout` s passed -> how many have."""
        def complete() -> bool:
            done = self.poll()
            if progress:
                progress(done)
            return done == len(self._names)
        try:
            wait_for(complete, timeout, interval=0.05)
        except AssertionError:
            pass                                # reported as missing instances
        return self.done


class WireCapture:
    """vrrpd.lab.capture running in the switch namespace on some bridge ports, or
    (outgoing) in a host's namespace on its NICs."""

    def __init__(self, ns: Netns, ports: list[str], expect: int, timeout: float,
                 outgoing: bool = False):
        self.proc = ns.popen(sys.executable, "-m", "vrrpd.lab.capture", "--expect", str(expect),
                             "--timeout", str(timeout), *ports,
                             *(["--outgoing"] if outgoing else []),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None     # both piped
        self._stdin = stdin
        line = stdout.readline()
        if line.strip() != "ready":
            self.proc.kill()
            raise RuntimeError(f"wire capture did not start: {line!r}")
        self.packets = 0
        self._out: list[str] = []
        # Read its (possibly large) report as it comes, so it never blocks on a full pipe.
        self._reader = threading.Thread(target=lambda: self._out.append(stdout.read()),
                                        daemon=True)
        self._reader.start()

    def arm(self) -> None:
        """Count adverts from now on (call just before the fault)."""
        self._stdin.write(f"since {time.time()!r}\n")
        self._stdin.flush()

    def result(self, grace: float = 2.0) -> dict[tuple[str, int], float]:
        """(port, VRID) -> monotonic time of its first advert; ends the capture."""
        self._reader.join(grace)
        self._stdin.close()               # tells a capture still running to report now
        self._reader.join(10)
        self.proc.wait(10)
        try:
            data = json.loads("".join(self._out).strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {}
        self.packets = data["packets"]
        return {(p, v): mono_from_wall(t) for p, v, t in data["first"]}
