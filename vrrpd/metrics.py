"""Prometheus metrics (--metrics ADDR:PORT, off by default).

A custom collector reads the engine's counters when scraped: nothing is
done per packet in Python.  prometheus-client serves HTTP from its own
thread; the collector hops onto the daemon's loop to read, so it never sees
a half-applied reload.

Metrics (labels: instance, interface, vrid unless noted):
  vrrpd_instance_state            0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT
  vrrpd_instance_priority         effective priority (+ vrrpd_instance_base_priority)
  vrrpd_instance_transitions_total
  vrrpd_instance_failovers_total  times it became MASTER
  vrrpd_adverts_sent_total, vrrpd_adverts_received_total,
  vrrpd_priority_zero_sent_total, vrrpd_priority_zero_received_total
  vrrpd_adverts_rejected_total{reason}
  vrrpd_socket_rejected_total{interface, family, reason}  (no instance to blame)
  vrrpd_script_runs_total, _failures_total, _timeouts_total, _exec_errors_total
  vrrpd_loop_lag_seconds          lateness of the last periodic wake-up
  vrrpd_loop_lag_max_seconds      the largest seen
"""
from __future__ import annotations

import asyncio
import logging
import socket

from prometheus_client import start_http_server
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily

from . import _engine

log = logging.getLogger("vrrpd")

INST_LABELS = ["instance", "interface", "vrid"]
COUNTERS = (("adverts_sent", "vrrpd_adverts_sent", "adverts sent"),
            ("adverts_received", "vrrpd_adverts_received", "adverts accepted"),
            ("pri0_sent", "vrrpd_priority_zero_sent", "priority-0 adverts sent"),
            ("pri0_received", "vrrpd_priority_zero_received", "priority-0 adverts received"),
            ("became_master", "vrrpd_instance_failovers", "times the instance became MASTER"))
SCRIPT_COUNTERS = ("runs", "failures", "timeouts", "exec_errors")


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


class DaemonCollector:
    def __init__(self, daemon, loop: asyncio.AbstractEventLoop, lag: LoopLag):
        self.daemon, self.loop, self.lag = daemon, loop, lag

    def collect(self):
        # Runs in the HTTP thread: read everything on the loop, in one go.
        fut = asyncio.run_coroutine_threadsafe(self._read(), self.loop)
        return fut.result(timeout=10)

    async def _read(self) -> list:
        d, e = self.daemon, self.daemon.engine
        state = GaugeMetricFamily("vrrpd_instance_state", "0 INIT, 1 BACKUP, 2 MASTER, 3 FAULT",
                                  labels=INST_LABELS)
        prio = GaugeMetricFamily("vrrpd_instance_priority", "effective priority", labels=INST_LABELS)
        base = GaugeMetricFamily("vrrpd_instance_base_priority", "configured priority",
                                 labels=INST_LABELS)
        trans = CounterMetricFamily("vrrpd_instance_transitions", "state transitions",
                                    labels=INST_LABELS)
        counters = {k: CounterMetricFamily(name, text, labels=INST_LABELS) for k, name, text in COUNTERS}
        rejected = CounterMetricFamily("vrrpd_adverts_rejected", "adverts rejected, by reason",
                                       labels=INST_LABELS + ["reason"])
        for inst in list(d.instances.values()):
            labels = [inst.name, inst.ifname, str(inst.spec.vrid)]
            c = e.counters(inst.idx)
            state.add_metric(labels, e.state(inst.idx))
            prio.add_metric(labels, e.priority(inst.idx))
            base.add_metric(labels, inst.spec.priority)
            trans.add_metric(labels, inst.transitions)
            for k, fam in counters.items():
                fam.add_metric(labels, c[k])
            for reason in _engine.REJECT_NAMES[1:]:
                rejected.add_metric(labels + [reason], c["reject_" + reason])
        sock_rej = CounterMetricFamily("vrrpd_socket_rejected",
                                       "adverts rejected before reaching an instance",
                                       labels=["interface", "family", "reason"])
        for (ifname, family), (sid, _) in list(d._sockets.items()):
            c = e.socket_counters(sid)
            fam = "6" if family == socket.AF_INET6 else "4"
            for reason in _engine.REJECT_NAMES[1:]:
                sock_rej.add_metric([ifname, fam, reason], c["reject_" + reason])
        scripts = []
        for k in SCRIPT_COUNTERS:
            m = CounterMetricFamily(f"vrrpd_script_{k}", f"scripts: {k.replace('_', ' ')}")
            m.add_metric([], getattr(d.runner.counters, k))
            scripts.append(m)
        lag = GaugeMetricFamily("vrrpd_loop_lag_seconds", "lateness of the last periodic wake-up",
                                value=self.lag.last)
        lag_max = GaugeMetricFamily("vrrpd_loop_lag_max_seconds", "largest loop lateness seen",
                                    value=self.lag.max)
        return [state, prio, base, trans, *counters.values(), rejected, sock_rej, *scripts,
                lag, lag_max]


class Metrics:
    def __init__(self, daemon, addr: str, port: int):
        self.daemon, self.addr, self.port = daemon, addr, port
        self.lag = LoopLag()
        self._server = None

    def start(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(DaemonCollector(self.daemon, asyncio.get_running_loop(), self.lag))
        self.lag.start()
        self._server, _ = start_http_server(self.port, self.addr, registry=registry)
        log.info("metrics on http://%s:%d/metrics", self.addr, self.port)

    def stop(self) -> None:
        self.lag.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def parse_addr(text: str) -> tuple[str, int]:
    """'127.0.0.1:9650', '[::1]:9650', ':9650' (all addresses) -> (addr, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics wants ADDR:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
