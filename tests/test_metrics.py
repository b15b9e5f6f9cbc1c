"""Prometheus metrics scraped over HTTP inside the daemon's namespace and
checked against the daemon's own counters (vrrpctl stats --json)."""
from __future__ import annotations

import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from children import child
from daemons import two_hosts

pytestmark = [pytest.mark.netns]

SCRAPE = "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9650/metrics').read().decode())"


def test_metrics_match_counters(lan, tmp_path):
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=2, extra=("--metrics", "127.0.0.1:9650"))
    try:
        text = net.hosts[1].run(sys.executable, "-c", SCRAPE).stdout
        after = b.ctl_json("stats")["instances"]
        samples = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

        def get(name, inst, **extra):
            labels = {"instance": inst, "interface": "eth0", "vrid": str(int(inst[3:]) + 1),
                      **extra}
            return samples[(name, tuple(sorted(labels.items())))]

        for inst in ("VI_0", "VI_1"):
            c = after[inst]
            assert get("vrrpd_instance_state", inst) == 1                    # BACKUP
            assert get("vrrpd_instance_priority", inst) == 100
            assert get("vrrpd_instance_failovers_total", inst) == c["became_master"]
            # Scraped just before the stats call: adverts keep arriving (10/s).
            rx = get("vrrpd_adverts_received_total", inst)
            assert 0 < rx <= c["adverts_received"] <= rx + 20
            assert get("vrrpd_adverts_sent_total", inst) == c["adverts_sent"]
            assert (get("vrrpd_adverts_rejected_total", inst, reason="bad_ttl")
                    == c["reject_bad_ttl"])
        assert samples[("vrrpd_script_runs_total", ())] == 0
        assert samples[("vrrpd_loop_lag_seconds", ())] >= 0
    finally:
        m.stop()
        b.stop()


def _lag_max(host) -> float:
    text = host.run(sys.executable, "-c", SCRAPE).stdout
    for fam in text_string_to_metric_families(text):
        if fam.name == "vrrpd_loop_lag_max_seconds":
            return fam.samples[0].value
    raise AssertionError("no vrrpd_loop_lag_max_seconds")


def test_parallel_scrapes_do_not_hold_the_loop(lan, tmp_path):
    """10 scrapers in parallel at 1,000 instances: the loop's lateness stays
    small and no advert is late (rendering happens off the loop, one render
    at a time, shared).  Adverts every second, seen from a second host."""
    from daemons import DaemonProc
    from advert_capture import Capture, max_gaps
    from vrrpd.lab.conf import LabSpec, host_config
    spec = LabSpec(instances=1000, version=3, advert_int=1, notify_fifo="@FIFO@")
    net = lan(hosts=2, nics=spec.nics)
    host = net.hosts[0]
    d = DaemonProc(host, "vrrpd", host_config(spec, 0, priority=200, state="MASTER"),
                   str(tmp_path), detail=False, extra_args=("--metrics", "127.0.0.1:9650"))
    d.start()
    try:
        d.wait_all([f"VI_{i}" for i in range(spec.instances)], "MASTER", timeout=60)
        time.sleep(2)
        before = _lag_max(host)
        cap = Capture(net.hosts[1], 8)
        out = host.run(sys.executable, child("metrics_storm"), "6", timeout=120).stdout
        _codes, ok, size = out.split("] ")[0] + "]", *out.split("] ")[1].split()
        assert int(ok) >= 10 and int(size) > 1_000_000, out     # real expositions served
        after = _lag_max(host)
        gaps = max_gaps(cap.packets(), {net.host_ip(0, nic=k) for k in range(spec.nics)})
        assert len(gaps) == spec.instances, len(gaps)
        worst = max(gaps.values())
        assert after <= max(before, 0.05) and worst <= 1.05, (before, after, worst, out)
        d.check_alive()
    finally:
        d.stop()


def test_render_in_pieces_is_one_exposition():
    """render() formats a family 100 instances at a time: prometheus-client's
    own parser finds each family once, with every instance's samples."""
    from vrrpd.engine import REJECT_NAMES
    from vrrpd.ops import metrics
    n, reasons = 250, REJECT_NAMES[1:]
    keys = [k for k, _, _ in metrics.COUNTERS] + ["reject_" + r for r in reasons]
    snap = metrics.Snapshot()
    for i in range(n):
        snap.instances.append(([f"VI_{i}", f"eth{i % 4}", str(i % 255 + 1)], 2, 200,
                               100 + i % 50, i, {k: 7 * i + j for j, k in enumerate(keys)}))
    snap.sockets.append((["eth0", "4"], {k: 3 for k in keys}))
    snap.scripts = {k: 1 for k in metrics.SCRIPT_COUNTERS}
    text = metrics.render(snap, slice_size=100).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert text.count("# HELP ") == text.count("# TYPE ") == len(families)
    assert len(families["vrrpd_instance_state"].samples) == n
    base = {s.labels["instance"]: s.value for s in families["vrrpd_instance_base_priority"].samples}
    assert base == {f"VI_{i}": 100 + i % 50 for i in range(n)}
    rejected = {(s.labels["instance"], s.labels["reason"]): s.value
                for s in families["vrrpd_adverts_rejected"].samples}
    assert rejected == {(f"VI_{i}", r): 7 * i + keys.index("reject_" + r)
                        for i in range(n) for r in reasons}
    assert len(families["vrrpd_socket_rejected"].samples) == len(reasons)
    # No instance: every family still there once, empty.
    empty = metrics.Snapshot()
    empty.scripts = snap.scripts
    assert {f.name for f in text_string_to_metric_families(metrics.render(empty).decode())} \
        == set(families)


def test_scrape_connections_are_bounded(aio):
    """With every slot held by a client that sends nothing, a scrape is
    answered 503 at once; once a slot frees, scrapes are served again."""
    import asyncio
    import socket
    import types
    import urllib.error
    import urllib.request
    from vrrpd.ops.metrics import Metrics
    from vrrpd.scripts.runner import ScriptCounters

    daemon = types.SimpleNamespace(instances={}, by_idx={}, engine=None, sockets={},
                                   runner=types.SimpleNamespace(counters=ScriptCounters()))

    def scrape(port):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    async def main():
        m = Metrics(daemon, "127.0.0.1", 0, max_scrapes=2)
        m.start()
        port = m._server.server_address[1]
        loop = asyncio.get_running_loop()
        try:
            held = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
            await asyncio.sleep(0.2)
            status, body = await loop.run_in_executor(None, scrape, port)
            assert status == 503 and b"busy" in body
            held.pop().close()
            await asyncio.sleep(0.2)
            status, body = await loop.run_in_executor(None, scrape, port)
            assert status == 200 and b"vrrpd_loop_lag_seconds" in body
            for s in held:
                s.close()
        finally:
            m.stop()
    aio(main())


def test_stop_leaves_the_server_shutdown_to_a_thread(aio):
    """shutdown() waits out serve_forever's poll interval: stop() hands it to a
    thread of its own and returns; the port is closed once that thread ends."""
    import socket
    import threading
    from types import SimpleNamespace
    from vrrpd.ops.metrics import Metrics
    calls = []

    async def main():
        m = Metrics(SimpleNamespace(), "127.0.0.1", 0)
        m.start()
        server = m._server
        shutdown = server.shutdown

        def recorded():
            calls.append(threading.current_thread() is threading.main_thread())
            shutdown()

        server.shutdown = recorded
        return m.stop(), server.server_address[1]

    closing, port = aio(main())
    closing.join(5)
    assert calls == [False] and not closing.is_alive()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
