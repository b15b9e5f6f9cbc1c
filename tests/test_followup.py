"""What the netlink sender thread does after a takeover's VIPs
(vrrpd._effects.Followup, FifoGate; vrrpd.core.transitions._followup): each
instance's first GARP/NA burst and fifo line once its own VIP messages are
ACKed, and lines that keep transition order with the loop's writer.  Unit
tests on a fake rtnetlink (tests/fake_rtnl.py), socketpairs and real fifos."""
from __future__ import annotations

import asyncio
import fcntl
import os
import select
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from fake_rtnl import FakeKernel, vip_effects
from vrrpd._effects import FifoGate
from vrrpd.config import load
from vrrpd.core.transitions import DOWN, OTHER, UP, Transitions
from vrrpd.engine import BACKUP, MASTER
from vrrpd.scripts.notify import NotifyFifo
from vrrpd.scripts.reporting import Reporter
from vrrpd.scripts.runner import ScriptRunner

F_SETPIPE_SZ = 1031


def names(n: int) -> list[bytes]:
    return [b"VI_%04d" % i for i in range(n)]


def lines(ns, word=b"MASTER", priority=100) -> list[bytes]:
    return [b'INSTANCE "%s" %s %d\n' % (name, word, priority) for name in ns]


def frames_read(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(2048))
        except BlockingIOError:
            return out


def read_all(fd: int) -> bytes:
    out = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_each_instance_is_announced_then_reported_once_its_own_vips_are_answered():
    """No frame and no line before an instance's messages are answered (a
    send's closing ACK answers the send); after them, its burst (every
    frame, `repeat` rounds) and then its line, in order; the next
    instance's only after its own."""
    kernel = FakeKernel(held=True)
    ours, wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    wire.setblocking(False)
    rfd, wfd = os.pipe2(os.O_NONBLOCK)
    n = 3
    frames = [[(0, b"garp-%d-a" % i), (0, b"garp-%d-b" % i)] for i in range(n)]
    effects = vip_effects([2, 1, 2], frames=frames, names=names(n))    # m0-1, m2, m3-4
    effects.set_socket(0, ours.fileno())
    gate = FifoGate(wfd)
    move = effects.vip_move(list(range(n)), True, announce=True, words=[b"MASTER"] * n,
                            priorities=[100, 100, 250], gates=[gate])
    done = threading.Event()
    threading.Thread(target=lambda: (move.exchange(kernel.fileno(), 1, 2, 5.0),
                                     done.set()), daemon=True).start()
    time.sleep(0.1)
    assert kernel.sends == [2, 2, 1]        # closing ACKs asked of m1, m3, m4
    assert frames_read(wire) == [] and read_all(rfd) == b""
    kernel.release(1)               # m1's ACK: instance 0's messages
    deadline = time.monotonic() + 5
    got = b""
    while not got and time.monotonic() < deadline:
        got += read_all(rfd)
    assert got == b'INSTANCE "VI_0000" MASTER 100\n'
    assert frames_read(wire) == [b"garp-0-a", b"garp-0-b"]
    kernel.release(1)               # m3's: instance 1's m2, and one of instance 2's
    while got.count(b"\n") < 2 and time.monotonic() < deadline:
        got += read_all(rfd)
    time.sleep(0.1)
    got += read_all(rfd)
    assert got.count(b"\n") == 2 and got.endswith(b'INSTANCE "VI_0001" MASTER 100\n')
    assert frames_read(wire) == [b"garp-1-a", b"garp-1-b"]
    kernel.release()
    assert done.wait(5)
    assert read_all(rfd) == b'INSTANCE "VI_0002" MASTER 250\n'
    assert frames_read(wire) == [b"garp-2-a", b"garp-2-b"]
    assert effects.finish(move) == [] and move.acked == 5
    assert effects.stats()["announce_sent"] == 6
    assert move.followup.fifo_take(gate) == (3, 0, None) and gate.owed == 0
    for fd in (rfd, wfd):
        os.close(fd)
    kernel.close()


