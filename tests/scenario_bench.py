"""The differential bench of test_scenarios and test_semantics: the same
keepalived.conf and steps run once with vrrpd and once with keepalived 2.2.7
as the daemon under test (host 0), against a keepalived peer (host 1); the
DUT's fifo lines and notify calls are compared with the expected sequence.

EXPECTED (scenario -> fifo lines, what keepalived does) and DIFFERENCES
(scenario -> (what, why / fix) where vrrpd still differs: its run is an
expected failure) are filled by the test modules that define the scenarios.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import pytest

from daemons import DaemonProc
from netns import wait_for

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
    text = (f"{bench.kind} fifo:\n" + "\n".join(got_fifo)
            + "\nnotify calls:\n" + "\n".join(got_notify))
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


# scenario -> the DUT's fifo lines: what keepalived 2.2.7 does.
EXPECTED: dict[str, list[str]] = {}
# Where vrrpd differs from keepalived 2.2.7: scenario -> (what, why / fix).
# The vrrpd run of such a scenario is an expected failure until it is fixed.
DIFFERENCES: dict[str, tuple[str, str]] = {}


def sync_group(notify_dir: str | None) -> str:
    lines = ["vrrp_sync_group G1 {", "    group {", "        VI_0", "        VI_1", "    }"]
    if notify_dir:
        lines += notify_lines("G1", notify_dir, group=True)
    return "\n".join(lines + ["}"]) + "\n"
