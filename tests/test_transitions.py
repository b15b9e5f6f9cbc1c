"""The daemon's per-batch transition work (vrrpd/core/daemon.py, vrrpd/scripts/notify.py):
summarised logging, cached announcements, coalesced fifo writes, receive
pacing.  Unit tests with fakes: no sockets, no namespaces."""
import fcntl
import gc
import logging
import os
import select
from types import SimpleNamespace

import pytest

from fake_rtnl import vip_effects
from scriptfiles import read_kept_lines
from vrrpd.engine import (BACKUP, EV_RX_LOWER_PRI, EV_STATE, MASTER,
                          REASON_PRIORITY_ZERO_ADVERT, Event)
from vrrpd.scripts import notify
from vrrpd.core import pump, transitions
from vrrpd.net.addresses import Vip
from vrrpd.net.garp import arp_frame
from vrrpd.net.links import Link
from vrrpd.ops import collector
from vrrpd.ops.ratelimit import PerKey
from vrrpd.scripts.notify import NotifyFifo, coalesced, fifo_line
from vrrpd.core.instance import Instance
from vrrpd.core.pump import Pump, log_transitions
from vrrpd.core.syncgroups import SyncGroups
from vrrpd.core.transitions import Transitions


def inst(name: str, vips=()) -> Instance:
    conf = SimpleNamespace(garp_master_delay=5.0, garp_master_repeat=5, garp_master_refresh=0.0,
                           garp_master_refresh_repeat=1, garp_lower_prio_delay=None,
                           garp_lower_prio_repeat=None, virtual_routes=[], virtual_rules=[])
    i = Instance(name, SimpleNamespace(conf=conf, needs_drop=False), 2, "eth0")
    i.vips = list(vips)
    return i


def test_small_batch_logs_each_transition_as_keepalived(caplog):
    batch = [(inst(f"VI_{k}"), BACKUP, MASTER, "master_down_timer")
             for k in range(pump.LOG_EACH)]
    with caplog.at_level(logging.INFO, "vrrpd"):
        log_transitions(batch)
    assert [r.getMessage() for r in caplog.records] == [
        f"(VI_{k}) Entering MASTER STATE (master_down_timer)" for k in range(pump.LOG_EACH)]


def test_large_batch_is_one_line_per_state_and_reason_naming_every_instance(caplog):
    batch = [(inst(f"VI_{k}"), BACKUP, MASTER, "master_down_timer")
             for k in range(1000)]
    batch.append((inst("VI_x"), MASTER, BACKUP, "higher_priority_advert"))
    with caplog.at_level(logging.INFO, "vrrpd"):
        log_transitions(batch)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    head, names = lines[0].split(": ", 1)
    assert head == "1000 instances Entering MASTER STATE (master_down_timer)"
    assert names.split() == [f"VI_{k}" for k in range(1000)]
    assert lines[1] == "1 instances Entering BACKUP STATE (higher_priority_advert): VI_x"
    caplog.clear()
    with caplog.at_level(logging.DEBUG, "vrrpd"):           # -D: each one as well
        log_transitions(batch)
    assert "(VI_999) Entering MASTER STATE (master_down_timer)" in caplog.text


class FakeEffects:
    """vrrpd._effects.Effects' calls _prebuild makes, recorded."""

    def __init__(self):
        self.instances, self.sockets = {}, {}

    def set_socket(self, slot, fd):
        self.sockets[slot] = fd

    def set_instance(self, idx, **kw):
        self.instances[idx] = kw


def side_effects(links: dict, effects=None) -> Transitions:
    """The transitions part alone, on fakes of the kernel side."""
    plan = SimpleNamespace(config=SimpleNamespace(
        global_defs=SimpleNamespace(vrrp_garp_interval=0.0, vrrp_gna_interval=0.0)))
    garp = SimpleNamespace(sender=SimpleNamespace(
        socket_for=lambda ifindex: SimpleNamespace(fileno=lambda: 100 + ifindex)))
    t = Transitions(plan, SimpleNamespace(links=links), effects or FakeEffects(),
                    SimpleNamespace(encode=lambda kind, vip: b""), garp=garp)
    t.syncgroups = SimpleNamespace(group_of={})
    return t


def test_prebuilt_instances_keep_no_announcements_unless_paced():
    """A takeover sends the frames prebuilt in Effects: the Announce objects
    they came from are not kept per instance, except for the GarpScheduler's
    (refresh or pacing configured)."""
    mac = bytes.fromhex("020000000001")
    d = side_effects({3: Link(3, "eth0", 0, mac)})
    i = inst("VI_1", [Vip.parse("192.0.2.1", 3)])
    d._announces(i)                                       # e.g. a lower-priority advert
    d._prebuild(i)
    assert d.effects.instances[i.idx]["frames"] == [(0, arp_frame(mac, bytes([192, 0, 2, 1])))]
    assert d.effects.sockets == {0: 103}                  # slot 0: eth0's packet socket
    assert i.announces == transitions.NO_ANNOUNCES
    i.spec.conf.garp_master_refresh = 10.0
    d._prebuild(i)
    assert i.garp_paced and i.announces[1] and d._announces(i) is i.announces[1]