def test_a_full_device_queue_leaves_the_rest_of_its_socket_to_the_loop():
    """A socket that refuses a frame (EAGAIN) gets no more from this move:
    the refused frame and those after it on that socket come back in order,
    for the GARP scheduler to resend; other sockets go on."""
    kernel = FakeKernel()
    full, other = (socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM) for _ in range(2))
    full[0].setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    full[0].setblocking(False)
    while True:                         # fill it
        try:
            full[0].send(b"x" * 512)
        except BlockingIOError:
            break
    n = 4
    frames = [[(0, b"full-%d" % i), (1, b"other-%d" % i)] for i in range(n)]
    effects = vip_effects([1] * n, frames=frames)
    effects.set_socket(0, full[0].fileno())
    effects.set_socket(1, other[0].fileno())
    move = effects.vip_move(list(range(n)), True, announce=True)
    move.exchange(kernel.fileno(), 1, 100, 5.0)
    assert move.followup.deferred() == [(0, b"full-%d" % i) for i in range(n)]
    other[1].setblocking(False)
    assert frames_read(other[1]) == [b"other-%d" % i for i in range(n)]
    effects.finish(move)
    assert effects.stats()["announce_deferred"] == n
    kernel.close()


def move_lines(effects, first: int, n: int, gate, word=b"MASTER"):
    """A move of instances first..first+n-1 that writes their lines to gate."""
    return effects.vip_move(list(range(first, first + n)), True, words=[word] * n,
                            priorities=[100] * n, gates=[gate])


def test_lines_keep_their_order_behind_a_slow_reader(aio, tmp_path):
    """The thread writes what the pipe takes and leaves the rest to the
    loop's writer; while lines are owed or queued there, later moves leave
    all of theirs too; once the reader caught up, the thread writes again.
    The reader sees every line once, in transition order."""
    path = str(tmp_path / "fifo")
    kernel = FakeKernel()
    total = 400
    ns = names(total)
    effects = vip_effects([1] * total, names=ns)

    async def main():
        f = NotifyFifo(path)
        assert f.open() and f.gate is not None
        fcntl.fcntl(f._fd, F_SETPIPE_SZ, 4096)
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        a = move_lines(effects, 0, 250, f.gate)          # ~7 kB: the pipe takes 4 kB
        a.exchange(kernel.fileno(), 1, 100, 5.0)
        assert f.gate.owed == 1
        b = move_lines(effects, 250, 50, f.gate)         # a's rest is owed: writes nothing
        b.exchange(kernel.fileno(), 300, 100, 5.0)
        assert f.gate.owed == 2
        f.take(a.followup)                               # the loop's reports, in order
        assert f.queued and f.gate.owed == 1             # the pipe is still full
        f.take(b.followup)
        assert f.gate.owed == 0
        c = move_lines(effects, 300, 50, f.gate)         # lines queued in the loop: none
        c.exchange(kernel.fileno(), 400, 100, 5.0)
        f.take(c.followup)
        got = b""
        deadline = time.monotonic() + 5
        while f.queued and time.monotonic() < deadline:
            got += read_all(reader)
            await asyncio.sleep(0.01)                    # the loop's writer drains its queue
        got += read_all(reader)
        d = move_lines(effects, 350, 50, f.gate)         # caught up: the thread writes
        d.exchange(kernel.fileno(), 500, 100, 5.0)
        got += read_all(reader)
        f.take(d.followup)
        assert f.gate.owed == 0 and not f.queued
        os.close(reader)
        await f.close()
        return got, f.lines

    got, counted = aio(main())
    assert got.splitlines(keepends=True) == lines(ns)
    assert counted == total
    kernel.close()


def test_a_blocked_gate_leaves_every_line_and_a_line_too_long_tears_nothing():
    kernel = FakeKernel()
    rfd, wfd = os.pipe2(os.O_NONBLOCK)
    gate = FifoGate(wfd)
    effects = vip_effects([1, 1], names=[b"VI_1", b"X" * 5000])
    gate.set_blocked(True)
    move = move_lines(effects, 0, 1, gate)
    move.exchange(kernel.fileno(), 1, 100, 5.0)
    assert move.followup.fifo_take(gate) == (0, 0, [b'INSTANCE "VI_1" MASTER 100\n'])
    gate.settle()
    gate.set_blocked(False)
    move = move_lines(effects, 1, 1, gate)              # over PIPE_BUF: the loop's
    assert gate.owed == 0                               # not before it is exchanged
    move.exchange(kernel.fileno(), 2, 100, 5.0)
    assert gate.owed == 1
    written, _, left = move.followup.fifo_take(gate)
    assert written == 0 and left == [b'INSTANCE "%s" MASTER 100\n' % (b"X" * 5000)]
    assert read_all(rfd) == b""
    gate.close()
    for fd in (rfd, wfd):
        os.close(fd)
    kernel.close()


