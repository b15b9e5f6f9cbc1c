"""`vrrpd-lab observe`: the lab's takeover observers on a real backup router.

On two machines there is no lab to fault the master and watch the backup,
but the observers are the same: the backup's notify fifo, each line stamped
as it is read (a thread, no fork per line), and its VIPs appearing in
netlink (`ip -ts monitor address`).  Run it on the backup before the fault;
it stops when every instance of the generated config is MASTER with its VIP
(or at --timeout) and writes the lab's summaries as JSON.  Times are from
--fault (the master's clock, UNIX seconds: needs synchronised clocks), else
from the first instance's MASTER line; "spread" (first to last) needs no
clock at all.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from vrrpd.lab.conf import LabSpec, vip
from vrrpd.lab.run import FifoReader
from .report import summary
from .watch import AddrMonitor, Takeover, mono_from_wall


class HostNs:
    """The observer's own network namespace (a real router), for AddrMonitor."""

    def popen(self, *args, **kw) -> subprocess.Popen:
        return subprocess.Popen(args, **kw)


def observe(fifo_path: str, spec: LabSpec, timeout: float, fault: float | None = None,
            progress=None) -> dict:
    names = [f"VI_{i}" for i in range(spec.instances)]
    vips = [vip(spec, i) for i in range(spec.instances)]
    reader = FifoReader(fifo_path)
    monitor = AddrMonitor(HostNs())
    start = time.monotonic()
    takeover = Takeover(reader, monitor, names, vips, start)
    try:
        takeover.wait(timeout, progress)
    finally:
        monitor.close()
        reader.close()
    fifo, added = takeover.fifo, takeover.vips
    t0 = mono_from_wall(fault) if fault is not None else min(fifo.values(), default=start)
    times = sorted(max(fifo[n], added[n]) - t0 for n in names if n in fifo and n in added)
    return {"tool": "vrrpd-lab observe", "instances": spec.instances,
            "from": "fault" if fault is not None else "first MASTER line",
            "takeover": summary(times),
            "fifo_master": summary(t - t0 for t in fifo.values()),
            "vip_added": summary(t - t0 for t in added.values()),
            "spread_s": times[-1] - times[0] if times else None,
            "missing": len(names) - len(times),
            "times": [round(t, 6) for t in times]}


def observe_command(args) -> int:
    if not os.path.exists(args.fifo):
        os.mkfifo(args.fifo, 0o600)
    spec = LabSpec(instances=args.instances, family=args.family)
    print(f"observing {args.fifo} and netlink for {args.instances} takeovers; fault the master now",
          file=sys.stderr, flush=True)
    result = observe(args.fifo, spec, args.timeout, args.fault)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    t = result["takeover"]
    ms = lambda x: "-" if x is None else f"{1000 * x:.0f}"   # noqa: E731
    print(f"{t['count']} of {args.instances} MASTER with VIP (from {result['from']}): first "
          f"{ms(t['first'])} median {ms(t['median'])} last {ms(t['last'])} ms; "
          f"spread {ms(result['spread_s'])} ms")
    return 0 if result["missing"] == 0 else 1