def test_what_a_reload_or_a_link_changes_is_prebuilt_again():
    """Prebuilt bytes are for the spec, VIPs, name and links they were built
    from: a reload's new spec counts as new even when equal (what _prebuild
    reads of global_defs is not in it); a link's change rebuilds them all."""
    mac = bytes.fromhex("020000000001")
    d = side_effects({3: Link(3, "eth0", 0, mac)})
    i = inst("VI_1", [Vip.parse("192.0.2.1", 3)])
    d._prebuild(i)
    assert d._is_prebuilt(i)
    i.spec = SimpleNamespace(**vars(i.spec))
    assert i.spec == i.prebuilt[0] and not d._is_prebuilt(i)
    d._prebuild(i)
    i.vips = list(i.vips)
    assert not d._is_prebuilt(i)
    d._prebuild(i)
    d._links_gen += 1
    assert not d._is_prebuilt(i)


def test_a_resent_frame_goes_to_the_interface_of_its_socket_slot():
    """Effects hands back (slot, frame) for a full device queue: the slot maps
    back to the ifindex it was assigned for, on each interface."""
    mac = bytes.fromhex("020000000001")
    d = side_effects({3: Link(3, "eth0", 0, mac), 7: Link(7, "eth1", 0, mac)})
    for name, ifindex in (("VI_1", 7), ("VI_2", 3), ("VI_3", 7)):
        d._prebuild(inst(name, [Vip.parse("192.0.2.1", ifindex)]))
    assert d.effects.sockets == {0: 107, 1: 103}
    assert [d._ifindex_of_slot(s) for s in (0, 1)] == [7, 3]


def test_announces_are_built_once_and_rebuilt_when_a_link_or_the_vips_change():
    mac = bytes.fromhex("020000000001")
    d = side_effects({3: Link(3, "eth0", 0, mac)})
    i = inst("VI_1", [Vip.parse("192.0.2.1", 3), Vip.parse("2001:db8::1", 3)])
    first = d._announces(i)
    assert d._announces(i) is first                       # cached
    (key, ann), = first
    assert key == ("VI_1", 3) and ann.mac == mac and ann.vips4 and ann.vips6
    assert ann.config.master_repeat == 5
    d.links.links[3] = Link(3, "eth0", 0, bytes.fromhex("020000000002"))   # new MAC
    (_, ann2), = d._announces(i)
    assert ann2.mac == bytes.fromhex("020000000002")
    i.spec.conf = SimpleNamespace(**{**vars(i.spec.conf), "garp_master_repeat": 2})  # reload
    (_, ann2), = d._announces(i)
    assert ann2.config.master_repeat == 2
    assert d._announces(i)[0][1] is ann2
    i.vips = [Vip.parse("192.0.2.9", 3)]                   # reload replaced the VIPs
    (_, ann3), = d._announces(i)
    assert ann3.vips4 == [bytes([192, 0, 2, 9])] and not ann3.vips6
    del d.links.links[3]                                  # link gone: nothing to announce
    assert d._announces(i) == []


