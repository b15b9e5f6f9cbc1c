"""vrrpd vs keepalived at scale: steady-state cost and failover latency, in both lab topologies.

    sudo .venv/bin/python bench/compare.py [--topology p2p,switch] [--instances 1000,2000]
                                           [--scenario crash,graceful,link-down,vip-delete]

For each topology and instance count, runs `vrrpd-lab failover` with both
daemons in one invocation per scenario (same generated config, 100 ms VRRPv3
adverts; a fresh lab per scenario and daemon) and writes into bench/results/:
failover-TOPOLOGY-N.json (the lab's JSON, with the kernel floor and the wire's
forwarding rate), failover-TOPOLOGY-N.png (CDF of per-instance takeover times),
and results.md, a table built from every failover-*-*.json there, so runs of
subsets add up.  Needs root (network namespaces) and the lab extra (matplotlib).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vrrpd.lab.conf import LabSpec  # noqa: E402
from vrrpd.lab import failover  # noqa: E402
from vrrpd.lab.report import PlotUnavailable, plot_result, require_matplotlib  # noqa: E402
from vrrpd.lab.testbed import FAULTS, OBSERVE, SCENARIOS, TOPOLOGIES, Testbed  # noqa: E402

MAX_SETUP = Testbed.MAX_SETUP

RESULTS = os.path.join(HERE, "results")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def ms(x) -> str:
    return "–" if x is None else f"{1000 * x:.0f}"


def result_path(out: str, topology: str, n: int, ext: str = "json") -> str:
    return os.path.join(out, f"failover-{topology}-{n}.{ext}")


def run_one(topology: str, n: int, args) -> dict:
    spec = LabSpec(instances=n, version=3, advert_int=args.advert_int)
    t0 = time.monotonic()
    # A fresh lab per scenario: no failover inherits the state of a previous one.
    result = None
    for scenario in args.scenario:
        r = failover.run(args.daemon, spec, [scenario], args.repeat, args.window,
                         progress=not args.quiet, topology=topology, observe=args.observe)
        for d in r["daemons"].values():
            if "error" in d:        # kept per scenario: a later scenario's lab may work
                d["errors"] = {scenario: d.pop("error")}
        per = {k: r[k] for k in ("date", "machine", "kernel_floor", "wire")}
        if result is None:
            result = r
            result["per_scenario"] = [per]
            continue
        result["scenarios"].append(scenario)
        result["per_scenario"].append(per)
        for kind, d in r["daemons"].items():
            into = result["daemons"][kind]
            if "steady" not in into and "steady" in d:
                into.update({k: v for k, v in d.items()
                             if k not in ("failovers", "pooled", "errors")})
            into["failovers"] += d["failovers"]
            into["pooled"].update(d["pooled"])
            into.setdefault("errors", {}).update(d.get("errors", {}))
    result["wall_s"] = round(time.monotonic() - t0, 1)
    with open(result_path(args.out, topology, n), "w") as f:
        json.dump(result, f)
    return result


COLUMNS = 19


def order(r: dict):
    return (TOPOLOGIES.index(r.get("topology", "switch")), r["spec"]["instances"])


def ratio(x) -> str:
    return "–" if x is None else f"{x:.2f}×"


def table(results: list[dict]) -> str:
    rows = ["| topology | instances | daemon | master CPU % | backup CPU % "
            "| µs CPU / advert (master) | master RSS MiB | start-up s | scenario | first ms "
            "| median ms | p99 ms | last ms | protocol ms | kernel floor ms "
            "| batched floor ms | last / (protocol + floor) | first advert ms | missing |",
            "|" + "---|" * COLUMNS]
    for r in sorted(results, key=order):
        n = r["spec"]["instances"]
        topo = r.get("topology", "switch")
        for kind, d in r["daemons"].items():
            errors = dict(d.get("errors", {}))
            if "error" in d:                    # files written before per-scenario errors
                errors = {s: d["error"] for s in r["scenarios"]}
            for scenario, error in errors.items():
                rows.append(f"| {topo} | {n} | {kind} | {scenario}: {error} |"
                            + " |" * (COLUMNS - 4))
            if "steady" not in d:
                continue
            st = d["steady"]
            floor = d.get("kernel_floor", {}).get("vip_add_s")
            batched = d.get("kernel_floor", {}).get("vip_add_batched_s")
            for f in d["failovers"]:
                t = f["takeover"]
                rows.append(
                    f"| {topo} | {n} | {kind} | {st['master']['cpu_pct']:.1f} "
                    f"| {st['backup']['cpu_pct']:.1f} | {st['master']['cpu_us_per_advert']:.1f} "
                    f"| {st['master']['rss_kb'] / 1024:.1f} | {d['startup_s']:.1f} "
                    f"| {f['scenario']} | {ms(t['first'])} | {ms(t['median'])} | {ms(t['p99'])} "
                    f"| {ms(t['last'])} | {ms(f.get('protocol_s'))} "
                    f"| {ms(f.get('kernel_floor_s', floor))} | {ms(batched)} "
                    f"| {ratio(f.get('last_vs_floor'))} | {ms(f['first_advert']['first'])} "
                    f"| {f['missing']} |")
    return "\n".join(rows)


def wire_table(results: list[dict]) -> str:
    """Per run: the wire's own rate for a takeover-sized burst and the load it ran under."""
    rows = ["| topology | instances | scenario | burst frames | wire frames/s | lost "
            "| load average (1/5/15 min) |", "|" + "---|" * 7]
    for r in sorted(results, key=order):
        for scenario, p in zip(r["scenarios"], r.get("per_scenario") or [r]):
            w = p.get("wire") or {}
            load = "/".join(f"{x:.1f}" for x in p.get("machine", {}).get("loadavg", []))
            rows.append(f"| {r.get('topology', 'switch')} | {r['spec']['instances']} | {scenario} "
                        f"| {w.get('frames', '–')} | {w.get('frames_per_s') or '–'} "
                        f"| {w.get('lost', '–')} | {load or '–'} |")
    return "\n".join(rows)


