"""vrrpd's resident memory at N instances (the target: <= 60 MiB at 10,000).

    sudo .venv/bin/python bench/rss.py [--instances 1000,10000] [--top 25] [--settle 3]

Per instance count: a host namespace joined to a peer namespace by veth pairs
(eth0..ethK, one per 255 VRIDs, no bridge), the lab's generated
keepalived.conf (vrrpd.lab.conf: VRRPv3, advert_int 0.1, one /32 VIP per
instance, state BACKUP, priority 100).  Nothing runs in the peer, so every
instance becomes MASTER after its Master_Down_Interval and holds its VIP: the
figure is a master's, with its VIPs and GARP state built.  Once every MASTER
line is on the notify fifo and `--settle` seconds have passed, prints VmRSS
(and VmHWM, the peak) from /proc/PID/status and where the resident pages are
(/proc/PID/smaps: the heap and anonymous mappings vs the mapped files).

--top K runs the daemon a second time under tracemalloc (its own overhead
makes that run's RSS meaningless) and prints the K source lines (or, with
--traceback, the K call stacks) holding the most memory after start-up.
--imports also prints what importing the daemon's modules alone costs.
Everything made is removed at the end, also on failure or Ctrl-C.  No timing
is asserted: this measures memory only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from vrrpd.lab.conf import LabSpec, host_config  # noqa: E402
from vrrpd.lab.net import Netns, new_name, sh, wait_for  # noqa: E402
from vrrpd.lab.run import DaemonProc  # noqa: E402

PREFIX = "vrss"
DUMP_SIGNAL = signal.SIGRTMIN + 7       # the traced daemon dumps its snapshot on this

# The traced daemon: vrrpd's own main() under tracemalloc, with a handler
# that writes a snapshot where argv[1] says.
_TRACED = """\
import signal, sys, tracemalloc
tracemalloc.start({frames})
path = sys.argv.pop(1)
def dump(*_):
    tracemalloc.take_snapshot().dump(path + ".tmp")
    import os
    os.rename(path + ".tmp", path)
signal.signal({sig}, dump)
from vrrpd.core.service import main
sys.exit(main())
"""

# What the running daemon imports (without --metrics), after its deferrals.
IMPORTS = ("from vrrpd.core import service; service.defer_imports(); "
           "import uvloop, vrrpd.core.daemon, vrrpd.scripts.reporting, vrrpd.ops.control, "
           "vrrpd.ops.dumps, vrrpd.core.reload, vrrpd.ops.procsched")


class Host:
    """The daemon's namespace and an idle peer namespace, joined by `nics` veth pairs."""

    def __init__(self, nics: int):
        self.ns = self.peer = None
        try:
            self.ns = Netns(new_name("h", PREFIX))
            self.peer = Netns(new_name("p", PREFIX))
            batch = []
            for n in range(nics):
                sh("ip", "link", "add", "name", f"eth{n}", "netns", self.ns.name, "type", "veth",
                   "peer", "name", f"eth{n}", "netns", self.peer.name)
                batch.append(f"link set eth{n} up\naddr add 198.18.{n}.10/24 dev eth{n}\n")
            self.ns.run("ip", "-batch", "-", input="".join(batch))
            self.peer.run("ip", "-batch", "-", input="".join(
                f"link set eth{n} up\n" for n in range(nics)))
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        for ns in (self.ns, self.peer):
            if ns is not None:
                ns.delete()


