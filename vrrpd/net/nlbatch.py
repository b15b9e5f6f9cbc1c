"""Requester: rtnetlink requests in batches on our own socket, one errno back per request.

Used for addresses (addresses.py), links (vmac.py) and routes/rules (routes.py).  Why our
own socket and not pyroute2's IPRoute: see netlink.py (uvloop).  This numbers the
messages, sends many per sendmsg() and matches the ACKs by sequence number.

rtnetlink handles a whole buffer inside sendmsg(), under the RTNL lock, so the ACKs are
queued before send() returns.  Every exchange (send, then read its ACKs) is a job of one
thread of our own, in submission order: whoever else holds RTNL (a netns being torn
down, a routing daemon, `ip`) would otherwise hold the loop and its adverts, and a
takeover's VIP batches (vrrpd._effects.VipMove, which exchanges without the GIL) follow
each other there with no round trip through the loop between them.  A send holds the
CPU it runs on (netlink_rcv_skb does not reschedule, not even for a SCHED_FIFO task
above ours), so sends are sized by time, not count: each takes about SEND_BUDGET_S at
the cost per message sends have measured.  The cost depends on what the messages do
(deleting an absent VIP costs a fraction of adding one), so the estimate follows a
dearer cost at once and a cheaper one only slowly.  It is the sending thread's CPU time:
each address added queues the kernel's address-lifetime check (check_lifetime) on that
CPU, which runs as send() returns; wall time would count that, and any other task's
turn, as the send's own cost and shrink every later send.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import select
import socket
import struct
import time

from vrrpd.net import netlink as nl

log = logging.getLogger("vrrpd.net.nlbatch")

IFINFOMSG = struct.Struct("=BxHiII")        # family, type, index, flags, change

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
                 budget: float = SEND_BUDGET_S, clock=time.thread_time):
        self.budget = budget
        self._cost = FIRST_COST_S           # estimated seconds per message
        self.chunk = int(budget / self._cost)   # messages per sendmsg()
        self.ack_timeout = ack_timeout
        self._bufsizes = rcvbuf, sndbuf
        self._clock = clock
        self._sock: socket.socket | None = None
        self._sender: concurrent.futures.ThreadPoolExecutor | None = None
        self._seq = 0                       # the sender thread's
        self._moves = 0                     # moves submitted and not exchanged yet
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        if self._sender is not None:
            self._sender.shutdown(wait=True)
            self._sender = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def request(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        return await self._job(self._request, msgs)

    async def errnos(self, msgs: list[bytearray]) -> list[int]:
        return [code for code, _ in await self.request(msgs)]

    def submit(self, move) -> asyncio.Future:
        """A vrrpd._effects.VipMove to exchange after what was submitted
        before; -> a future of the errno of a refused send or lost ACKs (0:
        none; the move holds each message's own).  Only a move that finds
        the thread idle starts with a small send (FIRST_PIECE): one queued
        behind others waits for them anyway, and each send costs a
        check_lifetime run besides its messages."""
        job = self._job(self._move, (move, self._moves == 0))
        self._moves += 1
        job.add_done_callback(self._moved)
        return job

    @property
    def busy(self) -> bool:
        """Moves are on their way through the sender thread."""
        return self._moves > 0

    def _moved(self, _job: asyncio.Future) -> None:
        self._moves -= 1

    def _job(self, fn, arg) -> asyncio.Future:
        self._open()
        return asyncio.get_running_loop().run_in_executor(self._sender, fn, arg)

    def _numbers(self, count: int) -> int:
        """In the sender thread: the first of `count` fresh sequence numbers."""
        first = self._seq + 1
        self._seq = (self._seq + count) & 0x7fffffff
        return first

    def _move(self, job) -> int:
        move, first_small = job
        seconds, err = move.exchange(self._opened.fileno(), self._numbers(move.count),
                                     self.chunk, self.ack_timeout, first_small)
        if move.count:
            self._size_next_chunk(move.count, seconds)
        return err

    def _request(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        """In the sender thread: `msgs` in sends of self.chunk each (these are
        few: routes, rules, links, a reload's VIPs)."""
        out: list[tuple[int, list[bytes]]] = []
        while len(out) < len(msgs):
            out.extend(self._exchange(msgs[len(out):len(out) + self.chunk]))
        return out

    def _exchange(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        """One send of `msgs`; their replies, until every ACK arrived or
        ack_timeout passed."""
        first = self._numbers(len(msgs))
        data = bytearray()
        for k, m in enumerate(msgs):
            struct.pack_into("=I", m, 8, first + k)
            data += m
        codes: dict[int, int] = {}
        replies: dict[int, list[bytes]] = {}

        def on_reply(view) -> None:
            for hdr in nl.headers(view):
                i = hdr.seq - first
                if not 0 <= i < len(msgs):
                    continue
                if hdr.type == nl.NLMSG_ERROR:
                    codes.setdefault(i, nl.error_code(view, hdr))
                else:
                    reply = bytes(view[hdr.offset:hdr.offset + hdr.length])
                    replies.setdefault(i, []).append(reply)

        try:
            t0 = self._clock()
            self._opened.send(data)
            self._size_next_chunk(len(msgs), self._clock() - t0)
        except OSError as e:                # whole chunk refused (EMSGSIZE, ENOBUFS)
            return [(e.errno or errno.EIO, [])] * len(msgs)
        deadline = time.monotonic() + self.ack_timeout
        while len(codes) < len(msgs):
            try:
                n = self._opened.recv_into(self._buf)
            except BlockingIOError:
                # rtnetlink ACKs inside send(); wait only if it did not.
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._opened], [], [], left)[0]:
                    break
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.error("netlink ACK overrun: %d ACKs lost", len(msgs) - len(codes))
                    break
                raise
            on_reply(memoryview(self._buf)[:n])
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

    def _size_next_chunk(self, sent: int, seconds: float) -> None:
        """As many messages as `budget` pays for at the estimated cost per message."""
        self._cost = max(seconds / sent, self._cost * COST_DECAY)
        self.chunk = max(MIN_CHUNK, min(MAX_CHUNK, int(self.budget / self._cost)))