def ratios(results: list[dict]) -> str:
    lines = []
    for r in sorted(results, key=order):
        d = r["daemons"]
        if all("steady" in d.get(k, {}) for k in ("vrrpd", "keepalived")):
            v = d["vrrpd"]["steady"]["master"]["cpu_us_per_advert"]
            k = d["keepalived"]["steady"]["master"]["cpu_us_per_advert"]
            if k:
                lines.append(f"- {r.get('topology', 'switch')}, "
                             f"{r['spec']['instances']} instances: "
                             f"vrrpd's master CPU per advert "
                             f"is {v / k:.2f}× keepalived's ({v:.1f} vs {k:.1f} µs).")
    return "\n".join(lines)


NOTES = """## Notes from the old switch lab (before the p2p topology and keepalived's -G)

These were measured in the switch topology while keepalived still logged every line to
syslog, which on a machine without a syslog daemon goes to /dev/console: keepalived's
takeover times from then are not comparable with the tables above.

- Steady state: multicast adverts leave as prebuilt Ethernet frames on a packet socket
  (`vrrpd --advert-tx frame`, the default), which skips the kernel's IP output path (route
  lookup, header, neighbour) that was ~85 % of a master's time; at 10,000 instances the
  master went from 54-55 % to 33 % of a core in the same lab (`--advert-tx ip` vs `frame`).
  Timer-heap entries carry their deadline, and a frame's headers sit in room before the
  advert (one iovec per frame). What is left on the master is mostly the kernel's packet
  send (copying each frame into an skb, the qdisc, the veth and its NAPI wake-up here).
- The lab's host ports now have a transmit queue (pfifo, 1,000 packets) as a NIC has.
  Without one, a burst beyond the 256 packets of a NAPI veth's ring was dropped: 38-103
  of the 250 priority-0 adverts per port of a graceful shutdown at 2,000 instances, whose
  backups then waited a Master_Down_Interval. The queue costs both daemons CPU per packet
  (at 2,000: vrrpd's master 6.9 % before, 8.3-8.7 % now; keepalived's 21.3 % -> 25.8-27.3 %;
  the ratio per advert 0.32 before, 0.31-0.32 now), so CPU figures before this change are
  not comparable.
- Steady state, backup: above 2,000 adverts/s vrrpd reads its sockets every 5 ms instead
  of waking per readable socket.
- Failover: the engine's transitions and the new master's first adverts are on time (the
  "first advert" column). After them comes per-instance work in Python on one core,
  ~50-70 us per instance: the VIP netlink batch (kernel time), announcements and GARPs, the
  notify hook with its fifo line. VIPs are added by a thread of their own (so that another
  process holding the RTNL lock does not hold the loop), in netlink sends of ~5 ms of the
  kernel's work (a send does not reschedule: 1,024 VIPs held a CPU 13 ms). Crash at
  2,000, 5 runs each, first to last instance MASTER: 139 ms with one send of up to 1,024
  VIPs on the loop; from the thread 153 ms with 2 ms sends, 140 ms with 5 ms (ACKs then
  parsed in the thread too), 128 ms with 8 ms (ACKs on the loop, as now); the fault's
  phase in the advert cycle moves "last" by up to 100 ms between runs. The vrrpd rows
  above were measured with the ACKs parsed in the thread (the last change came after).
  Graceful at 2,000: all 2,000 transitions fall due together, Skew_Time after the
  priority-0 adverts, and their VIPs go in before their MASTER lines; the kernel alone
  needs 70-80 ms of system time to add 2,000 /32 addresses (`ip -batch`, 2,000
  `addr add` in a namespace), more than the 20 ms the target leaves.
- The priority-0 burst of a shutdown and the first adverts of a takeover can overrun a
  device queue: such sends are kept and retried every ms instead of being lost (a lost
  priority 0 costs Master_Down_Interval instead of Skew_Time).
"""


