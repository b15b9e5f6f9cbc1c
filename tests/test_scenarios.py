"""Tracking, notify and sync-group scenarios, differential against keepalived.

Each scenario runs twice with the same keepalived.conf: once with vrrpd and
once with Debian's keepalived 2.2.7 as the daemon under test (DUT, host 0),
always against the same peer (keepalived, host 1, fixed priority 100).  The
timing rule happens for real (a track script starts failing, a link goes
down, preempt_delay runs out, SIGTERM) and the test records

- every fifo line of the DUT, in arrival order, and
- every notify script it started: each script appends
  `PID PPID $EPOCHREALTIME argv...` to one log.  keepalived forks its
  scripts without waiting for them, so they *finish* in any order
  (shared/README): the calls are ordered by PID, i.e. by fork order, taken
  circularly because pid_max is only 32768 here.

Both are compared with the sequence written in EXPECTED, which is what
keepalived does: the keepalived run of a scenario is the oracle that the
expectation is right, the vrrpd run that vrrpd matches it.  The notify calls
expected for a fifo line follow keepalived's rule (vrrp_notify.c):
notify_<state> with its own arguments, then the generic notify with
`INSTANCE|GROUP name STATE priority`.  Where vrrpd still differs, DIFFERENCES
says what and how to fix it, and the vrrpd run of that scenario is an
expected failure (xfail) until it matches.

MASTER_RX_LOWER_PRI lines are dropped except in the scenario about them: a
new master may still receive one advert the old master sent before it
heard of the takeover, so whether the line appears is a wire race.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field

import pytest

from daemons import DaemonProc
from netns import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.keepalived,
              pytest.mark.skipif(shutil.which("keepalived") is None and
                                 not os.path.exists("/usr/sbin/keepalived"),
                                 reason="keepalived not installed")]

ADVERT_INT = 0.1          # VRRPv3 centiseconds: fast scenarios
SCRIPT_INTERVAL = 0.2
PEER_PRIO = 100
PID_MAX = int(open("/proc/sys/kernel/pid_max").read())
NOTIFY_KEYWORDS = ("notify_master", "notify_backup", "notify_fault", "notify_stop",
                   "notify_master_rx_lower_pri")

RECORDER = """#!/bin/bash
# One line per start: fork order (PID), when, what.
echo "$$ $PPID $EPOCHREALTIME ${0##*/} $*" >> LOG
"""
CHECK = """#!/bin/bash
# Exits with the number in STATE: the test flips it to make the check fail.
read -r rc < STATE
exit "$rc"
"""


# -- configuration ------------------------------------------------------------------

def instance(name: str, vrid: int, priority: int, notify_dir: str | None, *, state="BACKUP",
             iface="eth0", extra: str = "") -> str:
    lines = [f"vrrp_instance {name} {{", f"    state {state}", f"    interface {iface}",
             f"    virtual_router_id {vrid}", f"    priority {priority}",
             f"    advert_int {ADVERT_INT:g}", "    version 3",
             "    virtual_ipaddress {", f"        198.19.0.{vrid}/32 dev {iface}", "    }"]
    if notify_dir:
        lines += notify_lines(name, notify_dir)
    lines += ["    " + x.strip() for x in extra.strip().splitlines() if x.strip()]
    return "\n".join(lines + ["}"]) + "\n"


def notify_lines(name: str, notify_dir: str, group=False) -> list[str]:
    # notify_<state> with its own arguments (quoted, as keepalived allows);
    # the generic notify gets only the four keepalived appends.  A sync group
    # has no notify_master_rx_lower_pri (keepalived 2.2.7: unknown keyword).
    rec = os.path.join(notify_dir, "rec")
    keywords = NOTIFY_KEYWORDS[:-1] if group else NOTIFY_KEYWORDS
    return ([f'    {kw} "{rec} {kw} {name}"' for kw in keywords] +
            [f"    notify {os.path.join(notify_dir, 'notify')}"])


def global_defs() -> str:
    return ("global_defs {\n    router_id scen\n    vrrp_notify_fifo @FIFO@\n"
            "    script_user root\n    vrrp_garp_master_delay 0\n}\n")


def vrrp_script(name: str, path: str, weight: int | None = None) -> str:
    w = f"\n    weight {weight}" if weight is not None else ""
    return (f"vrrp_script {name} {{\n    script {path}\n    interval {SCRIPT_INTERVAL:g}\n"
            f"    timeout {SCRIPT_INTERVAL:g}\n    rise 1\n    fall 1{w}\n}}\n")


# -- one run of one scenario against one DUT kind -------------------------------------

@dataclass
class Bench:
    """Two hosts: the DUT on host 0 (vrrpd or keepalived), a keepalived peer on host 1."""
    kind: str
    lan: object
    tmp: str
    dut: DaemonProc | None = None
    peer: DaemonProc | None = None
    procs: list = field(default_factory=list)

    def __post_init__(self):
        self.notify_dir = os.path.join(self.tmp, "notify")
        os.makedirs(self.notify_dir, exist_ok=True)
        self.log = os.path.join(self.notify_dir, "log")
        for name in ("rec", "notify"):
            self._script(name, RECORDER.replace("LOG", self.log))
        self.check_state = os.path.join(self.notify_dir, "check.state")
        self.check = self._script("check", CHECK.replace("STATE", self.check_state))
        self.set_check(0)

    def _script(self, name: str, text: str) -> str:
        path = os.path.join(self.notify_dir, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)
        return path

    def set_check(self, rc: int) -> None:
        tmp = self.check_state + ".new"
        with open(tmp, "w") as f:
            f.write(f"{rc}\n")
        os.replace(tmp, self.check_state)      # atomic: a run never reads a half-written file

    def start_peer(self, instances: str, wait=("VI_0", "MASTER")) -> DaemonProc:
        self.peer = DaemonProc(self.lan.hosts[1], "keepalived", global_defs() + instances,
                               self.tmp, tag="peer")
        self.procs.append(self.peer.start())
        if wait:
            self.peer.wait_state(*wait, timeout=10)
        return self.peer

    def start_dut(self, text: str) -> DaemonProc:
        self.dut = DaemonProc(self.lan.hosts[0], self.kind, global_defs() + text, self.tmp,
                              tag="dut")
        self.procs.append(self.dut.start())
        return self.dut

    def link(self, dev: str, up: bool) -> None:
        self.lan.hosts[0].run("ip", "link", "set", dev, "up" if up else "down")

    def stop_dut(self, expect_notifies: int) -> None:
        """SIGTERM, wait for exit, then for the STOP scripts it forked (never waited on)."""
        self.dut.signal(signal.SIGTERM)
        assert self.dut.wait_exit(10) == 0, self.dut.log_tail()
        wait_for(lambda: len(self.notify_calls(keep_rx_lower=True)) >= expect_notifies, 5,
                 what=f"{expect_notifies} notify calls, have {self.notify_calls()}")
        time.sleep(0.2)                          # and nothing more arrives

    def fifo(self, keep_rx_lower=False) -> list[str]:
        return [f'{k} "{n}" {s} {p}' for _, k, n, s, p in self.dut.fifo.events(self.dut.started)
                if keep_rx_lower or s != "MASTER_RX_LOWER_PRI"]

    def notify_calls(self, keep_rx_lower=False) -> list[str]:
        """Script starts in fork order: argv without the path."""
        try:
            with open(self.log) as f:
                rows = [line.split(" ", 3) for line in f.read().splitlines()]
        except FileNotFoundError:
            return []
        rows = [(int(pid), what) for pid, _ppid, _t, what in rows]
        # "rec notify_master VI_0" -> "notify_master VI_0"; "notify INSTANCE ..." stays.
        calls = [what.removeprefix("rec ") for _, what in circular_pid_order(rows)]
        return [c for c in calls if keep_rx_lower or "MASTER_RX_LOWER_PRI" not in c
                and not c.startswith("notify_master_rx_lower_pri")]

    def close(self) -> None:
        for d in self.procs:
            d.stop()


def circular_pid_order(rows: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Sort by PID where PIDs may have wrapped past pid_max: start after the largest gap."""
    rows = sorted(rows)
    if len(rows) < 2:
        return rows
    pids = [p for p, _ in rows]
    gaps = [(pids[(i + 1) % len(pids)] - pids[i]) % PID_MAX for i in range(len(pids))]
    start = (gaps.index(max(gaps)) + 1) % len(rows)
    return rows[start:] + rows[:start]