def status(pid: int) -> dict[str, int]:
    """The Vm* lines of /proc/PID/status, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM", "RssAnon", "RssFile")):
                key, value = line.split(":")
                out[key] = int(value.split()[0])
    return out


def smaps(pid: int) -> dict[str, int]:
    """Resident kB per kind of mapping: heap, other anonymous memory, and each mapped file."""
    kinds: dict[str, int] = {}
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":"):           # a mapping's header line
                name = head[5] if len(head) > 5 else "[anon]"
                if name.startswith("/"):
                    name = os.path.basename(name)
            elif head[0] == "Rss:":
                kinds[name] = kinds.get(name, 0) + int(head[1])
    return kinds


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def run_daemon(n: int, workdir: str, settle: float, binary: str | None = None,
               extra: tuple = (), on_settled=None) -> dict:
    spec = LabSpec(instances=n, version=3, advert_int=0.1, notify_fifo="@FIFO@")
    host = Host(spec.nics)
    d = None
    try:
        conf = host_config(spec, 1, priority=100, state="BACKUP")
        d = DaemonProc(host.ns, "vrrpd", conf, workdir, binary=binary, detail=False,
                       extra_args=extra)
        t0 = time.monotonic()
        d.start()
        d.wait_all([f"VI_{i}" for i in range(n)], "MASTER", timeout=120 + n * 0.02)
        up = time.monotonic() - t0
        time.sleep(settle)
        d.check_alive()
        pid = d.main_pid()
        out = {"instances": n, "startup_s": up, "status": status(pid), "smaps": smaps(pid)}
        if on_settled is not None:
            out["extra"] = on_settled(pid)
        return out
    finally:
        if d is not None:
            d.stop()
        host.delete()


def report(r: dict) -> None:
    st = r["status"]
    print(f"{r['instances']:>6} instances: VmRSS {mib(st['VmRSS'])} (peak VmHWM "
          f"{mib(st['VmHWM'])}; anon {mib(st['RssAnon'])}, files {mib(st['RssFile'])}); "
          f"all MASTER after {r['startup_s']:.1f} s")
    kinds = sorted(r["smaps"].items(), key=lambda kv: -kv[1])
    print("        resident by mapping: " + ", ".join(f"{k} {mib(v)}" for k, v in kinds[:8]))


def traced(n: int, workdir: str, settle: float, top: int, frames: int, by: str,
           keep: str | None = None) -> None:
    import tracemalloc

    path = os.path.join(workdir, "traced-vrrpd")
    with open(path, "w") as f:
        f.write(f"#!{sys.executable}\n" + _TRACED.format(frames=frames, sig=int(DUMP_SIGNAL)))
    os.chmod(path, 0o755)
    snap = os.path.join(workdir, f"snapshot-{n}")

    def take(pid: int):
        os.kill(pid, DUMP_SIGNAL)
        wait_for(lambda: os.path.exists(snap), 60, what="tracemalloc snapshot")
        return tracemalloc.Snapshot.load(snap)

    # DaemonProc puts the binary first, then vrrpd's options: the snapshot path goes first.
    wrapper = os.path.join(workdir, "traced")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec {path} {snap} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    r = run_daemon(n, workdir, settle, binary=wrapper, on_settled=take)
    if keep:
        shutil.copy(snap, keep)
    s = r["extra"].filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    stats = s.statistics(by)
    total = sum(x.size for x in stats)
    print(f"  tracemalloc at {n} instances: {total / 2**20:.1f} MiB traced in Python "
          f"allocations; top {top} by {by}:")
    for x in stats[:top]:
        print(f"    {x.size / 2**20:7.2f} MiB {x.count:>8} blocks  ", end="")
        if by == "traceback":
            print("\n      " + "\n      ".join(x.traceback.format()[-2 * frames:]))
        else:
            print(x.traceback[0])


def imports() -> None:
    p = subprocess.run([sys.executable, "-c", IMPORTS + "; import sys; print(len(sys.modules));"
                        "print(open('/proc/self/status').read())"],
                       capture_output=True, text=True, check=True)
    lines = p.stdout.splitlines()
    rss = next(int(x.split()[1]) for x in lines if x.startswith("VmRSS"))
    print(f"imports alone: VmRSS {mib(rss)}, {lines[0]} modules")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", default="1000,10000", help="comma-separated counts")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to wait after the last MASTER line before reading RSS")
    ap.add_argument("--top", type=int, default=0,
                    help="also print the K largest tracemalloc entries (second, traced run)")
    ap.add_argument("--traceback", type=int, default=0, metavar="FRAMES",
                    help="with --top: group by call stacks of this many frames, not by line")
    ap.add_argument("--snapshot", metavar="PATH",
                    help="with --top: keep the tracemalloc snapshot there "
                         "(tracemalloc.Snapshot.load)")
    ap.add_argument("--imports", action="store_true", help="also measure the imports alone")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    if args.imports:
        imports()
    workdir = tempfile.mkdtemp(prefix="vrrpd-rss-")
    try:
        for n in (int(x) for x in args.instances.split(",") if x):
            report(run_daemon(n, workdir, args.settle))
            if args.top:
                by = "traceback" if args.traceback else "lineno"
                traced(n, workdir, args.settle, args.top, max(1, args.traceback), by,
                       args.snapshot and f"{args.snapshot}.{n}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
