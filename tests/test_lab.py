"""vrrpd-lab end to end: a short failover lab with both daemons, and the demo.

Checks that what the lab reports is complete and self-consistent; no
absolute timings are asserted (those are bench/ material).
"""
import json
import subprocess
import sys

import pytest

from vrrpd.lab.report import summary
from vrrpd.lab.testbed import PREFIX, cleanup
from vrrpd.labnet import Netns, namespaces, new_name, sh, wait_for

LAB = [sys.executable, "-c", "import sys; from vrrpd.lab import main; sys.exit(main())"]
INSTANCES = 50


def test_summary_order_and_p99():
    s = summary([0.5, 0.1, 0.3] + [0.2] * 97)
    assert s["count"] == 100
    assert s["first"] == 0.1 and s["last"] == 0.5
    assert s["median"] == 0.2 and s["p99"] == 0.3     # nearest rank: the 99th of 100
    assert summary([])["count"] == 0


def check_summary(s, count):
    assert s["count"] == count
    assert 0 < s["first"] <= s["median"] <= s["p99"] <= s["last"]


@pytest.fixture(scope="module")
def lab_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("lab") / "lab.json"
    plot = out.with_suffix(".png")
    before = namespaces(PREFIX)
    proc = subprocess.run(LAB + ["failover", "--daemon", "vrrpd,keepalived", "--instances",
                                 str(INSTANCES), "--advert-int", "0.1", "--scenario", "crash",
                                 "--window", "2", "--json", str(out), "--plot", str(plot)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert namespaces(PREFIX) - before == set(), "the lab left namespaces behind"
    assert plot.stat().st_size > 0
    return json.loads(out.read_text()), proc.stdout


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vrrpd", "keepalived"])
def test_failover_json_complete_and_sane(lab_json, kind):
    result, stdout = lab_json
    assert result["spec"] == {"instances": INSTANCES, "advert_int": 0.1, "version": 3, "family": 4}
    d = result["daemons"][kind]
    for role in ("master", "backup"):
        host = d["steady"][role]
        assert host["cpu_pct"] >= 0 and host["rss_kb"] > 1000
        assert host["cpu_pct_vrrp"] <= host["cpu_pct"] + 1e-9
        assert 0 < host["rss_kb_vrrp"] <= host["rss_kb"]
    if kind == "keepalived":
        assert len(d["steady"]["master"]["pids"]) >= 2      # parent + VRRP child
    [f] = d["failovers"]
    assert f["scenario"] == "crash" and f["missing"] == 0
    for key in ("takeover", "fifo_master", "vip_added", "first_advert"):
        check_summary(f[key], INSTANCES)
    # Each instance is done only when both the fifo line and the VIP are there.
    assert f["takeover"]["last"] >= max(f["fifo_master"]["last"], f["vip_added"]["last"]) - 1e-6
    assert len(f["times"]) == INSTANCES and all(t > 0 for t in f["times"])
    assert d["pooled"]["crash"]["count"] == INSTANCES
    assert kind in stdout


@pytest.mark.netns
@pytest.mark.slow
def test_demo_reports_takeover_and_cleans_up():
    before = namespaces(PREFIX)
    proc = subprocess.run(LAB + ["demo"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "\x1b[" not in out                      # plain text when not on a terminal
    assert "B took over all 3 VIPs" in out
    assert "A is MASTER again" in out
    assert "lab removed" in out
    assert namespaces(PREFIX) - before == set()


@pytest.mark.netns
def test_cleanup_removes_namespaces_and_their_daemons():
    name = new_name("c", PREFIX)
    ns = Netns(name)
    sleeper = ns.popen("sleep", "300")
    # Popen returns before `ip netns exec` has entered the namespace.
    wait_for(lambda: str(sleeper.pid) in sh("ip", "netns", "pids", name).stdout.split(),
             what="the sleeper in its namespace")
    gone = cleanup(prefix=name)         # only ours: other labs may be running
    assert gone == [name]
    assert sleeper.wait(5) == -9
    assert name not in namespaces(PREFIX)