def expand(fifo_lines: list[str]) -> list[str]:
    """The notify calls keepalived makes for these fifo lines, in start order."""
    calls = []
    for line in fifo_lines:
        kind, name, state, prio = line.replace('"', "").split()
        if state == "MASTER_RX_LOWER_PRI":
            calls.append(f"notify_master_rx_lower_pri {name}")
            continue
        calls.append(f"notify_{state.lower()} {name}")
        calls.append(f"notify {kind} {name} {state} {prio}")
    return calls


@pytest.fixture(params=["vrrpd", "keepalived"])
def bench(request, lan, tmp_path):
    # eth1 on both hosts: a second link to track.
    b = Bench(request.param, lan(hosts=2, nics=2), str(tmp_path))
    yield b
    b.close()


def members_sorted(lines: list[str]) -> list[str]:
    """Sort each run of INSTANCE lines with the same state word.

    When a sync group moves, keepalived writes the member that triggered the
    move first and the others after it; which member triggers a move to
    MASTER depends on whose down timer fires last (measured: VI_2, VI_0, VI_1
    for three members started together).  The order *within* one group move
    is therefore not compared; everything else is, including the group's
    line after (or, at start-up, before) its members'.
    """
    out, run = [], []
    for line in lines + [""]:
        if run and not (line.startswith("INSTANCE") and line.split()[2] == run[0].split()[2]):
            out += sorted(run)
            run = []
        if line.startswith("INSTANCE"):
            run.append(line)
        elif line:
            out.append(line)
    return out


