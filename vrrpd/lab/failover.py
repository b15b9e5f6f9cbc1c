"""`vrrpd-lab failover`: steady-state cost and failover latency of one daemon kind.

Per failover and instance, the takeover time is the later of two
independent observations on the backup, both measured from the fault:
its MASTER line on the notify fifo (stamped when read) and its VIP appearing
in netlink (`ip monitor`).  The first advert of the new master on the
wire (kernel timestamp at the switch, or as it leaves the backup's NIC on a
direct link) is reported beside it.

Every lab also measures the kernel floor: the time `ip -batch` needs to add
the run's N VIPs on the backup's NICs.  Each "last" is reported as a multiple
of the protocol time (Master_Down_Interval; Skew_Time for graceful) plus it.
Beside it the lab reports the same adds in batched sends (many messages per
sendmsg(), as vrrpd sends them), the kernel's own work with less syscall cost.

`--observe fifo` times each instance by its MASTER line alone: on a machine
of few cores the address monitor and the wire capture take CPU the daemons
would otherwise have.  Both daemons write the line after adding the VIP
(tests/test_takeover_order.py), so the line alone is no earlier than the VIP.
"""
from __future__ import annotations

import datetime
import os
import subprocess
import sys
import time
from typing import Any

from .. import __version__
from vrrpd.lab.conf import LabSpec
from vrrpd.lab.run import cpu_seconds, rss_kb
from .report import Progress, summary
from .testbed import BACKUP_PRIORITY, Testbed, master_down_interval, protocol_time, skew_time

CPU_ACCOUNTING = ("cpu_pct / rss_kb: the daemon's whole process tree (keepalived: parent + "
                  "VRRP child; vrrpd: one process); cpu_pct_vrrp / rss_kb_vrrp: the process "
                  "doing VRRP (keepalived's VRRP child, vrrpd itself)")


def daemon_version(d) -> str:
    out = subprocess.run([d.binary, "--version"], capture_output=True, text=True)
    text = (out.stdout + out.stderr).strip().splitlines()
    return text[0] if text else "?"


def steady_state(tb: Testbed, window: float) -> dict:
    """CPU % over `window` seconds and RSS at its end, per host, from /proc."""
    trees = [(d, d.pids(), d.vrrp_pid()) for d in tb.daemons]
    before = {p: cpu_seconds(p) for _, pids, _ in trees for p in pids}
    t0 = time.monotonic()
    time.sleep(window)
    after = {p: cpu_seconds(p) for p in before}
    dt = time.monotonic() - t0
    adverts = tb.spec.instances * dt / tb.spec.advert_int
    hosts = {}
    for role, (_, pids, vpid) in zip(("master", "backup"), trees):
        cpu = sum(after[p] - before[p] for p in pids)
        hosts[role] = {
            "pids": pids,
            "cpu_pct": round(100 * cpu / dt, 2),
            "cpu_pct_vrrp": round(100 * (after.get(vpid, 0) - before.get(vpid, 0)) / dt, 2),
            "rss_kb": sum(rss_kb(p) for p in pids),
            "rss_kb_vrrp": rss_kb(vpid),
            # master: per advert sent; backup: per advert received
            "cpu_us_per_advert": round(1e6 * cpu / adverts, 3),
        }
    return {"window_s": round(dt, 3), "adverts_per_s": tb.spec.instances / tb.spec.advert_int,
            **hosts}


def send_rate(times) -> float | None:
    t = sorted(times)
    return round(len(t) / (t[-1] - t[0])) if len(t) > 1 and t[-1] > t[0] else None


def versus_floor(last: float | None, protocol_s: float, floor_s: float) -> float | None:
    """A "last" as a multiple of protocol time + kernel floor (1.0: nothing but the two)."""
    return None if last is None else round(last / (protocol_s + floor_s), 3)


