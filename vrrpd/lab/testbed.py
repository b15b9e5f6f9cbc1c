"""A two-router lab: a master host (priority 150) and a backup (100).

Topologies: p2p joins the two routers directly with one veth pair per NIC
(nothing between the daemons but the kernel's veth transmit); switch puts a
bridge per NIC, in a namespace of its own, between them.  Both run the same
daemon kind on the same generated keepalived.conf (only router_id and
priority differ).  Every namespace carries the lab prefix, so `vrrpd-lab
cleanup` finds leftovers of a lab that was killed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from vrrpd.lab.conf import GARP_MASTER_REPEAT, LabSpec, host_config, vip
from vrrpd.lab.net import P2P, Lan, namespaces, sh, wait_for
from vrrpd.lab.run import DaemonProc
from .watch import AddrMonitor, Takeover, WireCapture

PREFIX = "vlab"
WORKDIR_PREFIX = "vrrpd-lab-"
MASTER_PRIORITY, BACKUP_PRIORITY = 150, 100
# The master fails: what bench/compare.py runs by default.
FAULTS = ("crash", "graceful", "link-down")
# ... and vip-delete: every VIP deleted on the master from outside (`ip -batch`, as a
# flush would); each instance gives up MASTER with priority 0 (keepalived's answer), so
# the backup waits Skew_Time, and the master preempts back by itself.
SCENARIOS = FAULTS + ("vip-delete",)
TOPOLOGIES = ("p2p", "switch")
# What a failover is timed by: "all" also needs each VIP in `ip monitor` and
# records the first adverts on the wire; "fifo" takes the MASTER line alone,
# so the observers' CPU (a process printing every address event, a capture
# of every advert) is not taken from the daemons on a machine of few cores.
OBSERVE = ("all", "fifo")
CUT_TABLE = "vlabcut"
QUIET_MDIS = 3      # after a restore, the backup's fifo quiet this many Master_Down_Intervals


def skew_time(spec: LabSpec, priority: int) -> float:
    # RFC 5798 6.1 (v3); RFC 3768 6.1 (v2) uses whole seconds of the same formula.
    return (256 - priority) * spec.advert_int / 256 if spec.version == 3 else (256 - priority) / 256


def master_down_interval(spec: LabSpec, priority: int) -> float:
    return 3 * spec.advert_int + skew_time(spec, priority)


def thread_wire(switch, ports: list[str]) -> None:
    """Make the switch's work its own.  A packet sent into a veth is otherwise
    carried through the bridge and into the receiving host's socket within
    the sender's system call, so the sender's CPU time includes the switch
    and the receiver's kernel (a large share of a vrrpd master's time at
    thousands of instances).  With NAPI threads on the bridge ports each daemon is
    charged what it would be on real hardware: its own send and receive."""
    switch.run(sys.executable, "-m", "vrrpd.lab.threadwire", *ports)


def queue_nics(host, nics: int) -> None:
    """Give the host's ports a transmit queue as a NIC has (pfifo: txqueuelen, 1000
    packets).  A veth has none, and a NAPI port's 256-packet ring drops whatever a burst puts
    beyond it: 38-103 of a graceful shutdown's 250 priority-0 adverts per port
    (2,000 instances), whose backups then waited a Master_Down_Interval.  With a
    qdisc the kernel stops the queue when the ring is full (veth backpressure)."""
    host.run("tc", "-batch", "-", input="".join(
        f"qdisc replace dev eth{n} root pfifo\n" for n in range(nics)))


def protocol_time(spec: LabSpec, scenario: str) -> float:
    """What VRRP itself makes the backup wait: Skew_Time after a priority-0 advert
    (graceful), Master_Down_Interval after the last advert otherwise."""
    if scenario in ("graceful", "vip-delete"):
        return skew_time(spec, BACKUP_PRIORITY)
    return master_down_interval(spec, BACKUP_PRIORITY)


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Testbed:
    def __init__(self, spec: LabSpec, kind: str, binary: str | None = None, tag: str = "f",
                 topology: str = "p2p", observe: str = "all"):
        """observe: "all" (the backup's notify fifo, its addresses by `ip monitor`
        and the wire), or "fifo" (the fifo alone; OBSERVE)."""
        if topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {topology!r}")
        if observe not in OBSERVE:
            raise ValueError(f"unknown observation {observe!r}")
        self.observe = observe
        self.spec = dataclasses.replace(spec, notify_fifo="@FIFO@", balanced=True)
        self.topology = topology
        self.kind = kind
        self.names = [f"VI_{i}" for i in range(spec.instances)]
        self.vips = [vip(spec, i) for i in range(spec.instances)]
        self.workdir = tempfile.mkdtemp(prefix=WORKDIR_PREFIX)
        self.lan: P2P | Lan | None = None
        self.daemons: list[DaemonProc] = []
        self.monitor: AddrMonitor | None = None
        try:
            if topology == "p2p":
                self.lan = P2P(nics=spec.nics, prefix=PREFIX, tag=tag)
            else:
                self.lan = Lan(hosts=2, nics=spec.nics, prefix=PREFIX, tag=tag)
                thread_wire(self.lan.switch, self.ports(0) + self.ports(1))
                for host in self.lan.hosts:
                    queue_nics(host, spec.nics)
            for i, prio in enumerate((MASTER_PRIORITY, BACKUP_PRIORITY)):
                conf = host_config(self.spec, i, priority=prio)
                # No -D: both daemons log at their default level (vrrpd's debug
                # level would log every transition of a batch one line each).
                self.daemons.append(DaemonProc(self.lan.hosts[i], kind, conf, self.workdir,
                                               binary=binary, detail=False))
            if observe == "all":
                self.monitor = AddrMonitor(self.backup.ns)
        except BaseException:
            self.close()
            raise

    @property
    def master(self) -> DaemonProc:
        return self.daemons[0]

    @property
    def backup(self) -> DaemonProc:
        return self.daemons[1]

    MAX_SETUP = 120.0   # s: a daemon not steady by then is reported as such, not waited for

    def setup_timeout(self) -> float:
        # keepalived needs seconds per thousand instances to read its config.
        return min(self.MAX_SETUP, 30 + self.spec.instances * 0.02
                   + 5 * master_down_interval(self.spec, BACKUP_PRIORITY))

    def start(self, progress=None) -> float:
        """Master first (so it wins without a contest), then the backup; returns seconds taken."""
        t0 = time.monotonic()
        n = len(self.names)
        self.master.start().wait_all(self.names, "MASTER", self.setup_timeout(), progress)
        self.backup.start().wait_all(self.names, "BACKUP", self.setup_timeout(),
                                     progress and (lambda k: progress(n + k)))
        return time.monotonic() - t0

    def ports(self, host: int) -> list[str]:
        """A host's bridge ports in the switch namespace (see labnet.Lan)."""
        return [f"h{host}n{n}" for n in range(self.spec.nics)]

    def nics(self) -> list[str]:
        return [f"eth{n}" for n in range(self.spec.nics)]

    def capture(self, timeout: float) -> WireCapture:
        """The backup's adverts: entering the switch, or (p2p) leaving its NICs."""
        if self.topology == "p2p":
            return WireCapture(self.backup.ns, self.nics(), self.spec.instances, timeout,
                               outgoing=True)
        assert isinstance(self.lan, Lan)
        return WireCapture(self.lan.switch, self.ports(1), self.spec.instances, timeout)

    def instance_of(self, port: str, vrid: int) -> int:
        m = re.search(r"\d+$", port)
        assert m is not None, port          # ports and NICs end in their number
        return self.spec.instance_of(int(m[0]), vrid)

    def kernel_floor(self, repeat: int = 3) -> dict:
        """What the kernel alone needs for the takeover's VIPs: `ip -batch` adding the run's
        N VIPs on the backup's NICs (then deleting them), before any daemon runs there;
        cpu_s is the ip process's user + system time.  Beside it, the same in batched
        sends (vrrpd.lab.nlfloor: vip_add_batched_s, vip_del_batched_s).  Best of
        `repeat`, each."""
        runs = []
        for _ in range(repeat):
            run = {}
            for op in ("add", "del"):
                batch = self._vip_batch(op)
                cpu, t = _children_cpu(), time.monotonic()
                sh("ip", "-n", self.backup.ns.name, "-batch", "-", input=batch)
                run[f"vip_{op}_s"] = round(time.monotonic() - t, 4)
                run[f"vip_{op}_cpu_s"] = round(_children_cpu() - cpu, 4)
            out = self.backup.ns.run(sys.executable, "-m", "vrrpd.lab.nlfloor",
                                     str(self._vip_plen()),
                                     input="".join(f"{a} {dev}\n"
                                                   for a, dev in self._vips_where())).stdout
            batched = json.loads(out)
            if batched["failed"]:
                raise RuntimeError(f"batched floor: the kernel refused {batched['failed']} "
                                   "VIP messages")
            run["vip_add_batched_s"] = batched["vip_add_s"]
            run["vip_del_batched_s"] = batched["vip_del_s"]
            runs.append(run)
        best = min(runs, key=lambda r: r["vip_add_s"])
        batched_best = min(runs, key=lambda r: r["vip_add_batched_s"])
        return {**best, "vip_add_batched_s": batched_best["vip_add_batched_s"],
                "vip_del_batched_s": batched_best["vip_del_batched_s"],
                "runs": runs, "instances": self.spec.instances}

    def fault(self, scenario: str) -> float:
        """Break the master; returns the monotonic time of the fault."""
        if scenario == "crash":
            return self.master.signal(signal.SIGKILL)
        if scenario == "graceful":
            return self.master.signal(signal.SIGTERM)
        if scenario == "link-down":
            return self._links(self.master, "down")
        if scenario == "vip-delete":
            return self._delete_vips(self.master)
        raise ValueError(f"unknown scenario {scenario!r}")

    def _delete_vips(self, d: DaemonProc) -> float:
        batch = self._vip_batch("del")
        t = time.monotonic()
        # -force: on past an address already gone (a daemon that missed an earlier
        # deletion keeps its instance MASTER without it).
        d.ns.run("ip", "-force", "-batch", "-", input=batch, check=False)
        return t

    def _vip_plen(self) -> int:
        return 128 if self.spec.family == 6 else 32

    def _vips_where(self) -> list[tuple[str, str]]:
        """Each instance's VIP and the NIC it is on."""
        return [(a, f"eth{self.spec.placement(i)[0]}") for i, a in enumerate(self.vips)]

    def _vip_batch(self, op: str) -> str:
        """`ip -batch` lines that `op` (add, del) every instance's VIP on its NIC."""
        plen = self._vip_plen()
        return "".join(f"addr {op} {a}/{plen} dev {dev}\n" for a, dev in self._vips_where())

    def takeover_frames(self) -> int:
        """Frames a takeover puts on the wire at once: per instance an advert and its GARPs."""
        return self.spec.instances * (1 + GARP_MASTER_REPEAT)

    def forwarding_rate(self) -> dict:
        """The wire's own rate for a burst of the takeover's size, from the backup's NICs to
        the master's (through the switch, or the direct veths), before any daemon runs."""
        from .burst import rate             # not at import: it runs as python -m
        frames = self.takeover_frames()
        rx = self.master.ns.popen(sys.executable, "-m", "vrrpd.lab.burst", "recv", "--expect",
                                  str(frames), "--timeout", "10", *self.nics(),
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout is not None        # piped
            if rx.stdout.readline().strip() != "ready":
                raise RuntimeError("burst receiver did not start")
            sent = json.loads(self.backup.ns.run(sys.executable, "-m", "vrrpd.lab.burst", "send",
                                                 "--frames", str(frames), *self.nics()).stdout)
            received = json.loads(rx.communicate(timeout=20)[0].strip().splitlines()[-1])
        finally:
            if rx.poll() is None:
                rx.kill()
        return rate(sent, received)

    def _links(self, d: DaemonProc, updown: str) -> float:
        """The master's links go down (switch), or (p2p) its cable is cut: a veth's peer
        would lose its carrier with it and the backup go to FAULT, so there the master's
        NICs drop every frame both ways (nftables netdev hooks) and keep their carrier."""
        if self.topology == "p2p":
            devs = ", ".join(self.nics())
            rules = (f"table netdev {CUT_TABLE} {{\n"
                     f"  chain out {{ type filter hook egress devices = {{ {devs} }} priority 0;"
                     " policy drop; }\n"
                     f"  chain in {{ type filter hook ingress devices = {{ {devs} }} priority 0;"
                     " policy drop; }\n}\n")
            cmd = (("nft", "-f", "-") if updown == "down"
                   else ("nft", "delete", "table", "netdev", CUT_TABLE))
            t = time.monotonic()
            d.ns.run(*cmd, input=rules if updown == "down" else None)
            return t
        batch = "".join(f"link set eth{n} {updown}\n" for n in range(self.spec.nics))
        t = time.monotonic()
        sh("ip", "-n", d.ns.name, "-batch", "-", input=batch)
        return t

    def restore(self, scenario: str) -> float:
        """Bring the master back and wait until it has preempted every instance."""
        t0 = time.monotonic()
        if scenario == "link-down":
            self._links(self.master, "up")
        elif scenario == "vip-delete":
            pass                                # it preempts them back with their VIPs
        else:
            self.master.wait_exit(30)           # graceful: let it finish its shutdown
            self.master.kill()                  # keepalived's children, if any
            self.master.start()
        self.master.wait_all(self.names, "MASTER", self.setup_timeout())
        self.backup.wait_all(self.names, "BACKUP", self.setup_timeout())
        return time.monotonic() - t0

    def settle(self, since: float) -> int:
        """After a restore: wait until the backup's notify fifo has been quiet
        for QUIET_MDIS of its Master_Down_Intervals (a backup still flapping
        must not be faulted: its figures would be the flap's), and every
        instance is BACKUP there; -> how many instances it took back to MASTER
        since `since` (0: no flap)."""
        quiet = QUIET_MDIS * master_down_interval(self.spec, BACKUP_PRIORITY)
        fifo = self.backup.fifo

        def quiet_now() -> bool:
            events = fifo.events(since)
            return time.monotonic() - (events[-1][0] if events else since) >= quiet

        wait_for(quiet_now, self.setup_timeout(), interval=0.05, what="the backup's fifo quiet")
        self.backup.wait_all(self.names, "BACKUP", self.setup_timeout())
        return len({name for _, kind, name, state, _ in fifo.events(since)
                    if kind == "INSTANCE" and state == "MASTER"})

    def wait_takeover(self, since: float, timeout: float, progress=None):
        """Per instance: MASTER fifo line on the backup, and its VIP added there
        (monotonic; observe "fifo": the line alone, no VIPs); those still without
        both after `timeout` are left out."""
        takeover = Takeover(self.backup.fifo, self.monitor, self.names, self.vips, since)
        takeover.wait(timeout, progress)
        return takeover.fifo, takeover.vips

    def close(self) -> None:
        try:
            if self.monitor:
                self.monitor.close()
            for d in self.daemons:
                d.stop()
        finally:
            if self.lan:
                self.lan.delete()           # kills whatever still runs in the namespaces
            shutil.rmtree(self.workdir, ignore_errors=True)


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every lab namespace (killing what runs in it) and stale work dirs."""
    gone = []
    for name in sorted(namespaces(prefix)):
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "delete", name, check=False)
        gone.append(name)
    if prefix != PREFIX:
        return gone                     # a subset: other labs' work dirs stay
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        if entry.startswith(WORKDIR_PREFIX):
            shutil.rmtree(os.path.join(tmp, entry), ignore_errors=True)
    return gone