def check(bench: Bench, scenario: str, keep_rx_lower=False) -> None:
    """The DUT's fifo lines are EXPECTED[scenario] (member order within a group
    move aside), and its notify calls are exactly those keepalived makes for
    the lines it wrote, in the same order."""
    expected = EXPECTED[scenario]
    got_fifo = bench.fifo(keep_rx_lower)
    got_notify = bench.notify_calls(keep_rx_lower)
    text = f"{bench.kind} fifo:\n" + "\n".join(got_fifo) + "\nnotify calls:\n" + "\n".join(got_notify)
    try:
        assert members_sorted(got_fifo) == members_sorted(expected), text
        assert got_notify == expand(got_fifo), text
    except AssertionError:
        if bench.kind == "vrrpd" and scenario in DIFFERENCES:
            pytest.xfail("known difference: " + " -- ".join(DIFFERENCES[scenario]))
        raise


def I(name, state, prio):                                      # noqa: E743
    return f'INSTANCE "{name}" {state} {prio}'


def G(name, state):
    return f'GROUP "{name}" {state} 0'


EXPECTED = {
    # track_script weight 0 fails: FAULT, the peer takes over; recovers: BACKUP, preempts.
    "script_fault": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "FAULT", 150),
                     I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)],
    # weight -60: 150 -> 90 < peer's 100: BACKUP (no FAULT); back to 150: MASTER again.
    "script_weight_below_peer": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                                 I("VI_0", "BACKUP", 90), I("VI_0", "MASTER", 150),
                                 I("VI_0", "STOP", 150)],
    # weight +20 while up: 90 -> 110 > peer's 100: preempts.
    "script_weight_past_peer": [I("VI_0", "BACKUP", 90), I("VI_0", "MASTER", 110),
                                I("VI_0", "STOP", 110)],
    # track_interface eth1 weight 0 (default) down: FAULT; up: BACKUP, preempts.
    "track_interface_fault": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                              I("VI_0", "FAULT", 150), I("VI_0", "BACKUP", 150),
                              I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)],
    # track_interface eth1 weight -60 down: BACKUP 90; up: MASTER 150.
    "track_interface_weight": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                               I("VI_0", "BACKUP", 90), I("VI_0", "MASTER", 150),
                               I("VI_0", "STOP", 150)],
    # The instance's own interface down: FAULT; up: BACKUP, preempts.
    "own_interface": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "FAULT", 150),
                      I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)],
    "nopreempt": [I("VI_0", "BACKUP", 150), I("VI_0", "STOP", 150)],
    "preempt_delay": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)],
    "startup_master": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)],
    "startup_owner": [I("VI_0", "MASTER", 255), I("VI_0", "STOP", 255)],
    "rx_lower_pri": [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                     I("VI_0", "MASTER_RX_LOWER_PRI", 150), I("VI_0", "STOP", 150)],
    "sync_group": [I("VI_0", "BACKUP", 150), I("VI_1", "BACKUP", 150), G("G1", "BACKUP"),
                   I("VI_0", "MASTER", 150), I("VI_1", "MASTER", 150), G("G1", "MASTER"),
                   I("VI_1", "FAULT", 150), I("VI_0", "FAULT", 150), G("G1", "FAULT"),
                   I("VI_0", "BACKUP", 150), I("VI_1", "BACKUP", 150), G("G1", "BACKUP"),
                   I("VI_0", "MASTER", 150), I("VI_1", "MASTER", 150), G("G1", "MASTER"),
                   I("VI_0", "STOP", 150), I("VI_1", "STOP", 150), G("G1", "STOP")],
    # No member waits for a script: keepalived announces the group's BACKUP
    # *before* its members' (vrrp_init_state: group notifies first).
    "sync_group_startup": [G("G1", "BACKUP"), I("VI_0", "BACKUP", 150), I("VI_1", "BACKUP", 150),
                           I("VI_0", "MASTER", 150), I("VI_1", "MASTER", 150), G("G1", "MASTER"),
                           I("VI_0", "STOP", 150), I("VI_1", "STOP", 150), G("G1", "STOP")],
}
# Where vrrpd differs from keepalived 2.2.7 today: scenario -> (what, why / fix).
# The vrrpd run of such a scenario is an expected failure until it is fixed.
DIFFERENCES: dict[str, tuple[str, str]] = {}


