"""Sync groups and tracking verdicts, without sockets: the engine in capture
mode with an injected clock, and SyncGroups' bookkeeping."""
from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from vrrpd.engine import (BACKUP, EV_STATE, Engine, FAULT, INIT, MASTER, REASON_PREEMPT,
                          REASON_SYNC_GROUP)
from vrrpd.config.model import Config, SyncGroup, VrrpInstance
from vrrpd.core.syncgroups import SyncGroups

SRC = socket.inet_aton("192.0.2.10")
GROUP = socket.inet_aton("224.0.0.18")


def engine_with(n: int):
    e = Engine(16)
    sid = e.add_socket(-1, socket.AF_INET, 1)
    idx = [e.add_instance(sock_id=sid, vrid=i + 1, version=3, priority=100, advert_int_cs=10,
                          src=SRC, dsts=[GROUP], vips=[socket.inet_aton(f"198.19.0.{i + 1}")])
           for i in range(n)]
    return e, idx


def test_force_state_master_and_back_sends_priority_zero():
    e, (a,) = engine_with(1)
    e.start(a, 0)
    e.pop_events()
    e.force_state(a, MASTER, 1000)
    assert e.state(a) == MASTER
    assert e.pop_events()[-1][:4] == (a, EV_STATE, MASTER, REASON_SYNC_GROUP)
    sent = e.pop_sent()
    assert sent and sent[-1][2][2] == 100          # an advert at once, our priority
    e.force_state(a, BACKUP, 2000)
    assert e.state(a) == BACKUP
    assert e.pop_sent()[-1][2][2] == 0             # priority 0: the peer group takes over fast


def test_force_state_leaves_fault_and_init_alone():
    e, (a, b) = engine_with(2)
    e.start(a, 0)
    e.set_fault(a, True, 0)
    e.force_state(a, MASTER, 10)
    e.force_state(b, MASTER, 10)            # never started: INIT
    assert e.state(a) == FAULT and e.state(b) == INIT
    with pytest.raises(ValueError):
        e.force_state(a, FAULT, 10)


@pytest.mark.parametrize("grouped", [True, False])
def test_member_waits_until_every_member_wants_master(grouped):
    """keepalived 2.2.7 vrrp_sync_can_goto_master: A's down timer runs out (it
    discards the peer's lower adverts) while B still hears a better master:
    A stays BACKUP, wanting MASTER; once B's timer runs out too, B goes and
    A (its group MASTER now) goes at its next timer.  Not grouped, A goes
    at once."""
    from engine_router import advert
    e, (a, b) = engine_with(2)
    if grouped:
        e.set_sync_group([a, b])
    peer = socket.inet_aton("192.0.2.20")
    e.start(a, 0)
    e.start(b, 0)
    e.pop_events()

    def hear(vrid: int, prio: int, now: int) -> None:
        e.inject(0, advert("192.0.2.20", prio, vrid=vrid, adv_cs=10, vips=(f"198.19.0.{vrid}",)),
                 peer, GROUP, 255, now)

    def run(t0: int, t1: int, *, b_hears: bool) -> list:
        events = []
        for now in range(t0, t1, 10_000):              # 10 ms steps
            if now % 100_000 == 0:                      # the peer's adverts, every 100 ms
                hear(1, 50, now)                        # lower: A discards it (preempt)
                if b_hears:
                    hear(2, 200, now)                   # higher: B follows that master
            e.tick(now)
            events += [ev for ev in e.pop_events() if ev[1] == EV_STATE]
        return events

    events = run(0, 2_000_000, b_hears=True)            # > 5 Master_Down_Intervals
    if not grouped:
        assert events == [(a, EV_STATE, MASTER, REASON_PREEMPT)]
        return
    assert events == [] and e.state(a) == e.state(b) == BACKUP
    events = run(2_000_000, 3_000_000, b_hears=False)
    assert [ev[0] for ev in events] == [b, a]
    assert e.state(a) == e.state(b) == MASTER
    # Regrouped (a member named twice is one), then out of the group again.
    e.set_sync_group([a, b, a])
    e.set_sync_group([a])
    e.remove_instance(b)


def config(tracking_weight=False) -> Config:
    inst = {n: VrrpInstance(name=n, interface="eth0", virtual_router_id=i + 1,
                            sync_group="G" if n != "C" else None)
            for i, n in enumerate("ABC")}
    return Config(instances=inst,
                  sync_groups={"G": SyncGroup(name="G", group=("A", "B"),
                                              sync_group_tracking_weight=tracking_weight)})