def one_failover(tb: Testbed, scenario: str, repeat: int, progress: bool = True,
                 restore: bool = True, floor_s: float = 0.0) -> dict:
    """Fault the master, time the takeover, then (restore=True) bring the master back."""
    spec = tb.spec
    timeout = 20 + 10 * master_down_interval(spec, BACKUP_PRIORITY) + spec.instances * 0.005
    capture = tb.capture(timeout + 10) if tb.observe == "all" else None
    bar = Progress(f"{tb.kind} {scenario} #{repeat + 1}", spec.instances) if progress else None
    if capture is not None:
        capture.arm()
    t0 = tb.fault(scenario)
    fifo, vips = tb.wait_takeover(t0, timeout, bar)
    if bar:
        bar.done()
    adverts = {} if capture is None else \
        {tb.instance_of(p, v): t - t0 for (p, v), t in capture.result().items()}
    if tb.observe == "fifo":
        times = [fifo[n] - t0 if n in fifo else None for n in tb.names]
    else:
        times = [max(fifo[n], vips[n]) - t0 if n in fifo and n in vips else None
                 for n in tb.names]
    done = [t for t in times if t is not None]
    takeover = summary(done)
    protocol_s = protocol_time(spec, scenario)
    result = {
        "scenario": scenario,
        "repeat": repeat,
        "takeover": takeover,
        "protocol_s": protocol_s,
        "kernel_floor_s": floor_s,
        "last_vs_floor": versus_floor(takeover["last"], protocol_s, floor_s),
        "fifo_master": summary(t - t0 for t in fifo.values()),
        "vip_added": summary(t - t0 for t in vips.values()),
        "first_advert": summary(adverts.values()),
        # How fast the new master put its first adverts out, beside the wire's own rate.
        "advert_send_per_s": send_rate(adverts.values()),
        "missing": len(times) - len(done),
        "wire_packets": None if capture is None else capture.packets,
        "times": [None if t is None else round(t, 6) for t in times],
    }
    if restore:
        try:
            t_restore = time.monotonic()
            result["restore_s"] = round(tb.restore(scenario), 3)
            result["restore_flaps"] = tb.settle(t_restore)
        except (AssertionError, RuntimeError) as e:
            result["restore_error"] = str(e).splitlines()[0]
    return result


def measure(kind: str, spec: LabSpec, scenarios: list[str], repeat: int = 1,
            window: float = 5.0, binary: str | None = None, progress: bool = True,
            topology: str = "p2p", observe: str = "all") -> dict:
    """Everything `failover` reports for one daemon kind."""
    tb = Testbed(spec, kind, binary, topology=topology, observe=observe)
    try:
        floor = tb.kernel_floor()           # before the daemons: nothing else on the NICs
        wire = tb.forwarding_rate()
        bar = Progress(f"{kind} start", 2 * spec.instances) if progress else None
        startup = tb.start(bar)
        if bar:
            bar.done()
        time.sleep(1 + 3 * spec.advert_int)         # let start-up GARPs and timers settle
        result: dict[str, Any] = {
            "binary": tb.master.binary, "daemon_version": daemon_version(tb.master),
            "kernel_floor": floor, "wire": wire, "startup_s": round(startup, 3),
            "steady": steady_state(tb, window), "failovers": []}
        plan = [(r, s) for r in range(repeat) for s in scenarios]
        for k, (r, scenario) in enumerate(plan):
            f = one_failover(tb, scenario, r, progress, restore=k < len(plan) - 1,
                             floor_s=floor["vip_add_s"])
            result["failovers"].append(f)
            if "restore_error" in f:
                break                   # the master did not come back: nothing more to fault
        result["pooled"] = {
            s: summary(t for f in result["failovers"] if f["scenario"] == s
                       for t in f["times"] if t is not None)
            for s in scenarios}
        return result
    finally:
        tb.close()


def run(kinds: list[str], spec: LabSpec, scenarios: list[str], repeat: int = 1,
        window: float = 5.0, binary: str | None = None, progress: bool = True,
        topology: str = "p2p", observe: str = "all") -> dict:
    daemons = {k: measure_or_error(k, spec, scenarios, repeat, window,
                                   binary if k == "vrrpd" else None, progress, topology,
                                   observe)
               for k in kinds}
    return {
        "tool": "vrrpd-lab failover",
        "vrrpd_version": __version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                    "loadavg": os.getloadavg()},
        "topology": topology,
        "observe": observe,
        "spec": {"instances": spec.instances, "advert_int": spec.advert_int,
                 "version": spec.version, "family": spec.family},
        "scenarios": scenarios,
        "repeat": repeat,
        "cpu_accounting": CPU_ACCOUNTING,
        "expected": {"master_down_interval_s": master_down_interval(spec, BACKUP_PRIORITY),
                     "skew_time_s": skew_time(spec, BACKUP_PRIORITY)},
        "kernel_floor": pooled_floor(daemons),
        "wire": pooled_wire(daemons),
        "daemons": daemons,
    }


