"""vrrpd vs keepalived at scale: steady-state cost and failover latency.

    sudo .venv/bin/python bench/compare.py [--instances 1000,2000] [--scenario crash,graceful]

For each instance count, runs `vrrpd-lab failover` (both daemons, same
generated config, 100 ms VRRPv3 adverts) and writes into bench/results/:
failover-N.json (the lab's JSON), failover-N.png (CDF of per-instance
takeover times), and results.md, a table built from every failover-*.json
there, so runs of subsets add up.  Needs root (network namespaces).
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

from vrrpd.labconf import LabSpec  # noqa: E402
from vrrpd.lab import failover  # noqa: E402
from vrrpd.lab.report import plot_result  # noqa: E402
from vrrpd.lab.testbed import Testbed  # noqa: E402

MAX_SETUP = Testbed.MAX_SETUP

RESULTS = os.path.join(HERE, "results")


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def words(text: str) -> list[str]:
    return [x for x in text.split(",") if x]


def ms(x) -> str:
    return "–" if x is None else f"{1000 * x:.0f}"


def run_one(n: int, args) -> dict:
    spec = LabSpec(instances=n, version=3, advert_int=args.advert_int)
    t0 = time.monotonic()
    # A fresh lab per scenario: no failover inherits the state of a previous one.
    result = None
    for scenario in args.scenario:
        r = failover.run(args.daemon, spec, [scenario], args.repeat, args.window)
        for d in r["daemons"].values():
            if "error" in d:        # kept per scenario: a later scenario's lab may work
                d["errors"] = {scenario: d.pop("error")}
        if result is None:
            result = r
            continue
        result["scenarios"].append(scenario)
        for kind, d in r["daemons"].items():
            into = result["daemons"][kind]
            if "steady" not in into and "steady" in d:
                into.update({k: v for k, v in d.items() if k not in ("failovers", "pooled", "errors")})
            into["failovers"] += d["failovers"]
            into["pooled"].update(d["pooled"])
            into.setdefault("errors", {}).update(d.get("errors", {}))
    result["wall_s"] = round(time.monotonic() - t0, 1)
    path = os.path.join(args.out, f"failover-{n}.json")
    if args.merge and os.path.exists(path):
        # Large sizes run one daemon per invocation (each locked run stays
        # short); the file keeps the other daemon's last result beside it.
        with open(path) as f:
            old = json.load(f)
        runs = old.get("runs", [{"date": old["date"], "daemons": list(old["daemons"])}])
        old["daemons"] = {**old["daemons"], **result["daemons"]}
        old["runs"] = runs + [{"date": result["date"], "daemons": list(result["daemons"])}]
        result = old
    with open(path, "w") as f:
        json.dump(result, f)
    return result


def table(results: list[dict]) -> str:
    rows = ["| instances | daemon | master CPU % | backup CPU % | µs CPU / advert (master) "
            "| master RSS MiB | start-up s | scenario | first ms | median ms | p99 ms | last ms "
            "| first advert ms | missing | target ms |",
            "|" + "---|" * 15]
    for r in sorted(results, key=lambda r: r["spec"]["instances"]):
        n = r["spec"]["instances"]
        exp = r["expected"]
        target = {"crash": exp["master_down_interval_s"] + 0.050,
                  "graceful": exp["skew_time_s"] + 0.020}
        for kind, d in r["daemons"].items():
            errors = dict(d.get("errors", {}))
            if "error" in d:                    # files written before per-scenario errors
                errors = {s: d["error"] for s in r["scenarios"]}
            for scenario, error in errors.items():
                rows.append(f"| {n} | {kind} | {scenario}: {error} |" + " |" * 13)
            if "steady" not in d:
                continue
            st = d["steady"]
            for f in d["failovers"]:
                t = f["takeover"]
                rows.append(
                    f"| {n} | {kind} | {st['master']['cpu_pct']:.1f} | {st['backup']['cpu_pct']:.1f} "
                    f"| {st['master']['cpu_us_per_advert']:.1f} | {st['master']['rss_kb'] / 1024:.1f} "
                    f"| {d['startup_s']:.1f} | {f['scenario']} | {ms(t['first'])} | {ms(t['median'])} "
                    f"| {ms(t['p99'])} | {ms(t['last'])} | {ms(f['first_advert']['first'])} "
                    f"| {f['missing']} | {ms(target.get(f['scenario']))} |")
    return "\n".join(rows)


def ratios(results: list[dict]) -> str:
    lines = []
    for r in sorted(results, key=lambda r: r["spec"]["instances"]):
        d = r["daemons"]
        if all("steady" in d.get(k, {}) for k in ("vrrpd", "keepalived")):
            v = d["vrrpd"]["steady"]["master"]["cpu_us_per_advert"]
            k = d["keepalived"]["steady"]["master"]["cpu_us_per_advert"]
            if k:
                lines.append(f"- {r['spec']['instances']} instances: vrrpd's master CPU per advert "
                             f"is {v / k:.2f}× keepalived's ({v:.1f} vs {k:.1f} µs).")
    return "\n".join(lines)


NOTES = """## What holds the targets back (profiles: perf record -g, py-spy)

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
- Sizes run one daemon per invocation (5,000 and 10,000 instances) merge into one
  failover-N.json; its `runs` field lists when each daemon ran.
