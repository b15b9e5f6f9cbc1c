"""Differential scenarios where vrrpd could follow the man page or
its own reading and keepalived 2.2.7 does something else.

Same method as tests/test_scenarios.py, with the same bench, expectations
format and comparison (tests/scenario_bench.py): each scenario runs once with keepalived 2.2.7
and once with vrrpd as the daemon under test, with the same config and
steps, and both runs must produce the sequence in EXPECTED.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from children import child
from daemons import DaemonProc
from observers import Observer
from scenario_bench import (ADVERT_INT, EXPECTED, PEER_PRIO, G, I, check,
                            expand, global_defs, instance, sync_group, vrrp_script)

pytestmark = [pytest.mark.netns, pytest.mark.keepalived,
              pytest.mark.skipif(shutil.which("keepalived") is None and
                                 not os.path.exists("/usr/sbin/keepalived"),
                                 reason="keepalived not installed")]

PROC_NAME = "vt16tracked"       # a track_process target: a copy of sleep under this name


def _group_members(b, extra_vi1: str, head: str = "") -> None:
    """Peer: the group at PEER_PRIO; DUT: the group at 150, VI_1 tracking `extra_vi1`."""
    b.start_peer(sync_group(None) + instance("VI_0", 1, PEER_PRIO, None) +
                 instance("VI_1", 2, PEER_PRIO, None))
    b.peer.wait_state("VI_1", "MASTER")
    d = b.start_dut(head + sync_group(b.notify_dir) + instance("VI_0", 1, 150, b.notify_dir) +
                    instance("VI_1", 2, 150, b.notify_dir, extra=extra_vi1))
    d.wait_state("VI_0", "MASTER")
    d.wait_state("VI_1", "MASTER")


# Item 1: a weighted track_* on a sync-group member without
# sync_group_tracking_weight.  The tracked object goes down (weight -60, or
# 12 x -5 for the file, would take VI_1 from 150 to 90, below the peer's
# 100) and comes back.  keepalived 2.2.7 (measured, 3 runs each):
# - track_script, track_file: dropped from the member; nothing happens and
#   VI_1 keeps advertising 150;
# - track_interface: it logs "ignoring eth1 tracked interface weight due to
#   SYNC group" yet VI_1 advertises 90; the peer's VI_1 times out but cannot
#   take over while its VI_0 still hears 150 (a group moves only when all
#   members want MASTER): no transition either, only the peer's log shows 90;
# - track_process: the weight applies too (no message).  keepalived cannot
#   watch processes in a network namespace (the proc connector lives in the
#   initial one: "Failed to set/clear process event listen"), so the process
#   stays absent: VI_1 is 90 from the start and the group never becomes MASTER.
SYNC_QUIET = [G("G1", "BACKUP"), I("VI_0", "BACKUP", 150), I("VI_1", "BACKUP", 150),
              I("VI_0", "MASTER", 150), I("VI_1", "MASTER", 150), G("G1", "MASTER"),
              I("VI_0", "STOP", 150), I("VI_1", "STOP", 150), G("G1", "STOP")]
EXPECTED.update({
    "sync_weight_script": SYNC_QUIET,
    "sync_weight_interface": SYNC_QUIET,
    "sync_weight_file": SYNC_QUIET,
    "sync_weight_process": [G("G1", "BACKUP"), I("VI_0", "BACKUP", 150), I("VI_1", "BACKUP", 90),
                            I("VI_0", "STOP", 150), I("VI_1", "STOP", 90), G("G1", "STOP")],
})
PEER_HEARD_90 = {"script": False, "interface": True, "file": False}


class _Toggle:
    """Puts one kind of tracked object down and up again on the DUT's host."""

    def __init__(self, b, kind: str):
        self.b, self.kind = b, kind
        self.file = os.path.join(b.tmp, "track.file")
        self.proc: subprocess.Popen | None = None
        if kind == "file":
            with open(self.file, "w") as f:
                f.write("0\n")
        if kind == "process":
            self.exe = os.path.join(b.tmp, PROC_NAME)
            shutil.copy(shutil.which("sleep"), self.exe)
            self.up()

    def config(self) -> tuple[str, str]:
        """(top-level blocks, the member's track_* block)"""
        if self.kind == "script":
            return (vrrp_script("chk", self.b.check, weight=-60), "track_script {\n chk\n}")
        if self.kind == "interface":
            return ("", "track_interface {\n eth1 weight -60\n}")
        if self.kind == "file":
            return (f"vrrp_track_file tf {{\n    file {self.file}\n    weight -5\n}}\n",
                    "track_file {\n tf\n}")
        return (f"vrrp_track_process tp {{\n    process {PROC_NAME}\n    weight -60\n"
                f"    quorum 1\n}}\n", "track_process {\n tp\n}")

    def down(self) -> None:
        if self.kind == "script":
            self.b.set_check(1)
        elif self.kind == "interface":
            self.b.link("eth1", False)
        elif self.kind == "file":
            with open(self.file + ".new", "w") as f:
                f.write("12\n")
            os.replace(self.file + ".new", self.file)
        else:
            self.proc.kill()
            self.proc.wait()

    def up(self) -> None:
        if self.kind == "script":
            self.b.set_check(0)
        elif self.kind == "interface":
            self.b.link("eth1", True)
        elif self.kind == "file":
            with open(self.file + ".new", "w") as f:
                f.write("0\n")
            os.replace(self.file + ".new", self.file)
        else:
            self.proc = subprocess.Popen([self.exe, "1000"])

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _peer_heard(b, prio: int) -> bool:
    with open(b.peer.log_path, errors="replace") as f:
        return f"lower priority ({prio}) advert" in f.read()