def test_followers_only_for_own_moves():
    sg = SyncGroups(config())
    assert sg.followers("A", MASTER, BACKUP, "master_down_timer") == ("G", MASTER)
    assert sg.followers("A", BACKUP, MASTER, "higher_priority_advert") == ("G", BACKUP)
    assert sg.followers("A", MASTER, BACKUP, "sync_group") is None
    assert sg.followers("A", BACKUP, INIT, "startup") is None
    assert sg.followers("C", MASTER, BACKUP, "master_down_timer") is None
    assert sg.others("G", "A") == ("B",)


def test_one_member_faulted_faults_the_group():
    sg = SyncGroups(config())
    assert sg.group_faulted("B", {"A": True, "B": False})
    assert not sg.group_faulted("B", {"A": False, "B": False})
    assert not sg.group_faulted("C", {"A": True})


def test_group_notified_after_its_last_member():
    sg = SyncGroups(config())
    M, B = MASTER, BACKUP
    assert sg.reported("A", B) is None                 # B not yet notified
    assert sg.reported("C", M) is None                 # not in a group
    assert sg.reported("B", B) == ("G", B)
    assert sg.reported("B", B) is None                 # no repeat
    assert sg.reported("A", M) is None
    assert sg.reported("B", M) == ("G", M)


def test_group_announced_first_unless_a_member_waits_for_a_script():
    F, B = FAULT, BACKUP
    assert SyncGroups(config()).initial({}, {}) == [("G", B)]
    assert SyncGroups(config()).initial({}, {"B": True}) == [("G", F)]
    sg = SyncGroups(config())
    assert sg.initial({"A": True}, {}) == []
    assert sg.reported("A", B) is None and sg.reported("B", B) == ("G", B)


def test_reload_carries_what_was_notified():
    old = SyncGroups(config())
    old.reported("A", MASTER)
    old.reported("B", MASTER)
    new = SyncGroups(config())
    new.carry(old)
    assert new.reported("A", MASTER) is None   # already the group's state


# -- Trackers: how the config's track_* become verdicts -------------------------------

from vrrpd.config.model import Track as TrackLine, VrrpScript  # noqa: E402
from vrrpd.net.links import Link, LinkEvent  # noqa: E402
from vrrpd.track.trackers import Trackers  # noqa: E402
from vrrpd.net import netlink as nl  # noqa: E402


def link(name, up=True, index=2):
    flags = nl.IFF_UP | nl.IFF_RUNNING if up else 0
    return Link(index=index, name=name, flags=flags, mac=b"\0" * 6)


def trackers_for(instances, scripts=(), groups=()):
    verdicts = []
    cfg = Config(instances={i.name: i for i in instances},
                 scripts={s.name: s for s in scripts},
                 sync_groups={g.name: g for g in groups})
    return Trackers(cfg, runner=None, on_verdict=lambda n, v: verdicts.append((n, v))), verdicts


def test_omitted_weight_takes_the_scripts_own():
    inst = VrrpInstance(name="A", interface="eth0", virtual_router_id=1, priority=100,
                        track_script=(TrackLine(name="chk"), TrackLine(name="chk2", weight=5)))
    t, _ = trackers_for([inst], scripts=[VrrpScript(name="chk", weight=-30),
                                         VrrpScript(name="chk2", weight=-30)])
    weights = {tr.name: tr.weight for _, tr in t.instances["A"].tracks}
    assert weights == {"chk": -30, "chk2": 5, "eth0": 0}


def test_sync_group_members_weighted_scripts_dropped_unless_kept():
    inst = VrrpInstance(name="A", interface="eth0", virtual_router_id=1, sync_group="G",
                        track_interface=(TrackLine(name="eth1", weight=-20),),
                        track_script=(TrackLine(name="chk", weight=-20), TrackLine(name="chk0")))
    for keep, expected in ((False, {"eth1": -20, "chk0": 0, "eth0": 0}),
                           (True, {"eth1": -20, "chk": -20, "chk0": 0, "eth0": 0})):
        t, _ = trackers_for([inst], groups=[SyncGroup(name="G", group=("A",),
                                                      sync_group_tracking_weight=keep)],
                            scripts=[VrrpScript(name="chk"), VrrpScript(name="chk0")])
        weights = {tr.name: tr.weight for _, tr in t.instances["A"].tracks}
        assert weights == expected