TIMED_BY = {      # how a run was observed -> until when its failover times run
    "all": """the instance is MASTER on the backup (notify-fifo line) *and*
  its VIP is there (netlink, `ip monitor`), whichever comes later. "first advert" is
  the new master's first advert on the wire (kernel timestamp at the bridge).""",
    "fifo": """the instance's MASTER line on the backup's notify fifo (`--observe
  fifo`: no address monitor and no wire capture share the CPUs with the daemons; both write
  the line after adding the VIP, tests/test_takeover_order.py). No first adverts recorded.""",
}


def write_markdown(out: str) -> str:
    results = []
    for path in glob.glob(os.path.join(out, "failover-*-*.json")):
        with open(path) as f:
            results.append(json.load(f))
    results.sort(key=order)
    if not results:
        return ""
    names = [f"failover-{r['topology']}-{r['spec']['instances']}.png" for r in results]
    for r, name in zip(results, names):
        plot_result(r, os.path.join(out, name))
    first = results[0]
    plots = "\n".join(f"![{r['topology']}, {r['spec']['instances']} instances]({name})"
                      for r, name in zip(results, names))
    text = f"""# vrrpd vs keepalived: failover and steady-state cost

Generated by `bench/compare.py` ({', '.join(sorted({r['date'][:10] for r in results}))}) on a
{first['machine']['cpus']}-core machine, kernel {first['machine']['kernel']}; both daemons
on the same generated keepalived.conf (VRRPv3, IPv4 multicast, advert
{first['spec']['advert_int']:g} s, one VIP per instance, 255 VRIDs per interface), master
priority 150, backup 100, each router in its own network namespace. Topologies: p2p, the
two routers joined directly by veth pairs (ceil(N/255) links, instances spread evenly: 250
VRIDs per link at 10,000), no bridge and no qdisc; switch, a bridge per link in a namespace
of its own, its ports polled in NAPI kernel threads, the hosts' ports with a 1,000-packet
pfifo as a NIC has. keepalived runs with -G (its log to the lab's file only, as vrrpd's).

- CPU % (utime+stime from /proc/PID/stat over a
  {first['daemons']['vrrpd']['steady']['window_s']:.0f} s steady-state window) and RSS
  (VmRSS) count the daemon's whole process tree: keepalived's parent and VRRP child,
  vrrpd's one process. The JSON also has the VRRP process alone (`cpu_pct_vrrp`).
  µs CPU / advert: the master's CPU time divided by the adverts it should have sent.
- Failover times are from the fault (crash: kill -9 of the master's process group;
  graceful: SIGTERM) until {TIMED_BY[first.get('observe', 'all')]}
- Protocol time: Master_Down_Interval for crash and link-down, Skew_Time for graceful
  and vip-delete.
  Kernel floor: `ip -batch` adding the run's N /32 VIPs on the backup's links, measured in
  every lab before the daemons start (best of 3); "batched floor": the same adds in sends
  of many messages each, as vrrpd sends them (`vrrpd.lab.nlfloor`), the kernel's work with
  less syscall cost. "last / (protocol + floor)" (the `ip -batch` floor) near 1 means
  nothing but VRRP's own wait and the kernel's work; a crash's fault falls anywhere in the
  advert cycle, so it can be below 1. Both routers, the lab and its observers share the
  machine's cores; the load average of each run is in the wire table.
- link-down: switch, the master's links go down; p2p, the master's NICs drop every frame
  (nftables netdev hooks), as a cable cut behind a switch (downing a veth would take the
  backup's carrier too).
- vip-delete (not run by default): every VIP deleted on the master from outside, in one
  `ip -batch`; each instance answers with priority 0 and BACKUP (keepalived's answer).
- The wire: each lab sends a burst of the takeover's size (an advert and a GARP per
  instance) from the backup's links to the master's and reports the frames/s it drains.
- The switch's bridge ports poll in NAPI kernel threads (`vrrpd.lab.testbed.thread_wire`):
  otherwise a veth carries each sent packet through the bridge and into the receiving
  host's socket inside the sender's system call, and the sender is charged for the switch
  and the receiver's kernel (about half of a vrrpd master's time at 2,000 instances).
  Results before this change (up to the first session) are not comparable for CPU.
- Both daemons run without `-D` (default log level). A daemon that has not brought all
  instances to MASTER (master host) or BACKUP (backup host) within
  {MAX_SETUP:.0f} s of its start is reported with that error instead of numbers: it never
  reached a steady state to measure.

{table(results)}

{ratios(results)}

### The wire, and the machine's load, per run

{wire_table(results)}

{NOTES}

{plots}
"""
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--topology", type=words, default=list(TOPOLOGIES))
    p.add_argument("--instances", type=ints, default=[1000, 2000, 5000, 10000])
    p.add_argument("--daemon", type=words, default=["vrrpd", "keepalived"])
    p.add_argument("--scenario", type=words, default=list(FAULTS))
    p.add_argument("--advert-int", type=float, default=0.1)
    p.add_argument("--window", type=float, default=10.0, help="steady-state window, seconds")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--observe", choices=OBSERVE, default="all",
                   help="as vrrpd-lab failover's: all, or the notify fifo alone")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild results.md and the plots from the JSON files there")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("compare.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    bad = [t for t in args.topology if t not in TOPOLOGIES] + \
        [s for s in args.scenario if s not in SCENARIOS]
    if bad:
        print(f"compare.py: unknown {', '.join(bad)}", file=sys.stderr)
        return 2
    try:
        require_matplotlib()
    except PlotUnavailable as e:
        print(f"compare.py: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    for topology in [] if args.report_only else args.topology:
        for n in args.instances:
            result = run_one(topology, n, args)
            print(f"{topology}, {n} instances done in {result['wall_s']} s", file=sys.stderr)
            failover.print_summary(result)
    write_markdown(args.out)
    print(f"wrote {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
