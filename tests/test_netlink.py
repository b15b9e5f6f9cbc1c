"""LinkMonitor and AddressManager against the real kernel, inside namespaces.

The netlink code runs in a child process started with `ip netns exec` (the pytest process
lives in the host namespace, where we must not touch links or addresses); `ip` is the
oracle for what the kernel really has.  The monitor runs under uvloop with the venv's
pyroute2 0.9 and under plain asyncio with Debian's python3-pyroute2 0.7.
"""
import asyncio
import contextlib
import errno
import json
import os
import queue
import signal
import socket
import subprocess
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from children import child
from fake_rtnl import FakeKernel, ack, vip_effects
from vrrpd.net import netlink as nl, nlbatch
from vrrpd.net.nlbatch import Requester

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv/bin/python")
DEBIAN_PY = "/usr/bin/python3"


# --- the struct decoder against pyroute2's encoder ----------------------------------
def encode_addr(family, address, plen, index, flags=0, scope=0, label=None, mtype=20):
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"] = family, plen, index
    msg["flags"], msg["scope"] = flags, scope
    attrs = [("IFA_ADDRESS", address), ("IFA_LOCAL", address)]
    if label:
        attrs.append(("IFA_LABEL", label))
    attrs.append(("IFA_FLAGS", flags | 0x100))
    msg["attrs"] = attrs
    msg["header"]["type"] = mtype
    msg.encode()
    return bytes(msg.data)


def test_decode_addr_matches_pyroute2_encoding():
    buf = (encode_addr(socket.AF_INET, "192.0.2.7", 24, 5, flags=nl.IFA_F_SECONDARY,
                       label="eth0:vip")
           + encode_addr(socket.AF_INET6, "2001:db8::7", 128, 6, flags=nl.IFA_F_NODAD,
                         scope=nl.RT_SCOPE_LINK, mtype=21))
    msgs = [nl.decode_addr(buf, h) for h in nl.headers(buf)]
    assert msgs == [
        nl.AddrMsg(socket.AF_INET, 24, 0x101, 0, 5, "192.0.2.7", "eth0:vip"),
        nl.AddrMsg(socket.AF_INET6, 128, 0x102, nl.RT_SCOPE_LINK, 6, "2001:db8::7", None)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 200))
def test_decoders_never_raise_on_garbage(data, cut):
    buf = encode_addr(socket.AF_INET, "192.0.2.7", 24, 5)[:cut] + data
    for h in nl.headers(buf):
        nl.decode_addr(buf, h)
        nl.error_code(buf, h)


