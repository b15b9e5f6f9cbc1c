"""Tracking: priority rules (property-tested), rise/fall against an independent
model, and the live watchers (vrrp_script, track_file, track_process)."""
import asyncio
import os
import shutil
import subprocess
import uuid

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from scriptfiles import write_script
from vrrpd.config.model import TrackFile, TrackProcess, VrrpScript
from vrrpd.scripts.runner import ScriptRunner
from vrrpd.track.instance import TrackedInstance, track_entry
from vrrpd.track.rules import Verdict, bool_adjustment, effective_priority, file_adjustment
from vrrpd.track.track_file import TrackFileWatcher, parse_track_value
from vrrpd.track.track_process import ProcessMatch, ProcessWatcher, scan_processes
from vrrpd.track.vrrp_script import RiseFall, VrrpScriptTracker

prio = st.integers(1, 255)
weights = st.integers(-253, 253)


# -- pure rules --------------------------------------------------------------------

@given(prio, st.lists(st.integers(-600, 600), max_size=8))
def test_effective_priority_bounds(base, adjs):
    p = effective_priority(base, adjs)
    if base == 255:
        assert p == 255                      # an owner never changes
    else:
        assert 1 <= p <= 254                 # nothing raises a non-owner to 255
        if 1 <= base + sum(adjs) <= 254:
            assert p == base + sum(adjs)


@given(st.integers(1, 254), st.lists(st.integers(-300, 300), max_size=5), st.integers(0, 300))
def test_effective_priority_is_monotonic(base, adjs, extra):
    assert effective_priority(base, adjs + [extra]) >= effective_priority(base, adjs)


@given(st.booleans(), weights, st.booleans())
@example(True, 0, True)
@example(False, 0, True)
def test_bool_adjustment_rules(up, w, reverse):
    adj = bool_adjustment(up, w, reverse)
    if w == 0:
        assert (adj is None) == (up == reverse)       # weight 0: FAULT when (effectively) down
        return
    assert adj is not None                            # weights never FAULT
    applies = up if w > 0 else not up                 # positive when up, negative when down
    assert adj == ((-w if reverse else w) if applies else 0)
    assert bool_adjustment(up, w, not reverse) == -adj


def test_bool_adjustment_examples():
    assert bool_adjustment(True, 10) == 10 and bool_adjustment(False, 10) == 0
    assert bool_adjustment(False, -20) == -20 and bool_adjustment(True, -20) == 0
    assert bool_adjustment(False, 0) is None and bool_adjustment(True, 0) == 0
    assert bool_adjustment(True, 0, reverse=True) is None      # "weight 0 reverse"
    assert bool_adjustment(True, 10, reverse=True) == -10


@given(st.integers(-10**6, 10**6), st.integers(-254, 254), st.booleans())
@example(0, 0, True)
@example(3, 0, True)
@example(-51, 5, False)
@example(51, 5, True)
def test_file_adjustment_rules(value, w, reverse):
    adj = file_adjustment(value, w, reverse)
    if w == 0:
        assert (adj is None) == ((value != 0) != reverse)
        return
    product = value * w * (-1 if reverse else 1)
    assert (adj is None) == (product < -253)
    if adj is not None:
        assert adj == min(product, 253)


@pytest.mark.parametrize("data, value", [
    (b"12\n", 12), (b"  -7", -7), (b"+3x", 3), (b"0x1f", 31), (b"010", 8),
    (b"", 0), (b"abc", 0), (b"9 10", 9), (b"-", 0), (b"08", 0),
])
def test_parse_track_value_is_strtol_base0(data, value):
    assert parse_track_value(data) == value


# -- rise / fall -------------------------------------------------------------------

