"""Logging set-up: stderr by default (journald picks it up under systemd),
syslog on request, keepalived's -D detail; a rate limiter for per-packet noise.

The loop only queues records; a thread of the stdlib's QueueListener writes them.
A write to stderr or /dev/log blocks when journald or syslog falls behind, or when
the log file's filesystem is busy, and the loop must not wait for it.  A burst
of similar lines (a takeover of thousands at -D) is one record of Rows, which
that thread formats and writes line by line.
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import logging.handlers
import queue
import sys
import time

_listener: logging.handlers.QueueListener | None = None


def setup(*, console: bool = True, detail: bool = False,
          syslog_facility: str | None = None) -> None:
    global _listener
    root = logging.getLogger("vrrpd")
    root.handlers.clear()
    root.setLevel(logging.DEBUG if detail else logging.INFO)
    outputs: list[logging.Handler] = []
    if syslog_facility:
        h: logging.Handler = logging.handlers.SysLogHandler(
            address="/dev/log", facility=syslog_facility.lower())
        h.setFormatter(logging.Formatter("vrrpd[%(process)d]: %(name)s: %(message)s"))
        outputs.append(h)
    if console or not syslog_facility:
        h = logging.StreamHandler(sys.stderr)
        # journald adds its own timestamps; a terminal user wants them.
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if sys.stderr.isatty() \
            else "%(levelname)s %(name)s: %(message)s"
        h.setFormatter(logging.Formatter(fmt))
        outputs.append(h)
    stop()
    records: queue.SimpleQueue = queue.SimpleQueue()
    root.addHandler(_Queue(records))
    _listener = _Listener(records, *outputs)
    _listener.start()


class Rows:
    """A log message of one line per args tuple: `log.debug(Rows(fmt, rows))`
    costs the caller one record however many rows.  Any handler writes it as
    lines joined by newlines; the writer thread of setup() formats it there, as
    one record per line."""

    def __init__(self, fmt: str, rows: list[tuple]):
        self.fmt, self.rows = fmt, rows

    def __str__(self) -> str:
        return "\n".join(self.fmt % args for args in self.rows)


class _Queue(logging.handlers.QueueHandler):
    def prepare(self, record: logging.LogRecord):
        # The stdlib formats each record before queueing it; Rows are left
        # for the writer thread (their args are immutable tuples).
        return record if isinstance(record.msg, Rows) else super().prepare(record)


class _Listener(logging.handlers.QueueListener):
    def handle(self, record: logging.LogRecord) -> None:
        rows = record.msg
        if not isinstance(rows, Rows):
            super().handle(record)
            return
        # This thread's Python takes the GIL from the loop at every switch
        # interval: a stream gets the rows as one block, each line with the
        # prefix its formatter gives the record, rather than a record per line.
        for handler in self.handlers:
            if self.respect_handler_level and record.levelno < handler.level:
                continue
            if isinstance(handler, logging.StreamHandler):
                template = logging.makeLogRecord(record.__dict__)
                template.msg, template.args = "\0", None
                head, _, tail = handler.format(template).partition("\0")
                block = "".join(f"{head}{rows.fmt % args}{tail}{handler.terminator}"
                                for args in rows.rows)
                with handler.lock or contextlib.nullcontext():
                    try:
                        handler.stream.write(block)
                        handler.flush()
                    except Exception:
                        handler.handleError(record)
                continue
            for args in rows.rows:
                line = logging.makeLogRecord(record.__dict__)
                line.msg, line.args = rows.fmt % args, None
                handler.handle(line)


@atexit.register
def stop() -> None:
    """Write out what is queued and end the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


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