# --- child-process plumbing ---------------------------------------------------------
class Child:
    """A Python child in a namespace speaking JSON lines; reads with a timeout."""

    def __init__(self, ns, python, name, *args):
        self.proc = ns.popen(python, child(name), *args, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(json.loads(line))
        self.lines.put(None)

    def expect(self, timeout=10, **match):
        """Consume events until one has all the `match` items; return it."""
        while True:
            try:
                ev = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no event {match} within {timeout}s; saw {self.seen[-20:]}") from None
            assert ev is not None, f"child exited; saw {self.seen[-20:]}"
            self.seen.append(ev)
            if all(ev.get(k) == v for k, v in match.items()):
                return ev

    @contextlib.contextmanager
    def stopped(self):
        """A loop that cannot read for a while: events pile up in its socket."""
        os.kill(self.proc.pid, signal.SIGSTOP)      # `ip netns exec` execs: same pid
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def send(self, line="x"):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()


def veth_ns(netns):
    ns = netns("nl")
    ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    ns.run("ip", "link", "set", "veth0", "up")
    ns.run("ip", "link", "set", "veth1", "up")
    ns.run("ip", "addr", "add", "192.0.2.1/24", "dev", "veth0")
    return ns


def link_json(ns, dev):
    return json.loads(ns.run("ip", "-j", "link", "show", "dev", dev).stdout)[0]


@pytest.mark.netns
@pytest.mark.parametrize("python", [VENV_PY, DEBIAN_PY], ids=["venv-uvloop", "debian-asyncio"])
def test_link_monitor_sees_link_and_address_events(netns, python):
    if not os.path.exists(python):
        pytest.skip(f"{python} not installed")
    ns = veth_ns(netns)
    child = Child(ns, python, "link_monitor", str(1 << 20))
    synced = child.expect(ev="synced")
    if python == VENV_PY:
        assert synced["loop"].startswith("uvloop")
    ip = link_json(ns, "veth0")
    assert synced["index"] == ip["ifindex"] and synced["mac"] == ip["address"]
    assert synced["up"] and synced["ipv4"] == "192.0.2.1"
    assert synced["ll"] == ns.link_local("veth0")

    ns.run("ip", "link", "set", "veth0", "down")
    child.expect(ev="down", name="veth0", up=False)
    ns.run("ip", "link", "set", "veth0", "up")
    child.expect(ev="up", name="veth0", up=True)
    # Carrier loss: the peer goes down, veth0 stays IFF_UP but loses IFF_RUNNING.
    ns.run("ip", "link", "set", "veth1", "down")
    child.expect(ev="down", name="veth0")
    assert "NO-CARRIER" in ns.run("ip", "link", "show", "veth0").stdout
    ns.run("ip", "link", "set", "veth1", "up")
    child.expect(ev="up", name="veth0")

    ns.run("ip", "addr", "add", "192.0.2.77/32", "dev", "veth0")
    child.expect(ev="addr", address="192.0.2.77", plen=32, added=True)
    ns.run("ip", "-6", "addr", "add", "2001:db8::77/128", "dev", "veth0")
    child.expect(ev="addr", address="2001:db8::77", added=True)
    ns.run("ip", "addr", "del", "192.0.2.77/32", "dev", "veth0")
    child.expect(ev="addr", address="192.0.2.77", added=False)

    ns.run("ip", "link", "set", "veth0", "name", "wan0")
    child.expect(ev="renamed", name="wan0", old="veth0")
    ns.run("ip", "link", "del", "wan0")
    child.expect(ev="deleted", name="wan0")
    child.send()
    stats = child.expect(ev="stats")
    assert "wan0" not in stats["addrs"] and "veth1" not in stats["addrs"]
    assert stats["stats"]["overruns"] == 0 and stats["stats"]["malformed"] == 0


@pytest.mark.netns
def test_held_monitor_reads_its_events_on_release(netns):
    """hold() (a mass failover in progress) leaves the kernel's events queued;
    release() reads them, in order.  A MAC change is an event of its own."""
    ns = veth_ns(netns)
    child = Child(ns, VENV_PY, "link_monitor", str(1 << 20))
    child.expect(ev="synced")
    child.send("hold")
    child.expect(ev="hold")
    ns.run("ip", "addr", "add", "192.0.2.78/32", "dev", "veth0")
    time.sleep(0.3)
    child.send()
    stats = child.expect(ev="stats")
    assert "192.0.2.78" not in stats["addrs"]["veth0"]          # not read while held
    assert not [e for e in child.seen if e.get("ev") == "addr"]
    child.send("release")
    child.expect(ev="addr", address="192.0.2.78", added=True)
    ns.run("ip", "link", "set", "veth0", "address", "02:00:00:00:00:78")
    child.expect(ev="mac", name="veth0")


@pytest.mark.netns
def test_overrun_is_repaired_by_redump(netns, tmp_path):
    """A stopped loop and a receive buffer too small for a burst of 3,000 address events: the
    monitor must notice (ENOBUFS), re-dump, and end up agreeing with the kernel - and every
    address must have been reported to the callback exactly as a live event would."""
    ns = veth_ns(netns)
    child = Child(ns, VENV_PY, "link_monitor", str(1 << 14))
    child.expect(ev="synced")
    n = 3000
    batch = tmp_path / "add"
    batch.write_text("".join(f"addr add 10.9.{i >> 8}.{i & 255}/32 dev veth0\n"
                             for i in range(n)))
    with child.stopped():
        ns.run("ip", "-batch", str(batch))
    want = {f"10.9.{i >> 8}.{i & 255}" for i in range(n)}

    def converged(present):
        child.send()
        ev = child.expect(ev="stats")
        have = {a for a in ev["addrs"]["veth0"] if a.startswith("10.9.")}
        time.sleep(0.05)
        return ev if have == present else None

    ev = None
    for _ in range(100):
        if (ev := converged(want)):
            break
    assert ev, f"monitor never agreed with the kernel after the burst: {child.seen[-1]}"[:300]
    assert ev["stats"]["overruns"] >= 1 and ev["stats"]["resyncs"] >= 1, ev["stats"]
    reported = {e["address"] for e in child.seen if e.get("ev") == "addr" and e["added"]}
    assert reported == want

    batch.write_text("".join(f"addr del 10.9.{i >> 8}.{i & 255}/32 dev veth0\n"
                             for i in range(n)))
    with child.stopped():
        ns.run("ip", "-batch", str(batch))
    for _ in range(100):
        if (ev := converged(set())):
            break
    assert ev, "monitor never saw the addresses go"
    removed = {e["address"] for e in child.seen if e.get("ev") == "addr" and not e["added"]}
    assert removed == want


@pytest.mark.netns
def test_address_manager_10000_vips_in_one_batch(netns):
    n = 10000
    ns = veth_ns(netns)
    child = Child(ns, VENV_PY, "address_batch", str(n))
    added = child.expect(timeout=120)
    assert added["done"] == n
    assert added["already"] == ["192.0.2.1"]
    failed = dict(added["failed"])
    assert failed == {"192.0.2.99": errno.ENODEV, "192.0.2.98": errno.ERANGE}
    lines = ns.run("ip", "-o", "addr", "show", "dev", "veth0").stdout.splitlines()
    have = {line.split()[3] for line in lines}
    assert len([a for a in have if a.startswith(("10.", "2001:db8:1::"))]) == n
    assert "10.0.39.14/32" in have and "2001:db8:1::270f/128" in have     # i = 9998, 9999
    v6 = ns.run("ip", "-o", "-6", "addr", "show", "dev", "veth0", "to",
                "2001:db8:1::1/128").stdout
    assert "nodad" in v6 and "preferred_lft 0sec" in v6        # keepalived's VIP form

    child.send("go")
    removed = child.expect(timeout=120)
    assert removed["done"] == n and removed["failed"] == []
    have = ns.addrs("veth0") + ns.addrs("veth0", "-6")
    assert not [a for a in have if a.startswith(("10.", "2001:db8:1::"))]
    assert "192.0.2.1/24" in have            # not ours: shutdown left it alone
    assert child.expect() == dict(done=0, already=["192.0.2.97"], failed=[],
                                  seconds=pytest.approx(0, abs=5))
    print(f"\n10,000 VIPs: add {added['seconds']:.2f}s, remove {removed['seconds']:.2f}s")


class FakeRouteSocket:
    """rtnetlink as seen from sendmsg(): the whole buffer is handled inside send(),
    at `cost` seconds of the injected clock per message, and one ACK queued per message."""

    def __init__(self, clock: list[float], cost: float):
        self.clock, self.cost = clock, cost
        self.sends: list[int] = []           # messages per send()
        self.acks = bytearray()

    def send(self, data):
        hdrs = list(nl.headers(data))
        self.sends.append(len(hdrs))
        self.clock[0] += self.cost * len(hdrs)
        for h in hdrs:
            self.acks += ack(data, h)

    def recv_into(self, buf):
        if not self.acks:
            raise BlockingIOError
        n = len(self.acks)
        buf[:n], self.acks = self.acks, bytearray()
        return n

    def close(self):
        pass


def test_requester_sizes_chunks_to_the_send_budget(monkeypatch):
    """Each sendmsg() holds the loop for the kernel's work on the whole buffer, so the
    Requester sizes chunks by the cost per message it timed: at 13 us per message
    a 2 ms budget is 153 messages.  A cheap batch first (1.7 us each, like deleting
    absent VIPs) must not make the next dear one overrun the budget much."""
    clock = [0.0]
    sock = FakeRouteSocket(clock, cost=1.7e-6)
    monkeypatch.setattr(nl, "open_route_socket", lambda *a, **kw: sock)
    r = Requester(budget=0.002, clock=lambda: clock[0])
    msgs = [bytearray(nl.NLMSGHDR.pack(16, nl.RTM_NEWADDR, 0, 0, 0)) for _ in range(2000)]
    assert asyncio.run(r.errnos(msgs[:1000])) == [0] * 1000
    assert sock.sends[0] == int(r.budget / nlbatch.FIRST_COST_S)
    assert max(sock.sends) * sock.cost <= r.budget
    sock.cost, sock.sends = 13e-6, []
    assert asyncio.run(r.errnos(msgs)) == [0] * 2000
    assert sum(sock.sends) == 2000
    assert max(sock.sends) * sock.cost <= 1.5 * r.budget, sock.sends
    assert sock.sends[-2] == 153                    # settled: 2 ms / 13 us
    # A slower kernel (a loaded CPU): smaller chunks at once, never below MIN_CHUNK.
    sock.cost, sock.sends = 1e-3, []
    asyncio.run(r.errnos(msgs[:20]))
    asyncio.run(r.errnos(msgs[:20]))
    assert sock.sends == [20] + [nlbatch.MIN_CHUNK] * 5


@pytest.mark.netns
def test_vip_moves_in_flight_at_once_reach_the_kernel_in_order(netns):
    """A takeover's VIP batches (vrrpd._effects.VipMove) all go to the
    Requester's thread at once and are exchanged there one after the other:
    every message gets its own ACK and errno, `ip` sees exactly the VIPs, and
    only real failures are reported."""
    n = 3000
    ns = veth_ns(netns)
    child = Child(ns, VENV_PY, "vip_move", str(n))
    added = child.expect(timeout=60)
    assert added["errs"] == [0] * len(added["errs"]) and len(added["errs"]) > 1
    assert added["acked"] == 2 * n + 2
    assert added["failed"] == [[n + 1, errno.ENODEV]]            # EEXIST is no failure
    assert added["vips_on"] == n + 2
    assert nlbatch.MIN_CHUNK <= added["chunk"] <= nlbatch.MAX_CHUNK
    have = set(ns.addrs("veth0")) | set(ns.addrs("veth0", "-6"))
    want = {f"10.{i >> 8 & 255}.{i & 255}.1/32" for i in range(n)}
    want |= {f"2001:db8:1::{i + 1:x}/128" for i in range(n)}
    assert want <= have
    child.send("go")
    removed = child.expect(timeout=60)
    assert removed["failed"] == [] and removed["acked"] == 2 * n and removed["vips_on"] == 0
    have = set(ns.addrs("veth0")) | set(ns.addrs("veth0", "-6"))
    assert not want & have and "192.0.2.1/24" in have


def test_vip_move_sends_budget_sized_pieces_and_keeps_each_errno():
    """exchange() numbers the messages from seq0, sends `piece` per send(),
    asks an ACK of each send's last message only, and maps every reply back
    to its instance: EEXIST on add is no failure, another errno is the
    instance's first, a send whose closing ACK never comes leaves its
    messages without an error ETIMEDOUT after the timeout; the instances'
    VIPs count as on."""
    kernel = FakeKernel(codes={3: errno.EEXIST, 5: errno.ENODEV, 6: errno.EPERM}, silent={9})
    effects = vip_effects([1, 2, 1, 3, 2, 1])        # messages 0, 1-2, 3, 4-6, 7-8, 9
    move = effects.vip_move(list(range(6)), True)
    assert (move.count, move.idxs, move.add) == (10, list(range(6)), True)
    seconds, err = move.exchange(kernel.fileno(), 500, 4, 0.3)
    assert err == 0 and 0 <= seconds < 0.3
    assert kernel.sends == [4, 4, 2] and kernel.seqs == list(range(500, 510))
    assert kernel.acks_asked == [503, 507, 509]
    assert move.acked == 8                          # not 8 and 9: 9 closes their send
    assert effects.finish(move) == [(3, errno.ENODEV), (4, errno.ETIMEDOUT),
                                    (5, errno.ETIMEDOUT)]
    assert all(effects.vips_on(i) for i in range(6))
    move = effects.vip_move([2, 4], False)
    move.exchange(kernel.fileno(), 510, 100, 1.0)
    assert effects.finish(move) == [] and not effects.vips_on(2) and effects.vips_on(3)
    kernel.close()


def test_vip_move_first_send_is_small():
    """A move's first send carries at most FIRST_PIECE (8) messages, so that
    its first instances' ACKs (then their GARPs and lines) do not wait for a
    whole piece's work; the others go `piece` per send."""
    kernel = FakeKernel()
    effects = vip_effects([1] * 100)
    move = effects.vip_move(list(range(100)), True)
    move.exchange(kernel.fileno(), 1, 50, 1.0)
    assert kernel.sends == [8, 50, 42] and move.acked == 100
    assert effects.finish(move) == []
    kernel.sends = []
    move = effects.vip_move(list(range(100)), True)
    move.exchange(kernel.fileno(), 101, 50, 1.0, first_small=False)
    assert kernel.sends == [50, 50] and move.acked == 100
    kernel.close()


def test_requester_starts_small_only_from_idle(monkeypatch):
    """Only a move that finds the sender thread idle starts with a small
    send: those queued behind it wait for it anyway, and every send costs
    the kernel an address-lifetime scan besides its messages."""
    kernel = FakeKernel()
    monkeypatch.setattr(nl, "open_route_socket", lambda *a, **kw: kernel.ours)
    effects = vip_effects([1] * 20)

    async def main():
        r = Requester()
        futures = [r.submit(effects.vip_move(list(range(20)), True)) for _ in range(3)]
        busy = r.busy
        await asyncio.gather(*futures)
        await asyncio.sleep(0)              # the done callbacks
        idle = not r.busy
        await r.submit(effects.vip_move(list(range(20)), True))
        return busy, idle

    assert asyncio.run(main()) == (True, True)
    assert kernel.sends == [8, 12, 20, 20, 8, 12]
    kernel.close()


def test_vip_move_refused_send_is_the_errno_of_what_it_did_not_send():
    """The kernel refusing a send (here: no one at the other end) is the
    exchange's errno and the errno of every message not sent; no waiting."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    theirs.close()
    effects = vip_effects([2, 2])
    move = effects.vip_move([0, 1], True)
    t0 = time.monotonic()
    _, err = move.exchange(ours.fileno(), 1, 1, 5.0)
    assert err == errno.ECONNREFUSED and time.monotonic() - t0 < 1
    assert effects.finish(move) == [(0, errno.ECONNREFUSED), (1, errno.ECONNREFUSED)]
    ours.close()


def test_requester_exchanges_submitted_moves_in_order_with_fresh_numbers(monkeypatch):
    """Moves submitted at once are exchanged in submission order, each with
    sequence numbers after the last, between the generic requests."""
    kernel = FakeKernel()
    monkeypatch.setattr(nl, "open_route_socket", lambda *a, **kw: kernel.ours)
    effects = vip_effects([3] * 10)

    async def main():
        r = Requester()
        moves = [effects.vip_move([i], True) for i in range(10)]
        futures = [r.submit(m) for m in moves]
        codes = await r.errnos([bytearray(nl.NLMSGHDR.pack(
            16, nl.RTM_NEWADDR, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 0, 0))])
        return [await f for f in futures], [m.acked for m in moves], codes

    errs, acked, codes = asyncio.run(main())
    assert errs == [0] * 10 and acked == [3] * 10 and codes == [0]
    assert kernel.seqs == list(range(1, 32))
    kernel.close()


def test_requester_send_does_not_hold_the_loop(monkeypatch):
    """rtnetlink takes the RTNL lock inside sendmsg(); while someone else holds it the
    send waits (here: 0.3 s), and the loop must go on running its timers meanwhile."""
    class Held(FakeRouteSocket):
        def send(self, data):
            time.sleep(0.3)
            super().send(data)

    sock = Held([0.0], cost=0)
    monkeypatch.setattr(nl, "open_route_socket", lambda *a, **kw: sock)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1
        t = asyncio.create_task(ticker())
        r = Requester()
        codes = await r.errnos([bytearray(nl.NLMSGHDR.pack(16, nl.RTM_NEWADDR, 0, 0, 0))])
        t.cancel()
        r.close()
        return codes, ticks

    codes, ticks = asyncio.run(main())
    assert codes == [0]
    assert ticks >= 10, f"the loop ran {ticks} times in a 0.3 s send"
