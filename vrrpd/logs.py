"""Logging set-up: stderr by default (journald picks it up under systemd),
syslog on request, keepalived's -D detail; a rate limiter for per-packet noise."""
from __future__ import annotations

import logging
import logging.handlers
import sys
import time


def setup(*, console: bool = True, detail: bool = False, syslog_facility: str | None = None) -> None:
    root = logging.getLogger("vrrpd")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if detail else logging.INFO)
    if syslog_facility:
        h: logging.Handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=syslog_facility.lower())
        h.setFormatter(logging.Formatter("vrrpd[%(process)d]: %(name)s: %(message)s"))
        root.addHandler(h)
    if console or not syslog_facility:
        h = logging.StreamHandler(sys.stderr)
        # journald adds its own timestamps; a terminal user wants them.
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if sys.stderr.isatty() \
            else "%(levelname)s %(name)s: %(message)s"
        h.setFormatter(logging.Formatter(fmt))
        root.addHandler(h)


class RateLimited:
    """Log at most `burst` messages per `period` seconds per key; count the rest."""

    def __init__(self, logger: logging.Logger, period: float = 10.0, burst: int = 5):
        self.log, self.period, self.burst = logger, period, burst
        self._window: dict[str, tuple[float, int]] = {}
        self.suppressed = 0

    def warning(self, key: str, msg: str, *args) -> None:
        now = time.monotonic()
        start, n = self._window.get(key, (now, 0))
        if now - start > self.period:
            if n > self.burst:
                self.log.warning("%s: %d similar messages suppressed", key, n - self.burst)
            start, n = now, 0
        n += 1
        self._window[key] = (start, n)
        if n <= self.burst:
            self.log.warning(msg, *args)
        else:
            self.suppressed += 1
