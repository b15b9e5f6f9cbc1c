"""Prometheus metrics (--metrics ADDR:PORT, off by default).

Nothing is done per packet in Python: a scrape copies the engine's counters
into plain tuples on the daemon's loop, a slice of instances per loop turn
(take_snapshot), and prometheus-client renders that copy in the HTTP
thread.  The rendered text serves every scrape within MAX_AGE seconds, one
render runs at a time, and at most MAX_SCRAPES connections are served at
once (the rest get 503): scrapers cannot hold the loop or pile up work.

Metrics (labels: instance, interface, vrid unless noted):
  vrrpd_instance_state            0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT
  vrrpd_instance_priority         effective priority (+ vrrpd_instance_base_priority)
  vrrpd_instance_transitions_total
  vrrpd_instance_failovers_total  times it became MASTER
  vrrpd_adverts_sent_total, vrrpd_adverts_received_total,
  vrrpd_priority_zero_sent_total, vrrpd_priority_zero_received_total
  vrrpd_adverts_rejected_total{reason}
  vrrpd_socket_rejected_total{interface, family, reason}  (no instance to blame)
  vrrpd_script_runs_total, _failures_total, _timeouts_total, _exec_errors_total,
  _suppressed_total (notify_master_rx_lower_pri runs skipped by its rate limit)
  vrrpd_loop_lag_seconds          lateness of the last periodic wake-up
  vrrpd_loop_lag_max_seconds      the largest seen
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
import threading
import time
from typing import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from vrrpd.engine import REJECT_NAMES, State

log = logging.getLogger("vrrpd")

INST_LABELS = ["instance", "interface", "vrid"]
COUNTERS = (("adverts_sent", "vrrpd_adverts_sent", "adverts sent"),
            ("adverts_received", "vrrpd_adverts_received", "adverts accepted"),
            ("pri0_sent", "vrrpd_priority_zero_sent", "priority-0 adverts sent"),
            ("pri0_received", "vrrpd_priority_zero_received", "priority-0 adverts received"),
            ("became_master", "vrrpd_instance_failovers", "times the instance became MASTER"))
SCRIPT_COUNTERS = ("runs", "failures", "timeouts", "exec_errors", "suppressed")
SLICE = 100             # instances copied per loop turn
MAX_AGE = 1.0           # seconds a rendered exposition serves later scrapes
MAX_SCRAPES = 4         # connections served at once; more are answered 503
HTTP_TIMEOUT = 10.0     # seconds a connection may idle
# While a render holds the GIL, the loop thread waits up to the interpreter's
# switch interval (5 ms by default) each time it takes the GIL back, several
# times per advert flush: renders run with a short interval instead.
RENDER_SWITCH_S = 0.0002


class LoopLag:
    """A periodic timer that measures its own lateness: the loop's responsiveness."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.last = 0.0
        self.max = 0.0
        self._handle = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._arm(loop, loop.time())

    def _arm(self, loop, now: float) -> None:
        due = now + self.interval
        self._handle = loop.call_at(due, self._tick, loop, due)

    def _tick(self, loop, due: float) -> None:
        now = loop.time()
        self.last = max(0.0, now - due)
        self.max = max(self.max, self.last)
        self._arm(loop, now)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


class Snapshot:
    """Plain copies of what a scrape reports, taken on the loop; rendered elsewhere."""

    def __init__(self):
        self.instances: list[tuple] = []    # (labels, state, prio, base, transitions, counters)
        self.sockets: list[tuple] = []      # (labels, counters)
        self.scripts: dict[str, int] = {}
        self.lag = self.lag_max = 0.0


