"""vrrpd-lab end to end: a short failover lab with both daemons, and the demo.

Checks that what the lab reports is complete and self-consistent; no
absolute timings are asserted (those are bench/ material).
"""
import json
import subprocess
import sys
import time

import pytest

from children import child
from vrrpd.lab.report import summary
from vrrpd.lab import testbed
from vrrpd.lab.testbed import PREFIX, cleanup
from vrrpd.lab.conf import LabSpec
from vrrpd.lab.net import Netns, namespaces, new_name, sh, wait_for

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


class _Lines:
    """A FifoReader's events() over a list the test extends."""

    def __init__(self):
        self.all: list = []

    def events(self, since: float = 0.0) -> list:
        return [e for e in self.all if e[0] >= since]


class _Added:
    """An AddrMonitor's added_from() over a list the test extends."""

    def __init__(self):
        self.added: list = []
        self.asked: list[int] = []

    def added_from(self, index: int) -> list:
        self.asked.append(index)
        return self.added[index:]


def test_takeover_reads_each_line_and_addition_once_and_counts_both():
    from vrrpd.lab.watch import Takeover
    lines, added = _Lines(), _Added()
    lines.all.append((0.5, "INSTANCE", "a", "MASTER", 100))    # before the fault
    added.added.append((0.5, "10.0.0.1"))
    t = Takeover(lines, added, ["a", "b"], ["10.0.0.1", "10.0.0.2"], since=1.0)
    assert t.poll() == 0
    lines.all += [(1.1, "INSTANCE", "a", "BACKUP", 100), (1.2, "INSTANCE", "a", "MASTER", 100),
                  (1.3, "INSTANCE", "x", "MASTER", 100), (1.3, "GROUP", "b", "MASTER", 0)]
    added.added += [(1.25, "10.0.0.2"), (1.4, "10.9.9.9")]
    assert t.poll() == 0                # a has its line, b its VIP: neither has both
    lines.all.append((1.5, "INSTANCE", "a", "MASTER", 100))   # a second line: the first counts
    added.added += [(1.6, "10.0.0.1"), (1.7, "10.0.0.1")]
    assert t.poll() == 1
    lines.all.append((1.8, "INSTANCE", "b", "MASTER", 100))
    assert t.wait(1.0) == 2             # returns at once: all are in
    assert t.fifo == {"a": 1.2, "b": 1.8} and t.vips == {"a": 1.6, "b": 1.25}
    assert added.asked == [0, 1, 3, 5]  # each poll from where the last one stopped


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vrrpd", "keepalived"])
def test_failover_json_complete_and_sane(lab_json, kind):
    result, stdout = lab_json
    assert result["spec"] == {"instances": INSTANCES, "advert_int": 0.1, "version": 3, "family": 4}
    assert result["topology"] == "p2p"                  # the default
    assert result["kernel_floor"]["vip_add_s"] > 0
    assert result["kernel_floor"]["instances"] == INSTANCES
    assert len(result["machine"]["loadavg"]) == 3
    d = result["daemons"][kind]
    assert d["kernel_floor"]["vip_add_s"] >= result["kernel_floor"]["vip_add_s"]
    # The wire's rate for a takeover-sized burst: an advert and a GARP per instance.
    assert d["wire"]["frames"] == 2 * INSTANCES and d["wire"]["lost"] == 0
    assert d["wire"]["frames_per_s"] >= result["wire"]["frames_per_s"] > 0
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
    # "last" as a multiple of Master_Down_Interval + the kernel floor of this daemon's lab.
    mdi = result["expected"]["master_down_interval_s"]
    assert f["protocol_s"] == pytest.approx(mdi)
    assert f["last_vs_floor"] == pytest.approx(
        f["takeover"]["last"] / (mdi + d["kernel_floor"]["vip_add_s"]), abs=1e-3)
    assert kind in stdout
    assert "kernel floor: ip -batch adds the 50 VIPs" in stdout
    assert "wire: a takeover-sized burst (100 frames) drains at" in stdout


