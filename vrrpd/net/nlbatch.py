"""Requester: rtnetlink requests in batches on our own socket, one errno back per request.

Used for addresses (addresses.py), links (vmac.py) and routes/rules (routes.py).  Why our
own socket and not pyroute2's IPRoute: see netlink.py (uvloop).  This numbers the
messages, sends many per sendmsg() and matches the ACKs by sequence number.

rtnetlink handles a whole buffer inside sendmsg(), under the RTNL lock, so the ACKs are
queued before send() returns.  That send is made by a thread of our own (the ACKs are
read on the loop): whoever else holds RTNL (a netns being torn down, a routing daemon,
`ip`) would otherwise hold the loop and its adverts.  And a send holds the CPU it runs
on (netlink_rcv_skb does not reschedule, not even for a SCHED_FIFO task above ours),
so chunks are sized by time, not count: each takes about SEND_BUDGET_S at
the cost per message sends have measured.  The cost depends on what the messages do
(deleting an absent VIP costs a fraction of adding one), so the estimate follows a
dearer cost at once and a cheaper one only slowly.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import socket
import struct
import time

from vrrpd.net import netlink as nl

log = logging.getLogger("vrrpd.net.nlbatch")

IFINFOMSG = struct.Struct("=BxHiII")        # family, type, index, flags, change
NLMSG_LEN = struct.Struct("=I")             # a message's length, first in its header

# How long one sendmsg() may hold a CPU: long enough that a takeover's VIPs go out in
# few sends, short enough that no one send holds a CPU the loop may need for long
# (the failover figures behind the choice: bench/results/NOTES.md).
SEND_BUDGET_S = 0.005
FIRST_COST_S = 20e-6        # per message, before any send was timed (above a /32 VIP add's)
MIN_CHUNK, MAX_CHUNK = 4, 1024
COST_DECAY = 0.95           # per send, how fast the cost estimate falls to a cheaper one


def encode(msg, mtype: int, flags: int) -> bytearray:
    """Encode a pyroute2 message (ifinfmsg, rtmsg, fibmsg...) as a request with `flags`."""
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK | flags
    msg.encode()
    return bytearray(msg.data)


class Requester:
    """Sends encoded requests, returns [(errno, [reply payloads])] in request order."""

    def __init__(self, ack_timeout: float = 5.0, rcvbuf: int = 4 << 20, sndbuf: int = 1 << 20,
                 budget: float = SEND_BUDGET_S, clock=time.perf_counter):
        self.budget = budget
        self._cost = FIRST_COST_S           # estimated seconds per message
        self.chunk = int(budget / self._cost)   # messages in the next sendmsg()
        self.ack_timeout = ack_timeout
        self._bufsizes = rcvbuf, sndbuf
        self._clock = clock
        self._sock: socket.socket | None = None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def request(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        async with self._lock:
            self._open()
            out: list[tuple[int, list[bytes]]] = []
            while len(out) < len(msgs):
                out.extend(await self._exchange(msgs[len(out):len(out) + self.chunk]))
            return out

    async def errnos(self, msgs: list[bytearray]) -> list[int]:
        return [code for code, _ in await self.request(msgs)]

    async def request_built(self, build, on_reply) -> int:
        """One chunk that the caller encodes: build(first_seq) -> (data, count)
        with sequence numbers first_seq.. in place; on_reply(view) records the
        replies found in each buffer read and returns how many ACKs it took.
        -> how many of the count got an ACK (the rest: ETIMEDOUT)."""
        async with self._lock:
            self._open()
            data, count = build(self._seq + 1)
            self._seq += count
            return await self._send_and_collect(data, count, on_reply)

    async def _exchange(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        first = self._seq + 1
        data = bytearray()
        for m in msgs:
            self._seq += 1
            struct.pack_into("=I", m, 8, self._seq)
            data += m
        codes: dict[int, int] = {}
        replies: dict[int, list[bytes]] = {}

        def on_reply(view) -> int:
            got = 0
            for hdr in nl.headers(view):
                i = hdr.seq - first
                if not 0 <= i < len(msgs):
                    continue
                if hdr.type == nl.NLMSG_ERROR:
                    codes[i] = nl.error_code(view, hdr)
                    got += 1
                else:
                    reply = bytes(view[hdr.offset:hdr.offset + hdr.length])
                    replies.setdefault(i, []).append(reply)
            return got

        try:
            await self._send_and_collect(data, len(msgs), on_reply)
        except OSError as e:                # whole chunk refused (EMSGSIZE, ENOBUFS)
            return [(e.errno or errno.EIO, [])] * len(msgs)
        return [(codes.get(i, errno.ETIMEDOUT), replies.get(i, [])) for i in range(len(msgs))]

    def _open(self) -> None:
        if self._sock is None:
            rcvbuf, sndbuf = self._bufsizes
            self._sock = nl.open_route_socket(0, rcvbuf=rcvbuf, sndbuf=sndbuf)
            self._sender = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="vrrpd-netlink")

    @property
    def _opened(self) -> socket.socket:
        assert self._sock is not None       # by _open()
        return self._sock

    async def _send_and_collect(self, data, count: int, on_reply) -> int:
        """Send `data` from the sender thread, then read ACKs on the loop until
        `count` arrived or ack_timeout passed.  -> ACKs seen.  OSError: the
        kernel refused the whole send."""
        loop = asyncio.get_running_loop()
        seconds = await loop.run_in_executor(self._sender, self._send, data,
                                             self._piece_ends(data, count))
        self._size_next_chunk(count, seconds)
        deadline = loop.time() + self.ack_timeout
        got = 0
        while got < count:
            try:
                n = self._opened.recv_into(self._buf)
            except BlockingIOError:
                # rtnetlink ACKs inside send(); wait only if it did not.
                if loop.time() > deadline or not await self._readable(loop, deadline):
                    break
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.error("netlink ACK overrun: %d ACKs lost", count - got)
                    break
                raise
            got += on_reply(memoryview(self._buf)[:n])
        return got

    def _piece_ends(self, data, count: int) -> list[int]:
        """Where each send() of `data` ends: pieces of at most self.chunk messages."""
        if count <= self.chunk:
            return [len(data)]
        ends, off, n = [], 0, 0
        while off < len(data):
            off += (NLMSG_LEN.unpack_from(data, off)[0] + 3) & ~3
            n += 1
            if n % self.chunk == 0 or off >= len(data):
                ends.append(off)
        return ends

    def _send(self, data, ends: list[int]) -> float:
        """In the sender thread, which holds the GIL only between sends: the
        kernel's whole work on the chunk, one send() per piece; its duration.
        (Parsing the ACKs there too is worse: a thread holding the GIL stalls
        the loop behind it.)"""
        t0 = self._clock()
        view, start = memoryview(data), 0
        for end in ends:
            self._opened.send(view[start:end])
            start = end
        return self._clock() - t0

    def _size_next_chunk(self, sent: int, seconds: float) -> None:
        """As many messages as `budget` pays for at the estimated cost per message."""
        self._cost = max(seconds / sent, self._cost * COST_DECAY)
        self.chunk = max(MIN_CHUNK, min(MAX_CHUNK, int(self.budget / self._cost)))

    async def _readable(self, loop, deadline: float) -> bool:
        fut = loop.create_future()
        watch = nl.Watch(loop, self._opened, lambda: fut.done() or fut.set_result(True))
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return False
        finally:
            watch.close()