@pytest.mark.parametrize("kind", ["script", "interface", "file"])
def test_sync_group_member_weight(bench, kind):
    scenario = f"sync_weight_{kind}"
    toggle = _Toggle(bench, kind)
    try:
        head, track = toggle.config()
        _group_members(bench, track, head)
        toggle.down()
        time.sleep(2.0)                 # several script runs and master-down intervals
        heard = _peer_heard(bench, 90)
        toggle.up()
        time.sleep(1.0)
        bench.stop_dut(len(expand(EXPECTED[scenario])))
        check(bench, scenario)
        assert heard == PEER_HEARD_90[kind], bench.peer.log_tail()
    finally:
        toggle.close()


def test_sync_group_member_weight_process(bench):
    """The tracked process never runs (see above): VI_1 starts at 90."""
    toggle = _Toggle(bench, "process")
    toggle.close()
    head, track = toggle.config()
    bench.start_peer(sync_group(None) + instance("VI_0", 1, PEER_PRIO, None) +
                     instance("VI_1", 2, PEER_PRIO, None))
    bench.peer.wait_state("VI_1", "MASTER")
    d = bench.start_dut(head + sync_group(bench.notify_dir) +
                        instance("VI_0", 1, 150, bench.notify_dir) +
                        instance("VI_1", 2, 150, bench.notify_dir, extra=track))
    d.wait_state("VI_1", "BACKUP")
    time.sleep(2.5)                     # > 2 process scans and many master-down intervals
    bench.stop_dut(len(expand(EXPECTED["sync_weight_process"])))
    check(bench, "sync_weight_process")


# Item 3: a track_file whose share pushes the instance to FAULT (60 x -5 <
# -253).  keepalived takes the file's previous share out of its total but
# does not recompute the effective priority on the way into FAULT, so the
# FAULT line carries the priority from before (95 = 100 + 1 x -5).
EXPECTED["track_file_fault"] = [
    I("VI_0", "BACKUP", 100), I("VI_0", "MASTER", 100), I("VI_0", "FAULT", 95),
    I("VI_0", "BACKUP", 95), I("VI_0", "MASTER", 95), I("VI_0", "STOP", 100)]


def _write(path: str, value: int) -> None:
    with open(path + ".new", "w") as f:
        f.write(f"{value}\n")
    os.replace(path + ".new", path)


def test_track_file_fault_priority(bench):
    tf = os.path.join(bench.tmp, "track.file")
    _write(tf, 0)
    bench.start_peer(instance("VI_0", 1, 90, None))
    d = bench.start_dut(f"vrrp_track_file tf {{\n    file {tf}\n    weight -5\n}}\n" +
                        instance("VI_0", 1, 100, bench.notify_dir, extra="track_file {\n tf\n}"))
    d.wait_state("VI_0", "MASTER")
    bench.peer.wait_state("VI_0", "BACKUP")
    _write(tf, 1)                           # 95: still above the peer
    time.sleep(0.5)
    _write(tf, 60)                          # -300: FAULT
    d.wait_state("VI_0", "FAULT")
    bench.peer.wait_state("VI_0", "MASTER")
    _write(tf, 1)                           # back to 95: BACKUP, preempts the peer's 90
    d.wait_state("VI_0", "MASTER")
    bench.peer.wait_state("VI_0", "BACKUP")
    _write(tf, 0)                           # 100
    time.sleep(0.5)
    bench.stop_dut(len(expand(EXPECTED["track_file_fault"])))
    check(bench, "track_file_fault")


# Item 2: an address owner (255, state MASTER) leaving FAULT enters BACKUP
# first and becomes MASTER when its master-down timer runs out (about
# 3 x advert_int later), as any instance does; only start-up skips BACKUP.
EXPECTED["owner_fault_recovery"] = [
    I("VI_0", "MASTER", 255), I("VI_0", "FAULT", 255), I("VI_0", "BACKUP", 255),
    I("VI_0", "MASTER", 255), I("VI_0", "STOP", 255)]