@pytest.mark.netns
def test_switch_forwards_a_takeover_burst_without_loss():
    # 600 instances: 3 bridges; the burst (1,200 frames) is more than a port's 1,000-packet
    # queue, so it only arrives whole if the switch drains while the sender waits.
    tb = testbed.Testbed(LabSpec(instances=600, advert_int=0.1), "vrrpd", topology="switch")
    try:
        assert tb.lan.switch is not None
        wire = tb.forwarding_rate()
        assert wire["frames"] == 1200 and wire["received"] == 1200 and wire["lost"] == 0
        assert wire["frames_per_s"] > 0 and wire["drain_s"] > 0
    finally:
        tb.close()


@pytest.mark.netns
def test_p2p_testbed_is_veth_pairs_without_bridge_or_qdisc():
    # 300 instances: 2 links, 150 VRIDs each (the lab spreads instances evenly).
    tb = testbed.Testbed(LabSpec(instances=300, advert_int=0.1), "vrrpd", topology="p2p")
    try:
        assert tb.lan.switch is None
        assert tb.spec.nics == 2 and tb.spec.vrids_per_nic == 150
        assert tb.spec.placement(299) == (1, 150) and tb.instance_of("eth1", 150) == 299
        for host in tb.lan.hosts:
            links = host.run("ip", "-o", "link", "show").stdout
            assert "bridge" not in host.run("ip", "-d", "link", "show").stdout
            assert {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()} \
                == {"lo", "eth0", "eth1"}
            qdiscs = host.run("tc", "qdisc", "show").stdout.splitlines()
            assert qdiscs and all(q.startswith("qdisc noqueue") for q in qdiscs), qdiscs
        # The kernel floor adds the N VIPs on the backup's links and removes them again.
        floor = tb.kernel_floor(repeat=1)
        assert floor["vip_add_s"] > 0 and floor["vip_del_s"] > 0 and floor["instances"] == 300
        assert floor["vip_add_batched_s"] > 0 and floor["vip_del_batched_s"] > 0
        left = tb.backup.ns.run("ip", "-o", "-4", "addr", "show").stdout
        assert "198.19." not in left
    finally:
        tb.close()