def test_coalesced_fifo_lines_go_out_at_the_end_in_few_whole_writes(aio, tmp_path, monkeypatch):
    path = str(tmp_path / "fifo")
    writes = []
    real_write = os.write

    def counting_write(fd, data):
        writes.append(len(data))
        return real_write(fd, data)

    async def main():
        fifo = NotifyFifo(path)
        assert fifo.open()
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        lines = [fifo_line("INSTANCE", f"VI_{k}", "MASTER", 100) for k in range(500)]
        monkeypatch.setattr(notify.os, "write", counting_write)
        with coalesced():
            for line in lines:
                fifo.write_line(line)
            with coalesced():                           # nested: the outer one writes
                fifo.write_line(lines[0])
            assert not writes and fifo.lines == 0
        got = os.read(reader, 1 << 20).decode()
        os.close(reader)
        await fifo.close()
        return lines, got, fifo

    lines, got, fifo = aio(main())
    assert got == "".join(lines) + lines[0]
    assert fifo.lines == 501
    assert all(n <= select.PIPE_BUF for n in writes)
    assert len(writes) <= 2 * -(-len(got) // select.PIPE_BUF)     # not one per line


class FakeEngine:
    def __init__(self, deadline=-1):
        self.calls = []
        self.deadline = deadline
        self.per_read = 0                   # packets each on_readable() reads
        self.events = []                    # what pop_events() hands out
        self.due_masters = 0                # expired down timers: tick() makes them MASTER
        self.made = 0
        self.caps = []                      # max_masters of each tick()

    def on_readable(self, sock_id, now):
        self.calls.append(("read", sock_id))
        return self.per_read

    def tick(self, now, max_masters=-1):
        self.calls.append(("tick",))
        self.caps.append(max_masters)
        made = self.due_masters if max_masters < 0 else min(max_masters, self.due_masters)
        first = self.made
        self.events += [Event(i, EV_STATE, MASTER, REASON_PRIORITY_ZERO_ADVERT)
                        for i in range(first, first + made)]
        self.made += made
        self.due_masters -= made

    def pop_events(self, max_events=0):
        n = max_events or len(self.events)
        out, self.events = self.events[:n], self.events[n:]
        return out

    def priority(self, idx):
        return 200

    def flush(self):
        pass

    def tx_pending(self):
        return 0

    def next_deadline(self):
        return 0 if self.due_masters else self.deadline


class FakeLoop:
    def __init__(self):
        self.readers, self.timers = {}, []

    def add_reader(self, fd, cb, *args):
        self.readers[fd] = lambda: cb(*args)

    def remove_reader(self, fd):
        self.readers.pop(fd, None)

    def call_soon(self, cb, *args):
        return self.call_later(0, cb, *args)

    def call_later(self, delay, cb, *args):
        t = (delay, cb, args)
        self.timers.append(t)
        # As asyncio's: cancelling one that has run does nothing.
        return SimpleNamespace(cancel=lambda: t in self.timers and self.timers.remove(t))

    def fire(self, name: str) -> None:
        """Run the timers armed for the method `name` (as if they were due)."""
        due = [t for t in self.timers if t[1].__name__ == name]
        for t in due:
            self.timers.remove(t)
            t[1](*t[2])


def pump_on(engine) -> Pump:
    """The pump alone, on a fake engine and loop, with two sockets."""
    p = Pump(engine, FakeLoop())
    p.effects_idle = True       # type: ignore[misc]    # Transitions' part of the daemon
    p.add_socket(("eth0", 2), 0, SimpleNamespace(fileno=lambda: 10))
    p.add_socket(("eth1", 2), 1, SimpleNamespace(fileno=lambda: 11))
    return p


def takeover(n):
    """A pump whose instances 0..n-1 are BACKUP; -> (engine, pump, batches queued)."""
    engine = FakeEngine()
    d = pump_on(engine)
    d.by_idx = {i: SimpleNamespace(name=f"VI_{i}", state=BACKUP, priority=100, transitions=0)
                for i in range(n)}
    d.syncgroups = SimpleNamespace(group_of={})
    batches: list = []
    d.queue = batches.append
    return engine, d, batches


@pytest.mark.parametrize("slow", [False, True])
def test_a_takeover_of_thousands_is_dispatched_a_slice_per_loop_turn(monkeypatch, slow):
    """The effects queue gets the first slice before the rest is dispatched,
    so the first instances' VIPs and notify lines do not wait for the last.
    Until a chunk is reported the slices stay small (that report must not
    wait behind a large one), one per turn of the loop; then they are
    DISPATCH_MAX, as many per turn as fit in DISPATCH_TURN_S (slow: none
    more than one, as a slice of lower-priority answers), and the next
    takeover starts small again."""
    if slow:
        monkeypatch.setattr(pump, "DISPATCH_TURN_S", 0.0)
    first, most = pump.DISPATCH_SLICE, pump.DISPATCH_MAX
    sizes = [first, first, most, most]
    n = sum(sizes) + 3
    engine, d, batches = takeover(n)
    engine.events = [Event(i, EV_STATE, MASTER, REASON_PRIORITY_ZERO_ADVERT) for i in range(n)]
    d.pump()
    assert [len(b) for b in batches] == sizes[:1] and d.dispatching
    d._loop.fire("_pump_more")
    assert [len(b) for b in batches] == sizes[:2] and d.dispatching
    d.chunk_reported()
    d._loop.fire("_pump_more")
    if slow:
        assert [len(b) for b in batches] == sizes[:3] and d.dispatching
        d._loop.fire("_pump_more")
        assert [len(b) for b in batches] == sizes and d.dispatching
        d._loop.fire("_pump_more")
    assert [len(b) for b in batches] == sizes + [3] and not d.dispatching
    assert [inst.name for b in batches for inst, *_ in b] == [f"VI_{i}" for i in range(n)]
    assert all(inst.state == MASTER for inst in d.by_idx.values())
    engine.events = [Event(i, EV_STATE, BACKUP, REASON_PRIORITY_ZERO_ADVERT)
                     for i in range(2 * first + 1)]
    d.pump()
    d._loop.fire("_pump_more")
    assert [len(b) for b in batches[5:]] == [first, first] and d.dispatching


def test_lower_priority_answers_keep_their_place_among_transitions():
    """An answer to a lower-priority advert goes to the effects queue after
    the transitions dispatched before it and before those after it (an
    instance's MASTER, then its MASTER_RX_LOWER_PRI; an answer, then its
    instance leaving MASTER), the answers between two transitions in one
    burst."""
    engine, d, _ = takeover(3)
    for inst in d.by_idx.values():
        inst.spec = SimpleNamespace(advert_int_cs=10)
    d.by_idx[2].state = MASTER
    d.lower_log, d.hooks = PerKey(), []
    order: list = []
    d.queue = lambda batch: order.append(("transitions", [i.name for i, *_ in batch]))
    d.after_effects = lambda call: call()
    d.announce_lower_prio = lambda insts: order.append(("answers", [i.name for i in insts]))
    peer = bytes([192, 0, 2, 9])
    engine.events = [Event(2, EV_RX_LOWER_PRI, 50, peer),
                     Event(0, EV_STATE, MASTER, REASON_PRIORITY_ZERO_ADVERT),
                     Event(1, EV_STATE, MASTER, REASON_PRIORITY_ZERO_ADVERT),
                     Event(0, EV_RX_LOWER_PRI, 50, peer), Event(1, EV_RX_LOWER_PRI, 50, peer),
                     Event(2, EV_STATE, BACKUP, REASON_PRIORITY_ZERO_ADVERT)]
    d.pump()
    assert order == [("answers", ["VI_2"]), ("transitions", ["VI_0", "VI_1"]),
                     ("answers", ["VI_0", "VI_1"]), ("transitions", ["VI_2"])]


def test_a_call_after_effects_waits_for_the_batches_queued_before(aio):
    """after_effects runs at once when nothing is queued; else in the
    reports' order: after every chunk of the batches before it is reported,
    before any of those after it, and no chunk after it has its lines
    written by the netlink thread (the call's would come later)."""
    import asyncio
    seen: list = []

    class Recorder(Transitions):
        dispatching = False

        def _move_run(self, kind, run):
            names = [i.name for i, *_ in run]
            seen.append(("moved", names, self._loop_reports))
            self._moving.put_nowait((run, kind, None, None))
            self._loop_reports += 1

        async def _report(self, chunk, kind, insts, move):
            await asyncio.sleep(0.01)           # the chunk's VIPs on their way
            seen.append(("reported", [i.name for i, *_ in chunk]))

    async def main():
        d = Recorder(None, SimpleNamespace(hold=lambda: None, release=lambda: None), None, None)
        d.after_effects(lambda: seen.append("call"))
        d.start_effects()
        d.queue([(inst("VI_0"), BACKUP, MASTER, "r")])
        d.after_effects(lambda: seen.append("call"))
        d.queue([(inst("VI_1"), BACKUP, MASTER, "r")])
        d.after_effects(boom)               # logged; the queue goes on
        d.queue([(inst("VI_2"), BACKUP, MASTER, "r")])
        await d.effects_done()
        d.stop_effects()
        return d

    def boom():
        seen.append("boom")
        raise RuntimeError("boom")

    d = aio(main())
    assert seen == ["call", ("moved", ["VI_0"], 0), ("moved", ["VI_1"], 2),
                    ("moved", ["VI_2"], 4), ("reported", ["VI_0"]), "call",
                    ("reported", ["VI_1"]), "boom", ("reported", ["VI_2"])]
    assert d.effects_idle and d._loop_reports == 0


def test_a_takeover_gives_its_first_new_masters_a_head_start():
    """From quiet, a tick makes at most HEAD_START new masters; the rest of the
    takeover waits until their side effects are done (end_head_start), or
    HEAD_START_S, and then goes on uncapped."""
    n = 3 * pump.HEAD_START
    engine, d, batches = takeover(n)
    engine.due_masters = n
    d.pump()
    assert engine.caps == [pump.HEAD_START] and [len(b) for b in batches] == [pump.HEAD_START]
    assert engine.due_masters == n - pump.HEAD_START and not d.dispatching
    assert [t[0] for t in d._loop.timers] == [pump.HEAD_START_S]   # nothing else armed
    d.pump()                                    # meanwhile (a timer, the sockets): no more
    assert engine.caps[-1] == 0 and engine.due_masters == n - pump.HEAD_START
    d.effects_idle = False                      # the first slice is being applied
    d.chunk_reported()                          # ... and has reported
    assert engine.caps[-1] == -1 and engine.due_masters == 0
    while d.dispatching:
        d._loop.fire("_pump_more")
    assert [len(b) for b in batches] == [pump.HEAD_START, n - pump.HEAD_START]   # grown
    assert [inst.name for b in batches for inst, *_ in b] == [f"VI_{i}" for i in range(n)]
    assert not [t for t in d._loop.timers if t[1].__name__ == "end_head_start"]

    engine, d, batches = takeover(n)            # no report in time: the timer ends it
    engine.due_masters = n
    d.pump()
    d.effects_idle = False
    d._loop.fire("end_head_start")
    assert engine.caps == [pump.HEAD_START, -1] and engine.due_masters == 0
    while d.dispatching:                        # ... and its slices wait for a report to grow
        d._loop.fire("_pump_more")
    assert [len(b) for b in batches] == [pump.HEAD_START] * 3

    engine, d, batches = takeover(pump.HEAD_START)      # all fit: no head start
    engine.due_masters = pump.HEAD_START
    d.pump()
    assert engine.due_masters == 0
    assert not [t for t in d._loop.timers if t[1].__name__ == "end_head_start"]

    engine, d, batches = takeover(n)            # effects busy: no cap
    engine.due_masters = n
    d.effects_idle = False
    d.pump()
    assert engine.caps == [-1] and engine.due_masters == 0


def test_receive_switches_to_polling_above_the_rate_and_back_below_a_quarter():
    engine = FakeEngine()
    d = pump_on(engine)
    assert {k: sid for k, (sid, _) in d.sockets.items()} == {("eth0", 2): 0, ("eth1", 2): 1}
    d.start_rx_pacing()
    per_check = pump.RX_POLL_RATE * pump.RX_CHECK_S
    engine.per_read = int(per_check) + 1
    d._loop.readers[10]()                                 # one wake-up, above the rate
    d._loop.fire("_check_rx")
    assert d.polling and d._loop.readers == {}
    engine.per_read = int(per_check / 4)                  # two sockets: half the rate
    d._loop.fire("_poll_rx")
    assert engine.calls[-3:] == [("read", 0), ("read", 1), ("tick",)]
    d._loop.fire("_check_rx")
    assert d.polling                                      # hysteresis: stays
    engine.per_read = 0
    d._loop.fire("_check_rx")
    assert not d.polling and set(d._loop.readers) == {10, 11}
    assert not [t for t in d._loop.timers if t[1].__name__ == "_poll_rx"]


def test_late_timers_read_the_sockets_before_they_run():
    now = pump.now_us()
    on_time = pump_on(FakeEngine(deadline=now))
    on_time._pump()
    assert on_time.engine.calls[0] == ("tick",)
    late = pump_on(FakeEngine(deadline=now - 10 * pump.RX_LATE_US))
    late._pump()
    assert late.engine.calls[:3] == [("read", 0), ("read", 1), ("tick",)]


def test_coalesced_lines_behind_a_full_pipe_queue_in_order_and_drops_are_counted(aio, tmp_path):
    path = str(tmp_path / "fifo")
    total = 5000

    async def main():
        fifo = NotifyFifo(path, max_queue=100)
        assert fifo.open()
        fcntl.fcntl(fifo._fd, fcntl.F_SETPIPE_SZ, 1 << 16)     # a pipe the lines overfill
        with coalesced():
            for k in range(total):
                fifo.write_line(fifo_line("INSTANCE", f"VI_{k}", "MASTER", 100))
        in_pipe, queued, drops = fifo.lines, fifo.queued, fifo.drops
        return in_pipe, queued, drops, await read_kept_lines(fifo, path, total)

    in_pipe, queued, drops, lines = aio(main())
    assert in_pipe > 0 and queued == 100 and in_pipe + queued + drops == total
    assert [int(line.split('"')[1][3:]) for line in lines] == list(range(total - drops))



def test_link_monitor_is_held_while_a_mass_failover_is_applied(aio, monkeypatch):
    """transitions.HOLD_MONITOR transitions waiting: the link monitor's reading
    and the garbage collector wait until the effects queue is empty (the
    monitor's events stay in the socket); then the failover's freed memory
    goes back to the kernel, off the loop."""
    import asyncio
    import threading
    assert gc.isenabled()
    calls = []
    monkeypatch.setattr(transitions.memtrim, "trim", lambda: calls.append(
        ("trim", threading.current_thread() is threading.main_thread())))

    class Recorder(Transitions):
        dispatching = False             # the Pump part: nothing left to hand out

        def _waits_first(self, runs):
            return True         # each batch through the effects task (see the next test)

        def _move_run(self, kind, run):
            calls.append((len(run), gc.isenabled()))

    async def main():
        d = Recorder(None, SimpleNamespace(hold=lambda: calls.append("hold"),
                                           release=lambda: calls.append("release")), None, None)
        d.start_effects()
        def mk(n):
            return [(inst(f"VI_{k}"), BACKUP, MASTER, "r") for k in range(n)]

        for n in (3, 5):                                   # small: never held
            d.queue(mk(n))
            await d.effects_done()
        for n in (40, 30, 2):       # 72 waiting: held until done; applied as one batch
            d.queue(mk(n))
        await d.effects_done()
        for _ in range(100):
            if len(calls) > 5:
                break
            await asyncio.sleep(0.01)
        d.stop_effects()

    aio(main())
    assert calls == [(3, True), (5, True), "hold", (72, False), "release", ("trim", False)]
    assert gc.isenabled() and not collector.paused()


def test_a_hold_ends_with_the_effects_task(aio):
    """Stopped in a mass failover (shutdown): the collector runs again."""
    links = SimpleNamespace(hold=lambda: None, release=lambda: None)

    async def main():
        d = Transitions(None, links, None, None)
        d.start_effects()
        d._effects_waiting = transitions.HOLD_MONITOR        # as queue() counts them
        d._taking([None] * transitions.HOLD_MONITOR)
        assert not gc.isenabled()
        d.stop_effects()

    aio(main())
    assert gc.isenabled() and not collector.paused()


def test_collector_pauses_nest_and_bring_back_what_ran_before():
    assert gc.isenabled()
    collector.pause()
    collector.pause()                   # a reload in a mass failover
    collector.resume()
    assert not gc.isenabled() and collector.paused()
    collector.resume()
    assert gc.isenabled() and not collector.paused()
    gc.disable()                        # off before (start-up): stays off
    try:
        collector.pause()
        collector.resume()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(RuntimeError):
        collector.resume()


def test_a_batch_queued_while_the_effects_task_waits_moves_within_queue(aio):
    """The effects task waiting for work and nothing to await before the
    VIPs: queue() itself hands the batch's VIPs on, with no turn of the loop
    in between.  A batch whose strict-mode drop must go in first goes
    through the task, and one queued behind it waits its turn."""
    import asyncio
    seen: list = []

    class Recorder(Transitions):
        dispatching = False

        def _move_run(self, kind, run):
            seen.append([i.name for i, *_ in run])
            self._loop_reports += 1
            self._moving.put_nowait((run, kind, None, None))

        async def _report(self, chunk, kind, insts, move):
            pass

    class Firewall:
        async def add_vips(self, vips):
            await asyncio.sleep(0.01)
            seen.append(("drop", list(vips)))

    def strict(name):
        i = inst(name, vips=[name + "-vip"])
        i.spec.needs_drop = True
        return i

    async def main():
        d = Recorder(None, SimpleNamespace(hold=lambda: None, release=lambda: None), None, None)
        d.start_effects()
        await asyncio.sleep(0)                  # the task now waits for a batch
        d.queue([(inst("VI_0"), BACKUP, MASTER, "r")])
        assert seen == [["VI_0"]]
        d.firewall = Firewall()
        d.queue([(strict("VI_1"), BACKUP, MASTER, "r")])
        d.queue([(inst("VI_2"), BACKUP, MASTER, "r")])
        assert seen == [["VI_0"]]
        await d.effects_done()
        d.stop_effects()
        return d

    d = aio(main())
    assert seen == [["VI_0"], ("drop", ["VI_1-vip"]), ["VI_1", "VI_2"]]
    assert d.effects_idle and d._loop_reports == 0


def test_chunks_grow_across_the_slices_of_one_takeover():
    """A run's chunks: the first worth one netlink send, each next one twice
    the last up to CHUNK_GROWTH sends; while moves are on their way (a
    takeover dispatched in slices) the next run goes on from the size reached."""
    requester = SimpleNamespace(chunk=10, busy=False)
    t = Transitions(None, None, vip_effects([1] * 150), SimpleNamespace(requester=requester))
    t._is_prebuilt = lambda inst: True
    run = [(SimpleNamespace(idx=k), BACKUP, MASTER, "r") for k in range(150)]
    assert transitions.CHUNK_GROWTH == 8

    def sizes(run):
        chunks = t._chunks(run)
        assert [idxs for _, idxs in chunks] == [[i.idx for i, *_ in c] for c, _ in chunks]
        return [len(c) for c, _ in chunks]

    assert sizes(run) == [10, 20, 40, 80]
    requester.busy = True
    assert sizes(run) == [80, 70]
    requester.busy = False
    assert sizes(run[:30]) == [10, 20]
    requester.busy = True                   # a partial chunk does not grow the next one
    assert t._chunk_sends == 4 and sizes(run[:30]) == [30]
    assert t._chunk_sends == 4 and sizes(run) == [40, 80, 30]
    t = Transitions(None, None, vip_effects([3] * 150), SimpleNamespace(requester=requester))
    t._is_prebuilt = lambda inst: True
    requester.busy = False                  # counted in messages: 3 per instance
    assert sizes(run) == [4, 7, 14, 27, 27, 27, 27, 17]


def test_a_chunk_is_reported_in_turns_of_the_loop(aio, monkeypatch):
    """A chunk's GARPs and notifications go REPORT_SLICE instances at a time,
    yielding to the loop once a turn has run REPORT_TURN_S, in order, and the
    chunk counts as reported only after its last instance."""
    import asyncio
    clock = [0.0]
    monkeypatch.setattr(transitions.time, "perf_counter", lambda: clock[0])
    reported, ticks = [], []

    class Recorder(Transitions):
        def _announce_and_report(self, chunk, followup=None):
            reported.append([i.name for i, *_ in chunk])
            clock[0] += 0.3 * transitions.REPORT_TURN_S      # this slice's cost

        def chunk_reported(self):
            reported.append("reported")

        async def _vips_moved(self, insts, move, exchange):
            return []

        async def _after_vips(self, insts, kind):
            pass

    async def ticker():
        while True:
            ticks.append(len(reported))     # what the loop saw reported between turns
            await asyncio.sleep(0)

    async def main():
        t = Recorder(None, None, None, None)
        n = 10 * transitions.REPORT_SLICE
        chunk = [(inst(f"VI_{k}"), BACKUP, MASTER, "r") for k in range(n)]
        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        insts = [i for i, *_ in chunk]
        await t._report(chunk, transitions.UP, insts, (None, None))
        task.cancel()
        sliced = list(reported)
        # New masters the netlink thread followed up (first GARPs, lines) go
        # whole; those leaving MASTER in slices (they may prebuild as BACKUP).
        followed = (SimpleNamespace(followup=SimpleNamespace(deferred=list)), None)
        reported.clear()
        await t._report(chunk, transitions.UP, insts, followed)
        whole = list(reported)
        reported.clear()
        await t._report([(i, MASTER, BACKUP, "r") for i in insts], transitions.DOWN, insts,
                        followed)
        return chunk, sliced, whole, list(reported)

    chunk, sliced, whole, down = aio(main())
    names = [i.name for i, *_ in chunk]
    slices = sliced[:-1]
    assert sliced[-1] == "reported" and "reported" not in slices
    assert [n for s in slices for n in s] == names
    assert {len(s) for s in slices} == {transitions.REPORT_SLICE}
    # A slice costs 0.3 of a turn: the fourth one ends each turn.
    assert ticks[1:] == [4, 8], ticks
    assert whole == [names, "reported"]
    assert {len(s) for s in down[:-1]} == {transitions.REPORT_SLICE}


@pytest.mark.parametrize("thread_reports", [False, True])
def test_an_instance_whose_vips_failed_goes_fault_and_tries_again(aio, thread_reports):
    """A chunk's instances whose VIP messages failed are FAULT (a master
    without its VIPs black-holes their traffic) and retried after
    VIP_RETRY_S, before the chunk is reported, whether the loop or the
    netlink thread reports it; routes and rules follow the VIPs only where
    the loop reports (_followup takes no chunk that has any)."""
    import asyncio
    calls: list = []
    a, b = inst("VI_a"), inst("VI_b")
    followup = SimpleNamespace(deferred=list)

    class Recorder(Transitions):
        async def _vips_moved(self, insts, move, exchange):
            return [b]

        async def _after_vips(self, insts, kind):
            calls.append(("after_vips", [i.name for i in insts]))

        def _announce_and_report(self, chunk, followup=None):
            calls.append(("report", followup))

        def _apply_verdict(self, i, t):
            calls.append(("verdict", i.name, i.vip_fault))

        def _pump(self):
            calls.append("pump")

        def chunk_reported(self):
            pass

    async def main():
        t = Recorder(None, None, None, None)
        t._loop = asyncio.get_running_loop()
        later = []
        t._loop.call_later = lambda delay, fn, *args: later.append((delay, fn.__name__, args))
        move = SimpleNamespace(followup=followup) if thread_reports else None
        chunk = [(a, BACKUP, MASTER, "r"), (b, BACKUP, MASTER, "r")]
        await t._report(chunk, transitions.UP, [a, b], (move, None))
        return later

    later = aio(main())
    assert later == [(transitions.VIP_RETRY_S, "_retry_vips", ([b],))]
    after = [] if thread_reports else [("after_vips", ["VI_a", "VI_b"])]
    assert calls == after + [("verdict", "VI_b", True), "pump",
                             ("report", followup if thread_reports else None)]
    assert b.vip_fault and not a.vip_fault


def test_instances_whose_vips_failed_together_try_again_in_one_pump():
    """A mass failure (thousands of adds refused at once) retries as one batch;
    an instance a reload removed meanwhile is left out."""
    calls: list = []

    class Recorder(Transitions):
        def _apply_verdict(self, i, t):
            calls.append((i.name, i.vip_fault))

        def _pump(self):
            calls.append("pump")

    t = Recorder(None, None, None, None)
    t.stopping = False
    failed = [inst(f"VI_{k}") for k in range(3)]
    for i in failed:
        i.vip_fault = True
    t.instances = {i.name: i for i in failed[:2]}
    t._retry_vips(failed)
    assert calls == [("VI_0", False), ("VI_1", False), "pump"]
    t.stopping = True
    t._retry_vips(failed)
    assert calls == [("VI_0", False), ("VI_1", False), "pump"]


class BurstEffects(FakeEffects):
    """... and the bursts Effects.announce sends (a delayed one only for the
    instances whose gen is unchanged, as the real one)."""

    def __init__(self):
        super().__init__()
        self._gen: dict[int, int] = {}
        self.bursts: list[list[int]] = []

    def gens(self, idxs):
        return [self._gen.get(i, 0) for i in idxs]

    def bump(self, idxs):
        for i in idxs:
            self._gen[i] = self._gen.get(i, 0) + 1

    def announce(self, idxs, gens=None):
        if gens is not None:
            idxs = [i for i, g, now in zip(idxs, gens, self.gens(idxs)) if now == g]
        self.bursts.append(list(idxs))
        return []


def test_lower_priority_answers_go_in_one_burst_and_the_delayed_one_only_while_master():
    """Masters that heard lower-priority adverts: one burst of their prebuilt
    frames at once, and garp_lower_prio_delay's burst later (unset: 5 s of
    garp_master_delay), restarted by a later such advert and void for an
    instance that left MASTER meanwhile (keepalived: only while the VIPs are
    set)."""
    mac = bytes.fromhex("020000000001")
    d = side_effects({3: Link(3, "eth0", 0, mac)}, BurstEffects())
    d._loop = FakeLoop()
    a, b, c = (inst(f"VI_{k}", [Vip.parse(f"192.0.2.{k}", 3)]) for k in (1, 2, 3))
    for k, i in enumerate((a, b, c)):
        i.idx = k
    d.announce_lower_prio([a, b, c])
    assert d.effects.bursts == [[0, 1, 2]]
    assert [t[0] for t in d._loop.timers] == [5.0]
    d.announce_lower_prio([a])                  # another lower-priority advert: a restarts
    assert d.effects.bursts[-1] == [0] and [t[0] for t in d._loop.timers] == [5.0, 5.0]
    d.effects.bump([b.idx])                     # b left MASTER
    first = d._loop.timers.pop(0)
    first[1](*first[2])
    assert d.effects.bursts[-1] == [2]          # not a (restarted), not b (left)
    d._loop.fire("_announce_lower_again")
    assert d.effects.bursts[-1] == [0] and d._lower_armed == {}


def test_lower_priority_answers_cover_the_sync_group_members_with_vips_set():
    """keepalived's vrrp_state_master_rx: the member that heard a lower
    priority, then each other member of its group whose VIPs are set, once
    per advert heard; an instance outside any group only for itself."""
    mac = bytes.fromhex("020000000001")
    effects = BurstEffects()
    d = side_effects({3: Link(3, "eth0", 0, mac)}, effects)
    d._loop = FakeLoop()
    a, b, c, e = (inst(f"VI_{k}", [Vip.parse(f"192.0.2.{k}", 3)]) for k in (1, 2, 3, 4))
    for k, i in enumerate((a, b, c, e)):
        i.idx = k
    d.instances = {i.name: i for i in (a, b, c, e)}
    d.syncgroups = SyncGroups(SimpleNamespace(
        instances=d.instances, sync_groups={"G": SimpleNamespace(group=["VI_1", "VI_2", "VI_3"])}))
    on = {0, 1}                                 # VI_3 (idx 2) has no VIPs set
    effects.vips_on = lambda idx: idx in on
    d.announce_lower_prio([b, e])
    assert effects.bursts == [[1, 0, 3]]
    on.add(2)
    d.announce_lower_prio([a, b])
    assert effects.bursts[-1] == [0, 1, 2, 1, 0, 2]