async def take_snapshot(daemon, lag: LoopLag, slice_size: int = SLICE) -> Snapshot:
    """Copy the counters on the loop, `slice_size` instances per turn, so that a
    scrape at thousands of instances never holds the adverts.  An instance a
    reload removed or replaced between two turns is left out."""
    d, e = daemon, daemon.engine
    snap = Snapshot()
    insts = list(d.instances.values())
    for start in range(0, len(insts), slice_size):
        for inst in insts[start:start + slice_size]:
            if d.by_idx.get(inst.idx) is not inst:
                continue
            snap.instances.append(([inst.name, inst.ifname, str(inst.spec.vrid)],
                                   e.state(inst.idx), e.priority(inst.idx), inst.spec.priority,
                                   inst.transitions, e.counters(inst.idx)))
        await asyncio.sleep(0)
    for (ifname, family), (sid, _) in list(d.sockets.items()):
        fam = "6" if family == socket.AF_INET6 else "4"
        snap.sockets.append(([ifname, fam], e.socket_counters(sid)))
    snap.scripts = {k: getattr(d.runner.counters, k) for k in SCRIPT_COUNTERS}
    snap.lag, snap.lag_max = lag.last, lag.max
    return snap


STATE_HELP = ", ".join(f"{s.value} {s.name}" for s in State)     # "0 INIT, 1 BACKUP, ..."


# Per-instance families: (class, name, help, label names after INST_LABELS,
# a snapshot row -> [(those labels' values, value)]).  Rows are as in Snapshot.
INSTANCE_FAMILIES: list[tuple[type, str, str, list[str], Callable[[tuple], list]]] = [
    (GaugeMetricFamily, "vrrpd_instance_state", STATE_HELP, [], lambda r: [([], r[1])]),
    (GaugeMetricFamily, "vrrpd_instance_priority", "effective priority", [],
     lambda r: [([], r[2])]),
    (GaugeMetricFamily, "vrrpd_instance_base_priority", "configured priority", [],
     lambda r: [([], r[3])]),
    (CounterMetricFamily, "vrrpd_instance_transitions", "state transitions", [],
     lambda r: [([], r[4])]),
    *[(CounterMetricFamily, name, text, [], lambda r, k=k: [([], r[5][k])])
      for k, name, text in COUNTERS],
    (CounterMetricFamily, "vrrpd_adverts_rejected", "adverts rejected, by reason", ["reason"],
     lambda r: [([reason], r[5]["reject_" + reason]) for reason in REJECT_NAMES[1:]]),
]


def render(snap: Snapshot, slice_size: int = SLICE) -> bytes:
    """The text exposition of one snapshot (runs in the HTTP thread).

    prometheus-client formats one family and `slice_size` instances at a time,
    and each piece's samples are freed before the next.  Rendered whole, the final
    join and encode and the freeing of every sample are C calls that hold the GIL,
    and so the loop's adverts, for as long as the whole exposition takes."""
    pieces = []
    for cls, name, text, labels, values in INSTANCE_FAMILIES:
        for start in range(0, max(len(snap.instances), 1), slice_size):
            family = cls(name, text, labels=INST_LABELS + labels)
            for row in snap.instances[start:start + slice_size]:
                for more, value in values(row):
                    family.add_metric(row[0] + more, value)
            pieces.append(_exposition([family], header=start == 0))
    sock_rej = CounterMetricFamily("vrrpd_socket_rejected",
                                   "adverts rejected before reaching an instance",
                                   labels=["interface", "family", "reason"])
    for labels, c in snap.sockets:
        for reason in REJECT_NAMES[1:]:
            sock_rej.add_metric(labels + [reason], c["reject_" + reason])
    scripts = []
    for k in SCRIPT_COUNTERS:
        m = CounterMetricFamily(f"vrrpd_script_{k}", f"scripts: {k.replace('_', ' ')}")
        m.add_metric([], snap.scripts[k])
        scripts.append(m)
    lag = GaugeMetricFamily("vrrpd_loop_lag_seconds", "lateness of the last periodic wake-up",
                            value=snap.lag)
    lag_max = GaugeMetricFamily("vrrpd_loop_lag_max_seconds", "largest loop lateness seen",
                                value=snap.lag_max)
    pieces.append(_exposition([sock_rej, *scripts, lag, lag_max]))
    return b"".join(pieces)