# -- scenarios ------------------------------------------------------------------------

def _peer_default(b: Bench) -> None:
    b.start_peer(instance("VI_0", 1, PEER_PRIO, None))


def _master_then(b: Bench, dut_conf: str) -> DaemonProc:
    _peer_default(b)
    d = b.start_dut(dut_conf)
    d.wait_state("VI_0", "MASTER")
    b.peer.wait_state("VI_0", "BACKUP")
    return d


def test_script_fault(bench):
    d = _master_then(bench, vrrp_script("chk", bench.check) +
                     instance("VI_0", 1, 150, bench.notify_dir, extra="track_script {\n chk\n}"))
    bench.set_check(1)
    d.wait_state("VI_0", "FAULT")
    bench.peer.wait_state("VI_0", "MASTER")
    bench.set_check(0)
    d.wait_state("VI_0", "MASTER")
    bench.stop_dut(len(expand(EXPECTED["script_fault"])))
    check(bench, "script_fault")


def test_script_weight_below_peer(bench):
    d = _master_then(bench, vrrp_script("chk", bench.check, weight=-60) +
                     instance("VI_0", 1, 150, bench.notify_dir, extra="track_script {\n chk\n}"))
    bench.set_check(1)
    d.wait_state("VI_0", "BACKUP")
    bench.peer.wait_state("VI_0", "MASTER")
    bench.set_check(0)
    d.wait_state("VI_0", "MASTER")
    bench.peer.wait_state("VI_0", "BACKUP")
    bench.stop_dut(len(expand(EXPECTED["script_weight_below_peer"])))
    check(bench, "script_weight_below_peer")


def test_script_weight_past_peer(bench):
    _peer_default(bench)
    bench.set_check(1)
    d = bench.start_dut(vrrp_script("chk", bench.check) +
                        instance("VI_0", 1, 90, bench.notify_dir,
                                 extra="track_script {\n chk weight 20\n}"))
    d.wait_state("VI_0", "BACKUP")
    time.sleep(4 * ADVERT_INT)              # settled as BACKUP at 90 below the peer
    bench.set_check(0)
    d.wait_state("VI_0", "MASTER")
    bench.peer.wait_state("VI_0", "BACKUP")
    bench.stop_dut(len(expand(EXPECTED["script_weight_past_peer"])))
    check(bench, "script_weight_past_peer")


@pytest.mark.parametrize("scenario,dev,track", [
    ("track_interface_fault", "eth1", "track_interface {\n eth1\n}"),
    ("track_interface_weight", "eth1", "track_interface {\n eth1 weight -60\n}"),
    ("own_interface", "eth0", ""),
])
def test_interface_down(bench, scenario, dev, track):
    d = _master_then(bench, instance("VI_0", 1, 150, bench.notify_dir, extra=track))
    bench.link(dev, False)
    d.wait_state("VI_0", "BACKUP" if "weight" in scenario else "FAULT")
    bench.peer.wait_state("VI_0", "MASTER")
    bench.link(dev, True)
    d.wait_state("VI_0", "MASTER")
    bench.stop_dut(len(expand(EXPECTED[scenario])))
    check(bench, scenario)