"""


def write_markdown(out: str) -> str:
    results = []
    for path in glob.glob(os.path.join(out, "failover-*.json")):
        with open(path) as f:
            results.append(json.load(f))
    results.sort(key=lambda r: r["spec"]["instances"])
    if not results:
        return ""
    for r in results:
        plot_result(r, os.path.join(out, f"failover-{r['spec']['instances']}.png"))
    first = results[0]
    plots = "\n".join(f"![{r['spec']['instances']} instances](failover-{r['spec']['instances']}.png)"
                      for r in results)
    text = f"""# vrrpd vs keepalived: failover and steady-state cost

Generated by `bench/compare.py` ({', '.join(sorted({r['date'][:10] for r in results}))}) on a
{first['machine']['cpus']}-core machine, kernel {first['machine']['kernel']}; both daemons
on the same generated keepalived.conf (VRRPv3, IPv4 multicast, advert
{first['spec']['advert_int']:g} s, one VIP per instance, 255 VRIDs per interface), master
priority 150, backup 100, each router in its own network namespace on one bridge.

- CPU % (utime+stime from /proc/PID/stat over a {first['daemons']['vrrpd']['steady']['window_s']:.0f} s steady-state window) and RSS
  (VmRSS) count the daemon's whole process tree: keepalived's parent and VRRP child,
  vrrpd's one process. The JSON also has the VRRP process alone (`cpu_pct_vrrp`).
  µs CPU / advert: the master's CPU time divided by the adverts it should have sent.
- Failover times are from the fault (crash: kill -9 of the master's process group;
  graceful: SIGTERM) until the instance is MASTER on the backup (notify-fifo line) *and*
  its VIP is there (netlink, `ip monitor`), whichever comes later. "first advert" is
  the new master's first advert on the wire (kernel timestamp at the bridge).
- Target: crash within Master_Down_Interval + 50 ms, graceful within Skew_Time + 20 ms
  (issue 6). Both routers, the lab and its observers share the machine's cores.
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

{NOTES}

{plots}
"""
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=ints, default=[1000, 2000, 5000, 10000])
    p.add_argument("--daemon", type=words, default=["vrrpd", "keepalived"])
    p.add_argument("--scenario", type=words, default=["crash", "graceful"])
    p.add_argument("--advert-int", type=float, default=0.1)
    p.add_argument("--window", type=float, default=10.0, help="steady-state window, seconds")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--merge", action="store_true",
                   help="keep the other daemons' results already in failover-N.json")
    p.add_argument("--report-only", action="store_true",
                   help="only rebuild results.md and the plots from the JSON files there")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("compare.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    for n in [] if args.report_only else args.instances:
        result = run_one(n, args)
        print(f"{n} instances done in {result['wall_s']} s", file=sys.stderr)
        failover.print_summary(result)
    write_markdown(args.out)
    print(f"wrote {os.path.join(args.out, 'results.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
