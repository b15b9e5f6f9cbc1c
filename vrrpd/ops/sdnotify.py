"""systemd's readiness protocol (sd_notify(3)): one datagram of NAME=value
lines to $NOTIFY_SOCKET.  A no-op when not run by systemd (Type=notify)."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

log = logging.getLogger("vrrpd")


def notify(*assignments: str) -> bool:
    """Send e.g. notify("READY=1"); False if there is no socket or it failed."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]              # abstract namespace socket
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(assignments).encode(), path)
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", path, e)
        return False


def reloading() -> bool:
    # systemd >= 253 (Type=notify-reload) wants MONOTONIC_USEC with RELOADING=1.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, if it is meant for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2e6 or None
    except ValueError:
        return None


class Watchdog:
    """Pings from the event loop itself, so a stuck loop stops the pings."""

    def __init__(self, interval: float):
        self.interval = interval
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        notify("WATCHDOG=1")
        self._handle = asyncio.get_running_loop().call_later(self.interval, self.start)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