def pooled_wire(daemons: dict) -> dict | None:
    """The run's forwarding rate for a takeover-sized burst: the slowest lab's."""
    rates = [d["wire"] for d in daemons.values() if d.get("wire", {}).get("frames_per_s")]
    return min(rates, key=lambda w: w["frames_per_s"]) if rates else None


def pooled_floor(daemons: dict) -> dict | None:
    """The run's kernel floor: the best of every lab's (one lab per daemon kind)."""
    floors = [d["kernel_floor"] for d in daemons.values() if "kernel_floor" in d]
    if not floors:
        return None
    best = min(floors, key=lambda f: f["vip_add_s"])
    return {k: v for k, v in best.items() if k != "runs"}


def measure_or_error(kind: str, *args) -> dict:
    """A daemon that cannot reach a steady state (keepalived at scale) is a result too."""
    try:
        return measure(kind, *args)
    except (AssertionError, RuntimeError) as e:
        print(f"{kind}: {str(e).splitlines()[0]}", file=sys.stderr)
        return {"error": str(e).splitlines()[0], "failovers": [], "pooled": {}}


def ms(x) -> str:
    return "-" if x is None else f"{1000 * x:.0f}"


def print_summary(result: dict, out=sys.stdout) -> None:
    s = result["spec"]
    exp = result["expected"]
    print(f"{s['instances']} instances, VRRPv{s['version']}, advert {s['advert_int']:g} s, "
          f"IPv{s['family']}, {result.get('topology', 'switch')} topology; master-down "
          f"{1000 * exp['master_down_interval_s']:.0f} ms, skew {1000 * exp['skew_time_s']:.0f} ms",
          file=out)
    floor = result.get("kernel_floor")
    if floor:
        print(f"kernel floor: ip -batch adds the {floor['instances']} VIPs in "
              f"{ms(floor['vip_add_s'])} ms, deletes them in {ms(floor['vip_del_s'])} ms", file=out)
        if "vip_add_batched_s" in floor:
            print(f"  in batched sends (as vrrpd sends them): adds in "
                  f"{ms(floor['vip_add_batched_s'])} ms, deletes in "
                  f"{ms(floor['vip_del_batched_s'])} ms", file=out)
    if result.get("observe") == "fifo":
        print("observed: the backup's notify fifo alone (no `ip monitor`, no wire capture)",
              file=out)
    wire = result.get("wire")
    if wire:
        print(f"wire: a takeover-sized burst ({wire['frames']} frames) drains at "
              f"{wire['frames_per_s']:,} frames/s ({wire['lost']} lost; sender "
              f"{wire['send_frames_per_s'] or 0:,}/s)", file=out)
    print(f"{'daemon':<11}{'master cpu%':>12}{'backup cpu%':>12}{'master MiB':>11}"
          f"{'scenario':>11}{'first':>7}{'median':>7}{'p99':>7}{'last':>7}{'advert1':>8}{'n':>7}"
          f"{'last/(proto+floor)':>20}  (ms)", file=out)
    for kind, d in result["daemons"].items():
        if "error" in d:
            print(f"{kind:<11}{d['error']}", file=out)
        for scenario, error in d.get("errors", {}).items():
            print(f"{kind:<11}{scenario}: {error}", file=out)
        if "steady" not in d:
            continue
        st = d["steady"]
        for f in d["failovers"]:
            t = f["takeover"]
            print(f"{kind:<11}{st['master']['cpu_pct']:>12.1f}{st['backup']['cpu_pct']:>12.1f}"
                  f"{st['master']['rss_kb'] / 1024:>11.1f}{f['scenario']:>11}{ms(t['first']):>7}"
                  f"{ms(t['median']):>7}{ms(t['p99']):>7}{ms(t['last']):>7}"
                  f"{ms(f['first_advert']['first']):>8}{t['count']:>7}"
                  f"{ratio(f.get('last_vs_floor')):>20}", file=out)


def ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"
