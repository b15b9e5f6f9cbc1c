"""Prometheus metrics scraped over HTTP inside the daemon's namespace and
checked against the daemon's own counters (vrrpctl stats --json)."""
from __future__ import annotations

import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from test_ctl import two_hosts

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
            labels = {"instance": inst, "interface": "eth0", "vrid": str(int(inst[3:]) + 1), **extra}
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
            assert get("vrrpd_adverts_rejected_total", inst, reason="bad_ttl") == c["reject_bad_ttl"]
        assert samples[("vrrpd_script_runs_total", ())] == 0
        assert samples[("vrrpd_loop_lag_seconds", ())] >= 0
    finally:
        m.stop()
        b.stop()