class ConsecutiveModel:
    """Independent statement of the rule: rise consecutive successes bring a
    down script up, fall consecutive failures bring an up one down; the first
    result decides at once, unless init_fail (then it starts down)."""

    def __init__(self, rise, fall, init_fail):
        self.rise, self.fall = rise, fall
        self.up = False if init_fail else None
        self.streak = 0

    def record(self, ok):
        if self.up is None:
            self.up = ok
            return
        if ok != self.up:
            self.streak += 1
            if self.streak >= (self.rise if ok else self.fall):
                self.up, self.streak = ok, 0
        else:
            self.streak = 0


@given(st.integers(1, 5), st.integers(1, 5), st.booleans(), st.lists(st.booleans(), max_size=40))
def test_rise_fall_matches_consecutive_model(rise, fall, init_fail, outcomes):
    rf, model = RiseFall(rise, fall, init_fail), ConsecutiveModel(rise, fall, init_fail)
    assert rf.up == model.up
    for ok in outcomes:
        before = rf.up
        changed = rf.record(ok)
        model.record(ok)
        assert rf.up == model.up
        assert changed == (rf.up if rf.up != before else None)


def test_rise_fall_start_states():
    assert RiseFall(3, 3).record(True) is True           # one success brings it up
    assert RiseFall(3, 3).record(False) is False         # one failure at start faults it
    rf = RiseFall(2, 1, init_fail=True)
    assert rf.up is False and rf.record(True) is None and rf.record(True) is True


# -- aggregation ------------------------------------------------------------------------

def test_tracked_instance_combines_and_calls_back():
    seen = []
    ti = TrackedInstance("VI_1", 100, [
        track_entry("script", "chk", weight=0),
        track_entry("script", "plus", weight=20),
        track_entry("interface", "eth1", weight=-30),
        track_entry("file", "f", weight=5),
        track_entry("process", "haproxy", weight=0, reverse=True),
    ], on_change=seen.append)
    assert ti.verdict == Verdict(False, 100, True)                 # chk not run yet: pending
    ti.update("script", "chk", True)
    assert ti.verdict == Verdict(False, 100, False)
    ti.update("script", "plus", True)
    ti.update("interface", "eth1", False)
    ti.update("file", "f", 4)
    assert ti.verdict == Verdict(False, 100 + 20 - 30 + 20, False)
    ti.update("process", "haproxy", True)                         # weight 0 reverse: up => FAULT
    assert ti.verdict.fault
    ti.update("process", "haproxy", False)
    ti.update("file", "f", -60)                                   # 5 * -60 < -253 => FAULT
    assert ti.verdict.fault
    ti.update("file", "f", 0)
    ti.update("script", "chk", False)
    assert ti.verdict == Verdict(True, 90, False)
    assert seen[-1] == ti.verdict
    assert all(a != b for a, b in zip(seen, seen[1:]))        # called back only on change


def test_sync_group_members_weighted_scripts_and_files_ignored():
    # keepalived 2.2.7 (tests/test_semantics.py): a member's weighted
    # track_script/track_file is dropped; interface and process weights stay.
    own = [track_entry("script", "chk", weight=50), track_entry("file", "f", weight=-5),
           track_entry("interface", "eth1", weight=-20), track_entry("process", "p", weight=-7),
           track_entry("script", "must")]
    group = [track_entry("script", "g", weight=10)]
    member = TrackedInstance("VI_1", 100, own, group, sync_group=True)
    assert not member.tracks_object("script", "chk") and not member.tracks_object("file", "f")
    member.update("script", "chk", False)
    member.update("file", "f", 100)
    member.update("script", "must", True)
    member.update("script", "g", True)
    assert member.verdict == Verdict(False, 110, False)          # group weight kept
    member.update("interface", "eth1", False)
    member.update("process", "p", False)
    assert member.verdict == Verdict(False, 83, False)
    member.update("script", "must", False)
    assert member.verdict.fault                                   # weight 0 still FAULTs
    kept = TrackedInstance("VI_1", 100, own, group, sync_group=True,
                           sync_group_tracking_weight=True)
    kept.update("script", "chk", True)
    kept.update("script", "g", True)
    kept.update("script", "must", True)
    assert kept.verdict == Verdict(False, 160, False)


