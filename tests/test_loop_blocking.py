"""Loop-blocking proof: scripts that hang and notify scripts that
sleep never delay an advert.

vrrpd runs 1,000 VRRPv3 instances at 100 ms on host 0 (4 NICs).  Every
instance tracks one of 100 vrrp_scripts that sleep 5 s against a 0.5 s
timeout (so every second 100 scripts start, time out, and have their process
groups killed; each failure moves the priority of 10 instances, which is
advertised at once), and every transition starts notify scripts that sleep
10 s (3,000 of them over start-up: BACKUP, then MASTER and the generic notify).
Host 1 runs no daemon: it captures the adverts with kernel timestamps
(tests/scenarios/wire_gaps.py) and the gap between consecutive adverts of each
(interface, VRID) must stay within advert_int + 5 ms, from each instance's
first advert to the end of the window.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from advert_capture import (WIRE_GAPS, charged_ms, gaps_within, load_wire_gaps, machine_stall_ms,
                            settle, stall_lengths_ms)
from daemons import DaemonProc
from netns import wait_for
from vrrpd.lab.conf import LabSpec, host_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

# The daemon runs with keepalived's `vrrp_rt_priority` (SCHED_RR, scripts and
# the spawner reset to normal priority), as an operator who needs advert
# timing under load sets it: on a small machine the test's own load (3,000
# notify processes, 100 script spawns a second, the capture) otherwise
# delays the daemon's wake-ups by the scheduler, not by its loop
# (figures: bench/results/NOTES.md).

N = 1000
SCRIPTS = 100
ADVERT_MS = 100
BOUND_MS = ADVERT_MS + 5          # the bound asked of the run with hanging scripts
# The run without scripts measures the machine and the engine alone: it guards
# against regressions of the engine itself.
BASELINE_BOUND_MS = ADVERT_MS + 10
DUE_MS = 2 * ADVERT_MS - BOUND_MS   # when the next advert is due, less the bound's slack
MEASURED_S = 6.0      # seconds of adverts each instance must have in the capture
# Seconds of capture: the daemon's start-up (seconds with 100 scripts and 1,000
# notify hooks, more on a loaded machine), its transitions, then MEASURED_S of
# hanging scripts.
WINDOW = MEASURED_S + 4.0
SCRAPE_STORM = os.path.join(os.path.dirname(__file__), "scenarios", "scrape_storm.py")
METRICS = "127.0.0.1:9650"


def config(tmp: str, load: bool) -> str:
    return realtime(_config(tmp, load))


def realtime(text: str) -> str:
    return text.replace("global_defs {\n", "global_defs {\n    vrrp_rt_priority 10\n", 1)


def _config(tmp: str, load: bool) -> str:
    if not load:
        return host_config(LabSpec(instances=N, version=3, advert_int=ADVERT_MS / 1000,
                                   notify_fifo="@FIFO@"), 0, priority=200)
    sleeper = os.path.join(tmp, "sleep10")
    with open(sleeper, "w") as f:
        f.write("#!/bin/sh\nexec sleep 10\n")
    os.chmod(sleeper, 0o755)
    spec = LabSpec(instances=N, version=3, advert_int=ADVERT_MS / 1000, notify_fifo="@FIFO@",
                   extra_instance=f"notify_master {sleeper}\n    notify_backup {sleeper}\n"
                                  f"    notify {sleeper}")
    text = host_config(spec, 0, priority=200)
    scripts = "".join(f"vrrp_script chk_{k} {{\n    script \"/bin/sleep 5\"\n    interval 1\n"
                      f"    timeout 0.5\n    weight -10\n}}\n" for k in range(SCRIPTS))
    for i in range(N):
        head = f"vrrp_instance VI_{i} {{\n"
        text = text.replace(
            head, head + f"    track_script {{\n        chk_{i % SCRIPTS}\n    }}\n", 1)
    return scripts + text


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# "none": the same 1,000 instances without scripts, the baseline that tells a
# stall caused by scripts from one the engine has anyway.  Each gets up to
# GAP_RUNS runs (advert_capture.gaps_within).  A gap is charged to the daemon
# less the time a CPU stalled while its advert was due (advert_capture.charged_ms):
# the VM's own stalls reach past the bound's 5 ms of slack.  The daemon's own
# kernel work (VIP adds) is done with the transitions, before the gaps that
# follow them come due.
@pytest.mark.parametrize("load", ["none", "scripts"])
def test_adverts_keep_time_while_scripts_hang(lan, tmp_path, load):
    gaps_within(lambda run: measure_gaps(lan, tmp_path / f"run{run}", load == "scripts")[:2],
                BOUND_MS if load == "scripts" else BASELINE_BOUND_MS)


def test_parallel_scrapes_keep_adverts_on_time(lan, tmp_path):
    """Issue 17: 10 clients scraping /metrics back to back for the whole window
    at 1,000 instances with 100 ms adverts: no advert later than 110 ms, and the
    peer (vrrpd on host 1, the same instances at priority 100) never takes over.
    Rendering runs off the loop from a snapshot the loop copies in slices."""
    def measure(run):
        worst, report, peer_masters, storm = measure_gaps(lan, tmp_path / f"run{run}", False,
                                                          scrapes=True)
        assert storm["codes"].get("200", 0) >= 10 and storm["max_size"] > 1_000_000, storm
        assert peer_masters == [], f"the peer took over {len(peer_masters)} instances"
        return worst, f"{report} {storm}"
    gaps_within(measure, BASELINE_BOUND_MS)


def measure_gaps(lan, tmp, scripts: bool, scrapes: bool = False):
    """Run the daemon with N instances on host 0, capture on host 1: -> the largest
    gap between adverts of one instance (ms), a report, and with `scrapes` (a
    peer on host 1, 10 scrapers of /metrics on host 0) the instances the peer
    made MASTER and the scrapers' summary."""
    tmp.mkdir()
    spec = LabSpec(instances=N)
    net = lan(hosts=2, nics=spec.nics)
    settled = settle()
    out = str(tmp / "gaps.json")
    d = DaemonProc(net.hosts[0], "vrrpd", config(str(tmp), scripts), str(tmp),
                   extra_args=("--metrics", METRICS) if scrapes else ())
    cap = net.hosts[1].popen(sys.executable, WIRE_GAPS, str(WINDOW), out,
                             stdout=subprocess.PIPE, text=True)
    assert cap.stdout.readline().strip() == "ready"
    peer = storm = None
    if scrapes:
        # At normal priority: its start-up must not take a CPU from the master.
        peer = DaemonProc(net.hosts[1], "vrrpd", host_config(
            LabSpec(instances=N, version=3, advert_int=ADVERT_MS / 1000, notify_fifo="@FIFO@"),
            1, priority=100), str(tmp), tag="peer", detail=False)
    try:
        d.start()
        wait_for(lambda: sum(s == "MASTER" for s in d.states().values()) == N, 30,
                 what=f"{N} instances MASTER")
        if peer is not None:        # started once the master is: it must never take over
            peer.start()
            peer.wait_all([f"VI_{i}" for i in range(N)], "BACKUP", timeout=30)
            storm = net.hosts[0].popen(sys.executable, SCRAPE_STORM, f"http://{METRICS}/metrics",
                                       "10", str(MEASURED_S), stdout=subprocess.PIPE, text=True)
        assert cap.wait(WINDOW + 30) == 0
        d.check_alive()
        if storm is not None:
            storm_out, _ = storm.communicate(timeout=60)
            storm = json.loads(storm_out)
    finally:
        d.stop()
        if peer is not None:
            peer.stop()
    with open(out) as f:
        result = json.load(f)
    stats = result["stats"]
    assert stats["drops"] == 0, stats
    times = result["times_ns"]
    assert len(times) == N, f"adverts of {len(times)} instances captured"
    assert min(len(v) for v in times.values()) >= MEASURED_S * 1000 / ADVERT_MS, \
        "window too short"
    stalls = result["stalls_ns"]
    gaps = [((b - a) / 1e6, k, a, b) for k, v in times.items() for a, b in zip(v, v[1:])]
    pooled = [g for g, *_ in gaps]
    charged, _, key, start, end = max((charged_ms(g, a, b, stalls, DUE_MS), g, k, a, b)
                                      for g, k, a, b in gaps)
    peer_masters = [] if peer is None else [
        n for _, _, n, st, _ in peer.fifo.events(peer.started) if st == "MASTER"]
    return charged, (
        f"{len(pooled)} gaps over {len(times)} instances: max {max(pooled):.2f} ms, "
        f"p99 {percentile(pooled, 0.99):.2f} ms, p99.9 {percentile(pooled, 0.999):.2f} ms, "
        f"median {percentile(pooled, 0.5):.2f} ms; charged to the daemon at most "
        f"{charged:.2f} ms ({key}: {(end - start) / 1e6:.2f} ms, a CPU stalled "
        f"{machine_stall_ms(stalls, start, end):.1f} ms within); CPU stalls (ms): "
        f"{stall_lengths_ms(stalls)}; {settled}"), peer_masters, storm