def test_owner_fault_recovery(bench):
    d = bench.start_dut(instance("VI_0", 1, 255, bench.notify_dir, state="MASTER",
                                 extra="track_interface {\n eth1\n}"))
    d.wait_state("VI_0", "MASTER")
    bench.link("eth1", False)
    d.wait_state("VI_0", "FAULT")
    t_up = time.monotonic()
    bench.link("eth1", True)
    t_master = d.wait_state("VI_0", "MASTER")
    # Not at once: a master-down interval (3 x 0.1 s + skew) in BACKUP.
    assert t_master - t_up >= 2.5 * ADVERT_INT
    bench.stop_dut(len(expand(EXPECTED["owner_fault_recovery"])))
    check(bench, "owner_fault_recovery")


# Item 7: kill -9, then a restart with fewer instances.  keepalived 2.2.7
# removes at start-up only the VIPs of the instances it now has: the others'
# stay on eth0, even after a clean stop (measured).  vrrpd does better: it
# records what its configuration may add (beside its control socket, under
# /run by default) and removes what a predecessor left at start-up.
def test_restart_with_fewer_instances_after_kill(bench):
    from daemons import vips_on
    three = "".join(instance(f"VI_{i}", i + 1, 150, None, state="MASTER") for i in range(3))
    d = bench.start_dut(three)
    for i in range(3):
        d.wait_state(f"VI_{i}", "MASTER")
    host = bench.lan.hosts[0]
    ours = {"198.19.0.1", "198.19.0.2", "198.19.0.3"}

    def on_eth0() -> set[str]:
        return {a.split("/")[0] for a in vips_on(host)} & ours
    assert on_eth0() == ours
    d.kill()
    try:
        d2 = bench.start_dut(instance("VI_0", 1, 150, None, state="MASTER"))
        d2.wait_state("VI_0", "MASTER")
        time.sleep(0.5)
        running = on_eth0()
        d2.signal(signal.SIGTERM)
        assert d2.wait_exit(10) == 0
        after = on_eth0()
    finally:
        try:
            os.unlink(d.ctl_path + ".vips")         # vrrpd's record (same path for both runs)
        except FileNotFoundError:
            pass
    if bench.kind == "keepalived":
        assert running == {"198.19.0.1", "198.19.0.2", "198.19.0.3"}
        assert after == {"198.19.0.2", "198.19.0.3"}          # left for good
    else:
        assert running == {"198.19.0.1"}
        assert after == set()


# Item 6 and 7 together: a master restarted after kill -9 finds its VIPs
# still on eth0; starting as BACKUP it removes them, then becomes MASTER at
# its down timer and adds them back.  Those removals are its own, not an
# outside deletion: no priority 0, no second BACKUP.  keepalived 2.2.7 does
# the same.  (The link monitor may report them late; test_vipwatch.py.)
def test_restart_after_kill_keeps_master(bench):
    n = 100
    conf = "".join(instance(f"VI_{i}", i + 1, 150, None) for i in range(n))
    names = [f"VI_{i}" for i in range(n)]
    d = bench.start_dut(conf)
    d.wait_all(names, "MASTER")
    d.kill()
    # A second fifo (tag): two readers of one fifo would share its lines.
    d2 = bench.dut = DaemonProc(bench.lan.hosts[0], bench.kind, global_defs() + conf, bench.tmp,
                                tag="dut2")
    bench.procs.append(d2.start())
    try:
        d2.wait_all(names, "MASTER")
        time.sleep(1.5)     # beyond the monitor's hold and a master-down interval
        masters, after = set(), []
        for _, kind, name, state, _ in d2.fifo.events(d2.started):
            if kind == "INSTANCE" and name in masters:
                after.append(f"{name} {state}")
            if kind == "INSTANCE" and state == "MASTER":
                masters.add(name)
        assert masters == set(names)
        assert after == []
    finally:
        for p in (d, d2):
            try:
                os.unlink(p.ctl_path + ".vips")
            except FileNotFoundError:
                pass
    bench.stop_dut(0)


# Item 6: a VIP deleted from outside while MASTER.  keepalived 2.2.7 sends
# priority 0 and goes BACKUP (the peer takes over at once), then preempts it
# again after its master-down timer, adding the VIP back.  `no_track` on the
# address: keepalived does nothing.
EXPECTED["vip_deleted"] = [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                           I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                           I("VI_0", "STOP", 150)]
EXPECTED["vip_deleted_no_track"] = [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                                    I("VI_0", "STOP", 150)]