def test_owner_priority_never_changes_but_can_fault():
    ti = TrackedInstance("VI_1", 255, [track_entry("interface", "eth0"),
                                       track_entry("script", "w", weight=-50)])
    ti.update("script", "w", False)
    ti.update("interface", "eth0", True)
    assert ti.verdict == Verdict(False, 255, False)
    ti.update("interface", "eth0", False)
    assert ti.verdict == Verdict(True, 255, False)


# -- live watchers -------------------------------------------------------------------------

async def wait_for(pred, timeout=3.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def test_vrrp_script_tracker_rise_fall_live(aio, tmp_path):
    ctl = tmp_path / "ctl"
    ctl.write_text("0")
    s = write_script(tmp_path / "chk.sh", f'exit "$(cat {ctl})"')

    async def main():
        async with ScriptRunner() as runner:
            changes = []
            vs = VrrpScript(name="chk", interval=0.03, rise=2, fall=3)
            tr = VrrpScriptTracker(runner, vs, runner.prepare(s), lambda n, up: changes.append(up))
            tr.start()
            await wait_for(lambda: changes == [True])          # first success: up at once
            ctl.write_text("1")
            await wait_for(lambda: changes == [True, False])   # after 3 failures
            failed_runs = runner.counters.failures
            ctl.write_text("0")
            await wait_for(lambda: changes == [True, False, True])
            tr.stop()
            return failed_runs

    assert aio(main()) >= 3


def test_vrrp_script_tracker_skips_overlapping_runs_and_times_out(aio, tmp_path):
    s = write_script(tmp_path / "slow.sh", "sleep 10")

    async def main():
        async with ScriptRunner() as runner:
            changes = []
            vs = VrrpScript(name="slow", interval=0.05, timeout=0.2)
            tr = VrrpScriptTracker(runner, vs, runner.prepare(s), lambda n, up: changes.append(up))
            tr.start()
            await wait_for(lambda: changes == [False])          # the timeout is a failure
            tr.stop()
            return tr.skipped, runner.counters

    skipped, counters = aio(main())
    assert skipped >= 2 and counters.timeouts >= 1 and counters.runs <= 2


def test_init_fail_reports_down_before_first_run(aio, tmp_path):
    s = write_script(tmp_path / "ok.sh", "exit 0")

    async def main():
        async with ScriptRunner() as runner:
            changes = []
            tr = VrrpScriptTracker(runner, VrrpScript(name="c", interval=0.05, init_fail=True),
                                   runner.prepare(s), lambda n, up: changes.append(up))
            tr.start()
            first = list(changes)
            await wait_for(lambda: changes == [False, True])
            tr.stop()
            return first

    assert aio(main()) == [False]


def test_track_file_watcher(aio, tmp_path):
    f = tmp_path / "prio"
    missing_dir_file = tmp_path / "init_me"

    async def main():
        seen = []
        w = TrackFileWatcher(lambda name, v: seen.append((name, v)))
        w.start([TrackFile(name="tf", file=str(f), weight=2),
                 TrackFile(name="init", file=str(missing_dir_file), init_file=True, init_value=7)])
        assert ("tf", 0) in seen and ("init", 7) in seen       # missing file reads as 0
        f.write_text("15\n")
        await wait_for(lambda: seen[-1] == ("tf", 15))
        tmp = tmp_path / "tmp"
        tmp.write_text("-3")
        os.rename(tmp, f)                                      # moved in
        await wait_for(lambda: seen[-1] == ("tf", -3))
        f.unlink()                                             # deleted: value 0
        await wait_for(lambda: seen[-1] == ("tf", 0))
        w.stop()

    aio(main())
    assert missing_dir_file.read_text().strip() == "7"


def test_init_file_overwrite(aio, tmp_path):
    f = tmp_path / "v"
    f.write_text("3")

    async def main():
        vals = []
        for tf in (TrackFile(name="a", file=str(f), init_file=True, init_value=1),
                   TrackFile(name="b", file=str(f), init_file=True, init_value=9,
                             init_overwrite=True)):
            w = TrackFileWatcher(lambda n, v: vals.append(v))
            w.start([tf])
            w.stop()
        return vals

    assert aio(main()) == [3, 9]


def process(name: str, words: str, **kw) -> TrackProcess:
    return TrackProcess(name=name, process=tuple(words.split()), **kw)


def match(words: str, **kw) -> ProcessMatch:
    return ProcessMatch(process("p", words, **kw))


def test_process_matching_rules():
    name = match("haproxy")
    assert name.matches("haproxy", None) and not name.matches("haproxy2", None)
    long = match("a-very-long-process-name")
    assert long.matches("a-very-long-pro", None)                 # comm keeps 15 chars
    exact = match("/usr/sbin/nginx -c /etc/nginx.conf")
    assert exact.matches("nginx", ["/usr/sbin/nginx", "-c", "/etc/nginx.conf"])
    assert not exact.matches("nginx", ["/usr/sbin/nginx", "-c", "/etc/nginx.conf", "-x"])
    partial = match("/bin/x a b", param_match="partial")
    assert partial.matches("x", ["/bin/x", "a", "b", "c"])
    assert not partial.matches("x", ["/bin/x", "a", "bb"])
    initial = match("/bin/x a b", param_match="initial")
    assert initial.matches("x", ["/bin/x", "a", "bcd"])
    assert not initial.matches("x", ["/bin/x", "a"])
    noparams = match("/bin/x", param_match="partial")
    assert noparams.matches("x", ["/bin/x"]) and not noparams.matches("x", ["/bin/x", "a"])
    full = match("/bin/x", full_command=True)
    assert full.matches("x", ["/bin/x", "anything"]) and not full.matches("x", ["x"])
    q = match("x", quorum=2, quorum_max=3)
    assert [q.quorum_ok(n) for n in range(5)] == [False, False, True, True, False]


def test_process_watcher_counts_real_processes(aio, tmp_path):
    comm = "vt" + uuid.uuid4().hex[:10]
    binary = tmp_path / comm
    shutil.copy("/bin/sleep", binary)
    procs = [subprocess.Popen([str(binary), "30"]) for _ in range(2)]
    try:
        spec = process("svc", comm, quorum=2)
        assert scan_processes([ProcessMatch(spec)]) == [2]

        async def main():
            changes = []
            w = ProcessWatcher([spec, process("none", comm + "x")],
                               lambda n, up: changes.append((n, up)), interval=0.05)
            w.start()
            await wait_for(lambda: ("svc", True) in changes and ("none", False) in changes)
            procs[0].kill()
            procs[0].wait()                                    # reaped: not even a zombie
            await wait_for(lambda: changes[-1] == ("svc", False))
            await w.stop()

        aio(main())
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_process_watcher_terminate_delay_debounces(aio, tmp_path):
    comm = "vt" + uuid.uuid4().hex[:10]
    binary = tmp_path / comm
    shutil.copy("/bin/sleep", binary)

    async def main():
        changes = []
        p = subprocess.Popen([str(binary), "30"])
        spec = process("svc", comm, terminate_delay=0.5)
        w = ProcessWatcher([spec], lambda n, up: changes.append(up), interval=0.05)
        w.start()
        await wait_for(lambda: changes == [True])
        p.kill()
        p.wait()
        await asyncio.sleep(0.15)
        p = subprocess.Popen([str(binary), "30"])           # "restarted" within the delay
        await asyncio.sleep(0.7)
        p.kill()
        p.wait()
        await w.stop()
        return changes

    assert aio(main()) == [True]


def test_file_fault_keeps_priority_from_before():
    # keepalived 2.2.7: 100, file 1 x -5 -> 95; file 60 x -5 -> FAULT 95 (not 100).
    ti = TrackedInstance("VI_1", 100, [track_entry("file", "f", weight=-5)])
    ti.update("file", "f", 1)
    assert ti.verdict == Verdict(False, 95, False)
    ti.update("file", "f", 60)
    assert ti.verdict == Verdict(True, 95, False)
    ti.update("file", "f", 61)
    assert ti.verdict == Verdict(True, 95, False)
    ti.update("file", "f", 0)
    assert ti.verdict == Verdict(False, 100, False)


def test_equal_tracked_values_are_one_shared_mapping_never_changed_in_place():
    """Thousands of instances tracking one interface hold one values mapping,
    and a change to one instance's value leaves the others' alone."""
    a = TrackedInstance("VI_1", 100, [track_entry("interface", "eth0", weight=10)])
    b = TrackedInstance("VI_2", 100, [track_entry("interface", "eth0", weight=10)])
    a.update("interface", "eth0", True)
    b.update("interface", "eth0", True)
    assert a._values is b._values
    assert a.update("interface", "eth0", False).priority == 100
    assert b._values == {("interface", "eth0"): True} and b.verdict.priority == 110
    b.set_value("file", "f", 1)                 # an int 1 is not the bool True
    c = TrackedInstance("VI_3", 100, [track_entry("interface", "eth0")])
    c.set_value("interface", "eth0", True)
    c.set_value("file", "f", True)
    assert type(b._values[("file", "f")]) is int and type(c._values[("file", "f")]) is bool
    a.remove("interface", "eth0")
    assert a._values == {} and b._values[("interface", "eth0")] is True


def test_trackers_run_the_configured_blocks_by_name(aio, tmp_path):
    """config.model's vrrp_script / track_file / track_process blocks drive the
    watchers directly: each keyword (weight, reverse, init_file, quorum, rise)
    reaches the rule it belongs to."""
    from vrrpd.config import load
    from vrrpd.net import netlink as nl
    from vrrpd.net.links import Link
    from vrrpd.track.trackers import Trackers

    fail = write_script(tmp_path / "fail.sh", "exit 1")
    value = tmp_path / "value"
    comm = "vt" + uuid.uuid4().hex[:10]
    shutil.copy("/bin/sleep", tmp_path / comm)
    conf = tmp_path / "k.conf"
    conf.write_text(f"""
vrrp_script chk {{
    script "{fail}"
    interval 0.05
    weight -20
    rise 2
    fall 2
}}
vrrp_track_file tf {{
    file "{value}"
    weight 3 reverse
    init_file 4
}}
vrrp_track_process p {{
    process {comm}
    weight 5
    quorum 1
}}
vrrp_track_process many {{
    process {comm}
    weight 7
    quorum 2
}}
vrrp_instance VI_1 {{
    interface eth0
    virtual_router_id 1
    priority 100
    virtual_ipaddress {{
        192.0.2.1/24
    }}
    track_script {{
        chk
    }}
    track_file {{
        tf
    }}
    track_process {{
        p
        many
    }}
}}
""")
    cfg = load(str(conf), config_id="x").config
    eth0 = Link(index=2, name="eth0", flags=nl.IFF_UP | nl.IFF_RUNNING, mac=b"\0" * 6)

    async def main():
        async with ScriptRunner() as runner:
            t = Trackers(cfg, runner, on_verdict=lambda n, v: None)
            t.start({2: eth0})
            await t.ready()
            # script down: -20; file 4 x 3 reversed: -12; p up: +5; many below quorum: 0.
            await wait_for(lambda: t.verdict("VI_1") == Verdict(False, 73, False))
            await t.stop()

    proc = subprocess.Popen([str(tmp_path / comm), "30"])
    try:
        aio(main())
    finally:
        proc.kill()
        proc.wait()
    assert value.read_text().strip() == "4"
