"""Requester: rtnetlink requests in batches on our own socket, one errno back per request.

Used for links (vmac.py) and routes/rules (routes.py).  Why our own socket and not
pyroute2's IPRoute: see netlink.py (uvloop).  pyroute2 still encodes the messages; this
only numbers them, sends many per sendmsg() and matches the ACKs by sequence number.
rtnetlink handles a whole buffer inside sendmsg(), so the ACKs are normally queued
before send() returns and the loop is blocked only for the kernel's own work.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct

from . import netlink as nl

log = logging.getLogger("vrrpd.nlbatch")

IFINFOMSG = struct.Struct("=BxHiII")        # family, type, index, flags, change


def encode(msg, mtype: int, flags: int) -> bytearray:
    """Encode a pyroute2 message (ifinfmsg, rtmsg, fibmsg...) as a request with `flags`."""
    msg["header"]["type"] = mtype
    msg["header"]["flags"] = nl.NLM_F_REQUEST | nl.NLM_F_ACK | flags
    msg.encode()
    return bytearray(msg.data)


class Requester:
    """Sends encoded requests, returns [(errno, [reply payloads])] in request order."""

    def __init__(self, chunk: int = 512, ack_timeout: float = 5.0):
        self.chunk = chunk
        self.ack_timeout = ack_timeout
        self._sock: socket.socket | None = None
        self._seq = 0
        self._lock = asyncio.Lock()
        self._buf = bytearray(1 << 16)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def request(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        async with self._lock:
            if self._sock is None:
                self._sock = nl.open_route_socket(0, rcvbuf=4 << 20, sndbuf=1 << 20)
            out: list[tuple[int, list[bytes]]] = []
            for start in range(0, len(msgs), self.chunk):
                if start:
                    await asyncio.sleep(0)      # let adverts go out between chunks
                out.extend(await self._exchange(msgs[start:start + self.chunk]))
            return out

    async def errnos(self, msgs: list[bytearray]) -> list[int]:
        return [code for code, _ in await self.request(msgs)]

    async def _exchange(self, msgs: list[bytearray]) -> list[tuple[int, list[bytes]]]:
        first = self._seq + 1
        data = bytearray()
        for m in msgs:
            self._seq += 1
            struct.pack_into("=I", m, 8, self._seq)
            data += m
        codes: dict[int, int] = {}
        replies: dict[int, list[bytes]] = {}
        try:
            self._sock.send(data)
        except OSError as e:                # whole chunk refused (EMSGSIZE, ENOBUFS)
            return [(e.errno, [])] * len(msgs)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        while len(codes) < len(msgs):
            try:
                n = self._sock.recv_into(self._buf)
            except BlockingIOError:
                if loop.time() > deadline or not await self._readable(loop, deadline):
                    break
                continue
            except OSError as e:
                if e.errno == errno.ENOBUFS:
                    log.error("netlink ACK overrun: %d ACKs lost", len(msgs) - len(codes))
                    break
                raise
            view = memoryview(self._buf)[:n]
            for hdr in nl.headers(view):
                i = hdr.seq - first
                if not 0 <= i < len(msgs):
                    continue
                if hdr.type == nl.NLMSG_ERROR:
                    codes[i] = nl.error_code(view, hdr)
                else:
                    replies.setdefault(i, []).append(bytes(view[hdr.offset:hdr.offset + hdr.length]))
        return [(codes.get(i, errno.ETIMEDOUT), replies.get(i, [])) for i in range(len(msgs))]

    async def _readable(self, loop, deadline: float) -> bool:
        fut = loop.create_future()
        watch = nl.Watch(loop, self._sock, lambda: fut.done() or fut.set_result(True))
        try:
            return await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            return False
        finally:
            watch.close()