@pytest.mark.parametrize("scenario", ["vip_deleted", "vip_deleted_no_track"])
def test_vip_deleted_from_outside(bench, scenario):
    conf = instance("VI_0", 1, 150, bench.notify_dir)
    if scenario.endswith("no_track"):
        conf = conf.replace("198.19.0.1/32 dev eth0", "198.19.0.1/32 dev eth0 no_track")
    d = _master(bench, conf)
    bench.lan.hosts[0].run("ip", "addr", "del", "198.19.0.1/32", "dev", "eth0")
    if scenario == "vip_deleted":
        d.wait_state("VI_0", "BACKUP")
        d.wait_state("VI_0", "MASTER")
    else:
        time.sleep(1.0)
    bench.stop_dut(len(expand(EXPECTED[scenario])))
    check(bench, scenario)


def _master(b, conf: str):
    b.start_peer(instance("VI_0", 1, PEER_PRIO, None))
    d = b.start_dut(conf)
    d.wait_state("VI_0", "MASTER")
    b.peer.wait_state("VI_0", "BACKUP")
    return d


# Item 6: a reload changing what vrrpd's engine fixes when an instance is
# added (version, unicast peers).  keepalived rebuilds every instance from
# the new configuration and carries the old one's state over when it matches
# (VRID, family, interface, source address).  Measured on 2.2.7:
# - version 3 -> 2 (advert_int 1): the master stays MASTER, no notification;
# - a unicast_peer added (multicast -> unicast): FAULT, BACKUP, MASTER, and
#   for that FAULT only the generic notify runs (no notify_fault).
# vrrpd keeps the instance too (Engine.retune, Engine.set_peers).
EXPECTED["reload_fixed_version"] = [I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150),
                                    I("VI_0", "STOP", 150)]
EXPECTED["reload_fixed_unicast_peer"] = [
    I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "FAULT", 150),
    I("VI_0", "BACKUP", 150), I("VI_0", "MASTER", 150), I("VI_0", "STOP", 150)]


@pytest.mark.parametrize("change", ["unicast_peer", "version"])
def test_reload_fixed_settings_keep_state(bench, change):
    conf = instance("VI_0", 1, 150, bench.notify_dir)
    d = bench.start_dut(conf)
    d.wait_state("VI_0", "MASTER")
    if change == "unicast_peer":
        new = conf.replace("    version 3\n", "    version 3\n    unicast_peer {\n"
                                              f"        {bench.lan.host_ip(1)}\n    }}\n")
    else:
        new = conf.replace("    version 3\n", "    version 2\n").replace(
            f"advert_int {ADVERT_INT:g}", "advert_int 1")
    with open(d.conf) as f:
        text = f.read()
    assert conf in text
    with open(d.conf, "w") as f:
        f.write(text.replace(conf, new))
    d.signal(signal.SIGHUP)
    time.sleep(2.0)
    scenario = f"reload_fixed_{change}"
    if change == "version":
        bench.stop_dut(len(expand(EXPECTED[scenario])))
        check(bench, scenario)
        return
    # keepalived starts only the generic notify for that FAULT (no notify_fault,
    # measured).
    calls = [c for c in expand(EXPECTED[scenario]) if c != "notify_fault VI_0"]
    bench.stop_dut(len(calls))
    assert bench.fifo() == EXPECTED[scenario]
    assert bench.notify_calls() == calls


def test_lower_priority_garps_for_the_whole_sync_group(bench, tmp_path):
    """A master that hears a lower priority answers with its GARP burst
    (garp_lower_prio_repeat, unset: garp_master_repeat = 5); keepalived 2.2.7
    sends the burst of every other member of its sync group too
    (vrrp_state_master_rx), not that of an instance outside the group.  The
    lower-priority advert reaches only VI_0's link (eth0); VI_1 (in the
    group) and VI_2 (not) are on eth1."""
    d = bench.start_dut(sync_group(None) + instance("VI_0", 1, 150, None) +
                        instance("VI_1", 2, 150, None, iface="eth1") +
                        instance("VI_2", 3, 150, None, iface="eth1"))
    for name in ("VI_0", "VI_1", "VI_2"):
        d.wait_state(name, "MASTER")
    time.sleep(0.5)             # the takeover's own bursts are out
    cap = Observer(bench.lan.hosts[0], "capture", str(tmp_path / "capture.json"))
    try:
        bench.lan.hosts[1].run(sys.executable, child("inject_lower_advert"),
                               bench.lan.host_ip(1), "50", str(round(ADVERT_INT * 100)))
        time.sleep(0.5)
    finally:
        frames = cap.stop()["frames"]
    sent = {}
    for _, kind, ifname, addr in frames:
        if kind == "arp":
            sent[(ifname, addr)] = sent.get((ifname, addr), 0) + 1
    assert sent == {("eth0", "198.19.0.1"): 5, ("eth1", "198.19.0.2"): 5}, sent
    for name in ("VI_0", "VI_1", "VI_2"):
        assert d.state(name) == "MASTER"