def test_the_loops_fifo_lines_are_the_threads_in_whole_blocks():
    """Effects.fifo_lines (the loop's lines) formats as the thread does, in
    blocks of whole lines of at most PIPE_BUF bytes; one line longer than
    that is a block of its own."""
    names = [b"VI_%d" % k for k in range(300)] + [b"X" * 5000, b"VI_last"]
    effects = vip_effects([1] * len(names), names=names)
    idxs = list(range(len(names)))
    words = [b"MASTER", b"BACKUP", b"FAULT"] * 100 + [b"STOP", b"MASTER"]
    prios = [k - 1 for k in range(len(names))]
    blocks = effects.fifo_lines(idxs, words, prios)
    expected = [b'INSTANCE "%s" %s %d\n' % (n, w, p) for n, w, p in zip(names, words, prios)]
    assert b"".join(blocks) == b"".join(expected)
    assert all(b.endswith(b"\n") for b in blocks)
    assert [b for b in blocks if len(b) > select.PIPE_BUF] == [expected[300]]
    assert len(blocks) == 1 + -(-len(b"".join(expected[:300])) // select.PIPE_BUF) + 1
    with pytest.raises(ValueError):
        effects.fifo_lines(idxs, words[:-1], prios)


# -- which chunks the thread follows up (Transitions._followup) ---------------------------
def member(name: str, **conf) -> SimpleNamespace:
    c = SimpleNamespace(virtual_routes=conf.get("routes", []), virtual_rules=[],
                        smtp_alert=False)
    return SimpleNamespace(name=name, idx=0, garp_paced=conf.get("paced", False), priority=100,
                           routed=bool(c.virtual_routes),
                           spec=SimpleNamespace(conf=c, needs_drop=conf.get("drop", False)))


class Hook:
    def __init__(self, lines=True):
        self.lines = lines

    def thread_lines(self, chunk):
        return ([b"MASTER"] * len(chunk), [100] * len(chunk), ["gate"]) if self.lines else None


def decide(chunk_confs, kind=UP, hook=None, loop_reports=0, firewall=True):
    t = Transitions(None, None, None, None, firewall=object() if firewall else None)
    t.hooks = [hook] if hook is not None else []
    t._loop_reports = loop_reports
    chunk = [(member(f"VI_{k}", **c), BACKUP, MASTER, "r") for k, c in enumerate(chunk_confs)]
    return t._followup([item[0] for item in chunk], chunk, kind)


@pytest.mark.parametrize("confs, kind, hook, loop_reports, expect", [
    ([{}, {}], UP, Hook(), 0, {"announce": True, "words": [b"MASTER"] * 2,
                               "priorities": [100, 100], "gates": ["gate"]}),
    ([{}, {}], UP, None, 0, {"announce": True}),         # no fifo hook: GARPs only
    ([{}, {}], UP, Hook(), 1, None),       # an earlier item waits for the loop's report
    ([{}, {"paced": True}], UP, Hook(), 0, None),         # the GarpScheduler's
    ([{"routes": ["r"]}], UP, Hook(), 0, None),           # routes go between VIPs and GARPs
    ([{"routes": ["r"]}], DOWN, Hook(), 0,                # ... and before a removal
     {"announce": False, "words": [b"MASTER"], "priorities": [100], "gates": ["gate"]}),
    ([{"drop": True}], UP, Hook(), 0,                     # the drop goes in before the VIPs
     {"announce": True, "words": [b"MASTER"], "priorities": [100], "gates": ["gate"]}),
    ([{"drop": True}], DOWN, Hook(), 0, None),            # ... and comes out after them
    ([{}], UP, Hook(lines=False), 0, None),               # a notify script: the loop's
    ([{}], DOWN, None, 0, None),                          # nothing to follow up
    ([{}], OTHER, Hook(), 0, None),
])
def test_the_thread_follows_up_only_what_nothing_of_the_loop_must_precede(
        confs, kind, hook, loop_reports, expect):
    assert decide(confs, kind, hook, loop_reports) == expect


def test_without_strict_mode_no_drop_comes_out_after_a_removal():
    """Instances that would need the drop (neither owner nor accept: most)
    have none without vrrp_strict: their removals are followed up."""
    assert decide([{"drop": True}] * 2, DOWN, Hook(), firewall=False) == {
        "announce": False, "words": [b"MASTER"] * 2, "priorities": [100, 100],
        "gates": ["gate"]}


def test_the_loop_reports_what_it_must_and_the_thread_the_rest(aio):
    """Items the loop reports are counted from queueing to report, so a chunk
    queued behind one is not followed up by the thread."""
    seen = []

    class Recorder(Transitions):
        dispatching = False

        def _move_vips(self, insts, add, followup=None, idxs=None):
            seen.append(followup is not None)
            move = SimpleNamespace(followup=object() if followup else None)
            return move, None

        async def _report(self, chunk, kind, insts, move):
            await asyncio.sleep(0.01)

    async def main():
        t = Recorder(None, SimpleNamespace(hold=lambda: None, release=lambda: None),
                     vip_effects([1]), SimpleNamespace(
                         requester=SimpleNamespace(chunk=1000, busy=False)))
        t.hooks = [Hook()]
        t._is_prebuilt = lambda inst: True
        t.start_effects()
        up = [(member(f"VI_{k}"), BACKUP, MASTER, "r") for k in range(2)]
        t.queue(up)                                     # followed up
        await t.effects_done()
        other = (member("VI_x"), BACKUP, BACKUP, "r")
        t.queue([other] + up)           # OTHER first: the UP chunk behind it is the loop's
        await t.effects_done()
        t.queue(up)                     # reported since: followed up again
        await t.effects_done()
        t.stop_effects()
        return t._loop_reports

    assert aio(main()) == 0
    assert seen == [True, False, True]


# -- which notifications the thread may write (Reporter.thread_lines) ------------------------
INSTANCE = """
vrrp_instance {name} {{
    interface eth0
    virtual_router_id {vrid}
    priority 100
    virtual_ipaddress {{
        192.0.2.{vrid}/32
    }}
    {extra}
}}
"""


def test_a_line_is_left_to_the_loop_only_when_a_script_or_alert_of_that_state_goes_first(
        tmp_path):
    """keepalived starts an instance's notify scripts before its fifo line:
    the thread writes the line only when no script (notify_<state> or the
    generic notify) and no SMTP alert goes with it.  A reload that rebuilds
    an instance's scripts (Reporter.build) moves it either way."""
    path = tmp_path / "keepalived.conf"

    def config_of(extras: dict[str, str]):
        path.write_text("".join(INSTANCE.format(name=name, vrid=k + 1, extra=extra)
                                for k, (name, extra) in enumerate(extras.items())))
        return load(str(path)).config

    def lines(r: Reporter, name: str, new: int):
        inst = SimpleNamespace(name=name, priority=100,
                               spec=SimpleNamespace(conf=r.config.instances[name]))
        return r.thread_lines([(inst, BACKUP, new, "master_down_timer")])

    extras = {"VI_none": "", "VI_master": "notify_master /bin/true",
              "VI_backup": "notify_backup /bin/true", "VI_any": "notify /bin/true",
              "VI_alert": "smtp_alert"}
    r = Reporter(config_of(extras), ScriptRunner())
    ours = {(name, new) for name in extras for new in (MASTER, BACKUP)
            if lines(r, name, new) is not None}
    assert ours == {("VI_none", MASTER), ("VI_none", BACKUP), ("VI_master", BACKUP),
                    ("VI_backup", MASTER)}
    assert lines(r, "VI_none", MASTER) == ([b"MASTER"], [100], [])
    r.config = config_of({**extras, "VI_master": "", "VI_none": "notify_master /bin/true"})
    list(r.build(["VI_master", "VI_none"]))         # a reload without a new Reporter
    assert lines(r, "VI_master", MASTER) is not None and lines(r, "VI_none", MASTER) is None