def test_nopreempt(bench):
    _peer_default(bench)
    d = bench.start_dut(instance("VI_0", 1, 150, bench.notify_dir, extra="nopreempt"))
    d.wait_state("VI_0", "BACKUP")
    time.sleep(1.0)                         # about 3 Master_Down_Intervals
    assert d.state("VI_0") == "BACKUP" and bench.peer.state("VI_0") == "MASTER"
    bench.stop_dut(len(expand(EXPECTED["nopreempt"])))
    check(bench, "nopreempt")


def test_preempt_delay(bench):
    delay = 1.0
    _peer_default(bench)
    d = bench.start_dut(instance("VI_0", 1, 150, bench.notify_dir, extra=f"preempt_delay {delay:g}"))
    d.wait_state("VI_0", "BACKUP")
    t_master = d.wait_state("VI_0", "MASTER", timeout=5)
    # keepalived: preempt_delay counts from start-up; never earlier.
    assert t_master - d.started >= delay
    bench.stop_dut(len(expand(EXPECTED["preempt_delay"])))
    check(bench, "preempt_delay")


@pytest.mark.parametrize("scenario,prio", [("startup_master", 150), ("startup_owner", 255)])
def test_startup_state_master(bench, scenario, prio):
    d = bench.start_dut(instance("VI_0", 1, prio, bench.notify_dir, state="MASTER"))
    d.wait_state("VI_0", "MASTER")
    bench.stop_dut(len(expand(EXPECTED[scenario])))
    check(bench, scenario)


INJECT = """
import sys
from scapy.all import IP, send
from scapy.layers.vrrp import VRRPv3
pkt = IP(src=sys.argv[1], dst="224.0.0.18", ttl=255) / VRRPv3(
    vrid=1, priority=int(sys.argv[2]), adv=int(sys.argv[3]), ipcount=1, addrlist=["198.19.0.1"])
send(pkt, iface="eth0", verbose=False)
"""


def test_rx_lower_pri(bench):
    d = bench.start_dut(instance("VI_0", 1, 150, bench.notify_dir))
    d.wait_state("VI_0", "MASTER")
    # One advert of a lower-priority router from host 1 (not a running daemon).
    bench.lan.hosts[1].run(sys.executable, "-c", INJECT, bench.lan.host_ip(1), "50",
                           str(round(ADVERT_INT * 100)))
    wait_for(lambda: any("MASTER_RX_LOWER_PRI" in x for x in bench.fifo(keep_rx_lower=True)), 5,
             what="MASTER_RX_LOWER_PRI")
    bench.stop_dut(len(expand(EXPECTED["rx_lower_pri"])))
    check(bench, "rx_lower_pri", keep_rx_lower=True)


def sync_group(notify_dir: str | None) -> str:
    lines = ["vrrp_sync_group G1 {", "    group {", "        VI_0", "        VI_1", "    }"]
    if notify_dir:
        lines += notify_lines("G1", notify_dir, group=True)
    return "\n".join(lines + ["}"]) + "\n"


def test_sync_group_startup(bench):
    bench.start_dut(sync_group(bench.notify_dir) + instance("VI_0", 1, 150, bench.notify_dir) +
                        instance("VI_1", 2, 150, bench.notify_dir))
    wait_for(lambda: G("G1", "MASTER") in bench.fifo(), 10, what="GROUP G1 MASTER")
    bench.stop_dut(len(expand(EXPECTED["sync_group_startup"])))
    check(bench, "sync_group_startup")


def test_sync_group_member_fault(bench):
    group = sync_group
    bench.start_peer(group(None) + instance("VI_0", 1, PEER_PRIO, None) +
                     instance("VI_1", 2, PEER_PRIO, None))
    bench.peer.wait_state("VI_1", "MASTER")
    d = bench.start_dut(vrrp_script("chk", bench.check) + group(bench.notify_dir) +
                        instance("VI_0", 1, 150, bench.notify_dir) +
                        instance("VI_1", 2, 150, bench.notify_dir, extra="track_script {\n chk\n}"))
    d.wait_state("VI_0", "MASTER")
    d.wait_state("VI_1", "MASTER")
    bench.set_check(1)
    d.wait_state("VI_0", "FAULT")
    d.wait_state("VI_1", "FAULT")
    bench.peer.wait_state("VI_0", "MASTER")
    bench.set_check(0)
    d.wait_state("VI_0", "MASTER")
    d.wait_state("VI_1", "MASTER")
    bench.stop_dut(len(expand(EXPECTED["sync_group"])))
    check(bench, "sync_group")