def _exposition(families: list, header: bool = True) -> bytes:
    """prometheus-client's text for `families`; without its # HELP and # TYPE
    lines when `header` is false (the later pieces of one family)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))
    text = generate_latest(registry)
    return text if header else text.split(b"\n", 2)[2]


class _Families:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class Exposition:
    """The latest rendered exposition, shared: a scrape within MAX_AGE of the
    last render gets it as is, and only one render runs at a time (scrapes
    arriving meanwhile wait for it and take its result)."""

    def __init__(self, daemon, loop: asyncio.AbstractEventLoop, lag: LoopLag,
                 max_age: float = MAX_AGE):
        self.daemon, self.loop, self.lag, self.max_age = daemon, loop, lag, max_age
        self._lock = threading.Lock()
        self._body = b""
        self._at = -math.inf

    def get(self) -> bytes:
        with self._lock:
            if time.monotonic() - self._at > self.max_age:
                fut = asyncio.run_coroutine_threadsafe(take_snapshot(self.daemon, self.lag),
                                                       self.loop)
                snap = fut.result(timeout=30)
                switch = sys.getswitchinterval()
                sys.setswitchinterval(RENDER_SWITCH_S)
                try:
                    self._body = render(snap)
                finally:
                    sys.setswitchinterval(switch)
                self._at = time.monotonic()
            return self._body


class BoundedServer(ThreadingWSGIServer):
    """A thread per connection, at most MAX_SCRAPES at once: a connection
    beyond that is answered 503 from the accepting thread and closed."""

    slots: threading.BoundedSemaphore
    busy: int                   # connections answered 503
    BUSY = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Retry-After: 1\r\nContent-Length: 23\r\n\r\ntoo many scrapes: busy\n")

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.busy += 1
            try:
                request.setblocking(False)
                request.send(self.BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        # vrrp_rt_priority makes the daemon realtime, threads included: a
        # scrape must never compete with the loop at the loop's priority.
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class _Handler(WSGIRequestHandler):
    timeout = HTTP_TIMEOUT      # a client that sends nothing loses its slot

    def log_message(self, format, *args):
        pass


class Metrics:
    def __init__(self, daemon, addr: str, port: int, max_scrapes: int = MAX_SCRAPES):
        self.daemon, self.addr, self.port = daemon, addr, port
        self.max_scrapes = max_scrapes
        self.lag = LoopLag()
        self._server: ThreadingWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        expo = Exposition(self.daemon, asyncio.get_running_loop(), self.lag)

        def app(environ, start_response):
            if environ.get("PATH_INFO") not in ("/", "/metrics"):
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found\n"]
            try:
                body = expo.get()
            except Exception as e:          # the loop too busy, shutting down...
                log.warning("metrics: scrape failed: %s", e)
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [b"metrics unavailable\n"]
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]

        server_cls = type("Server", (BoundedServer,), {
            "slots": threading.BoundedSemaphore(self.max_scrapes), "busy": 0,
            "address_family": socket.getaddrinfo(self.addr, self.port, type=socket.SOCK_STREAM,
                                                 flags=socket.AI_PASSIVE)[0][0]})
        self._server = make_server(self.addr, self.port, app, server_cls, handler_class=_Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics",
                                        daemon=True)
        self._thread.start()
        self.lag.start()
        log.info("metrics on http://%s:%d/metrics", self.addr, self.port)

    def stop(self) -> threading.Thread | None:
        """The lag probe stops now; the server is shut down from a thread of
        its own -> that thread (None: no server).  shutdown() waits out
        serve_forever's poll interval, and a daemon stopping must not hold
        its loop (or its priority-0 adverts) for it."""
        self.lag.stop()
        server, self._server = self._server, None
        if server is None:
            return None

        def close() -> None:
            server.shutdown()
            server.server_close()

        closing = threading.Thread(target=close, name="metrics-close", daemon=True)
        closing.start()
        return closing


def parse_addr(text: str) -> tuple[str, int]:
    """'127.0.0.1:9650', '[::1]:9650', ':9650' (all addresses) -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics wants ADDR:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