def _spin(cpu: int, seconds: float, policy: int = os.SCHED_FIFO, priority: int = 99) -> None:
    os.sched_setaffinity(0, {cpu})
    os.sched_setscheduler(0, policy, os.sched_param(priority))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def probed_spin(*spin_args) -> tuple[int, list[list[list[int]]]]:
    """_spin(cpu, *spin_args) on this process's first CPU, in a child, while the
    stall probes run: -> (when it began (ns), the stalls per CPU, that CPU first)."""
    wire_gaps = load_wire_gaps()
    cpus = sorted(os.sched_getaffinity(0))
    spinner = multiprocessing.get_context("fork").Process(target=_spin,
                                                          args=(cpus[0], *spin_args))
    probes = wire_gaps.start_probes(0.5)
    time.sleep(0.2)
    t0 = time.time_ns()
    spinner.start()
    spinner.join()
    assert spinner.exitcode == 0
    return t0, wire_gaps.collect_probes(probes)


def test_stall_probe_sees_a_cpu_taken_away():
    """The stall probe reports a stall when one happens: a SCHED_FIFO 99 spinner
    pinned to its CPU for 30 ms is one."""
    t0, stalls = probed_spin(0.03)
    seen = [(s, e) for s, e in stalls[0] if e > t0]
    assert seen and 20 <= max(e - s for s, e in seen) / 1e6 <= 200, stalls[0]
    assert machine_stall_ms(stalls, t0, time.time_ns()) >= 20


def test_stall_probe_ignores_a_busy_daemon():
    """What charged_ms relies on: a task busy in user space at the daemon's
    realtime priority (vrrp_rt_priority 10, SCHED_RR) for 100 ms stalls no probe
    beyond what the machine stalls anyway."""
    t0, stalls = probed_spin(0.1, os.SCHED_RR, 10)
    assert machine_stall_ms(stalls, t0, time.time_ns()) < 20, stall_lengths_ms(stalls)