def test_own_interface_down_is_fault_unless_dont_track_primary():
    for dont, fault in ((False, True), (True, False)):
        inst = VrrpInstance(name="A", interface="eth0", virtual_router_id=1,
                            dont_track_primary=dont)
        t, verdicts = trackers_for([inst])
        t.start({2: link("eth0")})
        assert not t.verdict("A").fault
        t.on_link(link("eth0", up=False), LinkEvent.DOWN, None)
        assert t.verdict("A").fault is fault


def test_interface_weight_moves_priority():
    inst = VrrpInstance(name="A", interface="eth0", virtual_router_id=1, priority=100,
                        track_interface=(TrackLine(name="eth1", weight=-30),
                                         TrackLine(name="eth2", weight=20)))
    t, verdicts = trackers_for([inst])
    t.start({2: link("eth0"), 3: link("eth1", index=3), 4: link("eth2", index=4)})
    assert t.verdict("A").priority == 120
    t.on_link(link("eth1", up=False, index=3), LinkEvent.DOWN, None)
    assert t.verdict("A").priority == 90
    t.on_link(link("eth2", up=False, index=4), LinkEvent.DELETED, None)
    assert t.verdict("A").priority == 70 and verdicts[-1] == ("A", t.verdict("A"))


def test_a_tracked_objects_change_settles_once_for_all_its_instances():
    """One tracked object's change (a link going down, a script failing)
    reaches every instance tracking it, each verdict reported, then settles
    once: the daemon pumps there, so their transitions go out as one batch
    (one netlink move of their VIPs, one log line), not a pump and a move
    each.  A change that moves no verdict settles nothing; before the
    daemon elects, settling pumps nothing."""
    from vrrpd.core.daemon import Daemon
    insts = [VrrpInstance(name=f"VI_{k}", interface="eth0", virtual_router_id=k + 1,
                          track_script=(TrackLine(name="chk"),)) for k in range(200)]
    names = [i.name for i in insts]
    calls: list = []
    d = SimpleNamespace(_electing=True, instances={n: SimpleNamespace(name=n) for n in names},
                        syncgroups=SimpleNamespace(group_of={}, members={}),
                        _apply_verdict=lambda inst, t: calls.append(inst.name),
                        _pump=lambda: calls.append("pump"))
    cfg = Config(instances={i.name: i for i in insts}, scripts={"chk": VrrpScript(name="chk")})
    t = Trackers(cfg, runner=None, on_verdict=lambda n, v: Daemon._on_verdict(d, n, v),
                 on_settled=lambda: Daemon._verdicts_settled(d))
    t.on_link(link("eth0"), LinkEvent.NEW, None)
    t._update("script", "chk", True)            # what a script's first success reports
    calls.clear()
    t.on_link(link("eth0", up=False), LinkEvent.DOWN, None)
    assert calls == names + ["pump"] and t.verdict("VI_7").fault
    calls.clear()
    t.on_link(link("eth0", up=False), LinkEvent.DOWN, None)     # no change
    assert calls == []
    t.on_link(link("eth0"), LinkEvent.UP, None)
    calls.clear()
    t._update("script", "chk", False)           # the script fails
    assert calls == names + ["pump"] and t.verdict("VI_7").fault
    t._update("script", "chk", True)
    calls.clear()
    d._electing = False
    t.on_link(link("eth0", up=False), LinkEvent.DOWN, None)
    assert calls == []


def test_deferred_sends_wait_for_flush():
    e = Engine(4, defer_sends=True)
    sid = e.add_socket(-1, socket.AF_INET, 1)
    a = e.add_instance(sock_id=sid, vrid=1, version=3, priority=255, advert_int_cs=10,
                       src=SRC, dsts=[GROUP], vips=[], owner=True)
    e.start(a, 0, want_master=True)
    assert e.state(a) == MASTER and e.pop_sent() == []      # queued
    e.flush()
    assert len(e.pop_sent()) == 1
    e.set_priority(a, 200, 10)
    assert e.pop_sent() == []
    e.tick(20)                                                     # a tick sends the queue
    assert [p[2][2] for p in e.pop_sent()] == [200]
    e.stop(a, 30)                                                  # shutdown never waits
    assert [p[2][2] for p in e.pop_sent()] == [0]