@pytest.mark.netns
@pytest.mark.slow
def test_p2p_link_down_cuts_the_cable_not_the_backups_carrier(tmp_path):
    # On a direct link, downing the master's NICs would take the backup's carrier too (FAULT,
    # not MASTER); the lab cuts the master's traffic instead and restores it afterwards.
    out = tmp_path / "lab.json"
    proc = subprocess.run(LAB + ["failover", "--daemon", "vrrpd", "--instances", "20",
                                 "--topology", "p2p", "--scenario", "link-down,crash",
                                 "--window", "1", "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d = json.loads(out.read_text())["daemons"]["vrrpd"]
    down, crash = d["failovers"]
    assert down["scenario"] == "link-down" and down["missing"] == 0
    assert "restore_error" not in down and down["restore_s"] > 0
    assert down["restore_flaps"] == 0
    assert crash["missing"] == 0


@pytest.mark.netns
@pytest.mark.slow
def test_vip_delete_hands_every_instance_over_and_the_master_takes_them_back(tmp_path):
    # Every VIP deleted on the master from outside: each instance sends priority 0 and
    # goes BACKUP, the backup takes over after Skew_Time, and the master, still the
    # higher priority, preempts them all back with their VIPs (no restore step).
    out = tmp_path / "lab.json"
    proc = subprocess.run(LAB + ["failover", "--daemon", "vrrpd", "--instances", "20",
                                 "--scenario", "vip-delete", "--repeat", "2", "--observe",
                                 "fifo", "--window", "1", "--json", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    first, second = result["daemons"]["vrrpd"]["failovers"]
    for run in (first, second):
        assert run["scenario"] == "vip-delete" and run["missing"] == 0
        assert run["protocol_s"] == result["expected"]["skew_time_s"]
        assert run["takeover"]["first"] < result["expected"]["master_down_interval_s"]
    assert "restore_error" not in first and first["restore_flaps"] == 0


@pytest.mark.netns
@pytest.mark.slow
def test_observe_fifo_times_by_the_master_line_alone(tmp_path):
    out = tmp_path / "lab.json"
    proc = subprocess.run(LAB + ["failover", "--daemon", "vrrpd", "--instances", "20",
                                 "--observe", "fifo", "--window", "1", "--json", str(out),
                                 "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "notify fifo alone" in proc.stdout
    result = json.loads(out.read_text())
    assert result["observe"] == "fifo"
    (f,) = result["daemons"]["vrrpd"]["failovers"]
    assert f["missing"] == 0 and f["takeover"] == f["fifo_master"]
    assert f["takeover"]["count"] == 20 and f["takeover"]["first"] > 0
    assert f["vip_added"]["count"] == 0 and f["first_advert"]["count"] == 0
    assert f["wire_packets"] is None


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


def test_lab_keepalived_logs_to_its_file_only(tmp_path):
    # Without -G keepalived also logs to syslog, and with no /dev/log listener glibc writes
    # each line to /dev/console: on a serial console that held a 2,000-instance takeover for
    # seconds. The lab's keepalived logs to its console (the lab's log file), as vrrpd does.
    from vrrpd.lab.run import DaemonProc

    class Host:
        name = "vlabnone"
    d = DaemonProc(Host(), "keepalived", "", str(tmp_path))
    try:
        argv = d.argv()
        assert "-G" in argv and "-l" in argv
    finally:
        d.stop()


def test_plot_without_matplotlib_is_one_line_naming_the_extra(tmp_path):
    # A plain `pip install` has no matplotlib: --plot must say which extra brings it, at once
    # (before minutes of lab), not end a run in a traceback.
    proc = subprocess.run([sys.executable, child("lab_without_matplotlib"), "failover",
                           "--instances", "2", "--json", str(tmp_path / "x.json"),
                           "--plot", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip install 'vrrpd[lab]'" in proc.stderr
    assert not (tmp_path / "x.json").exists()           # no lab ran


@pytest.mark.netns
@pytest.mark.slow
def test_config_and_observe_time_a_takeover_outside_the_lab(tmp_path):
    # What a user runs on two real machines: `vrrpd-lab config` on each, the daemons started
    # by hand, `vrrpd-lab observe` on the backup; here the machines are two namespaces.
    from vrrpd.lab.net import P2P
    from vrrpd.lab.run import default_vrrpd
    n = 20
    net = P2P(nics=1, prefix=PREFIX, tag="o")
    procs = []
    try:
        for host in (0, 1):
            conf = tmp_path / f"h{host}.conf"
            fifo = tmp_path / f"h{host}.fifo"
            conf.write_text(subprocess.run(
                LAB + ["config", "--host", str(host), "--instances", str(n), "--fifo", str(fifo)],
                capture_output=True, text=True, check=True).stdout)
            if host == 1:           # the observer makes the fifo and reads it before the daemon
                out = tmp_path / "obs.json"
                obs = net.hosts[1].popen(*LAB, "observe", "--fifo", str(fifo), "--instances",
                                         str(n), "--timeout", "30", "--json", str(out),
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                wait_for(fifo.exists, what="the observer's fifo")
            procs.append(net.hosts[host].popen(
                default_vrrpd(), "-l", "-f", str(conf), "--control-socket",
                str(tmp_path / f"h{host}.ctl"),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.5)         # the master first: it wins every instance
        procs[0].kill()             # crash of the master: the backup takes over all n
        stdout, stderr = obs.communicate(timeout=60)
        assert obs.returncode == 0, stdout + stderr
        result = json.loads(out.read_text())
        assert result["missing"] == 0 and result["takeover"]["count"] == n
        assert result["from"] == "first MASTER line" and result["spread_s"] >= 0
        assert f"{n} of {n} MASTER with VIP" in stdout
    finally:
        net.delete()
