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
import sys
import time

import pytest

from children import child
from daemons import DaemonProc
from netns import wait_for
from scenario_bench import (ADVERT_INT, EXPECTED, PEER_PRIO, Bench, G, I, check, expand,
                            instance, sync_group, vrrp_script)

pytestmark = [pytest.mark.netns, pytest.mark.keepalived,
              pytest.mark.skipif(shutil.which("keepalived") is None and
                                 not os.path.exists("/usr/sbin/keepalived"),
                                 reason="keepalived not installed")]


EXPECTED.update({
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
})


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
    d = bench.start_dut(instance("VI_0", 1, 150, bench.notify_dir,
                                 extra=f"preempt_delay {delay:g}"))
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


def test_rx_lower_pri(bench):
    d = bench.start_dut(instance("VI_0", 1, 150, bench.notify_dir))
    d.wait_state("VI_0", "MASTER")
    # One advert of a lower-priority router from host 1 (not a running daemon).
    bench.lan.hosts[1].run(sys.executable, child("inject_lower_advert"), bench.lan.host_ip(1), "50",
                           str(round(ADVERT_INT * 100)))
    wait_for(lambda: any("MASTER_RX_LOWER_PRI" in x for x in bench.fifo(keep_rx_lower=True)), 5,
             what="MASTER_RX_LOWER_PRI")
    bench.stop_dut(len(expand(EXPECTED["rx_lower_pri"])))
    check(bench, "rx_lower_pri", keep_rx_lower=True)


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
