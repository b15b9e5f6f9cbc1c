"""The control socket behind vrrpctl: a unix stream socket on the daemon's
loop, root only (mode 0600 in a 0700 directory, and SO_PEERCRED: a peer
whose uid is not 0 gets an error reply).

Protocol: the client sends one JSON object per line, {"cmd": NAME, "args":
[...]}; the daemon answers each with one line, {"ok": true, "result": ...}
or {"ok": false, "error": "text"}.  Commands (see vrrpd.dumps for the
result schemas): status, show NAME, stats, reload.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import stat
import struct

log = logging.getLogger("vrrpd")

DEFAULT_PATH = "/run/vrrpd/control.sock"
MAX_REQUEST = 64 * 1024


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    """commands: name -> callable(*args) returning a JSON-able result (or an awaitable)."""

    def __init__(self, path: str, commands: dict):
        self.path = path
        self.commands = commands
        self.refused = 0
        self.errors = 0
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        d = os.path.dirname(self.path)
        if d and not os.path.isdir(d):
            os.makedirs(d, mode=0o700)
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)        # a previous run's
        except FileNotFoundError:
            pass
        old = os.umask(0o177)               # the socket is born 0600: no window for others
        try:
            self._server = await asyncio.start_unix_server(self._client, self.path,
                                                           limit=MAX_REQUEST)
        finally:
            os.umask(old)
        log.info("control socket %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            while line := await reader.readline():
                if uid != 0:
                    # Answer the request, so that the client reads why, then hang up.
                    self.refused += 1
                    log.warning("control socket: refused a client with uid %d", uid)
                    await self._reply(writer, {"ok": False, "error": "permission denied: root only"})
                    return
                await self._reply(writer, await self.handle(line))
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            self.errors += 1
            log.warning("control socket: client dropped: %s", e)
        finally:
            writer.close()

    async def handle(self, line: bytes) -> dict:
        """One request line -> the reply object; bad input is an error reply, never a crash."""
        try:
            req = json.loads(line)
            cmd, args = req["cmd"], req.get("args", [])
            if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
                raise TypeError("args must be a list of strings")
        except (ValueError, KeyError, TypeError) as e:
            self.errors += 1
            return {"ok": False, "error": f"bad request: {e}"}
        fn = self.commands.get(cmd)
        if fn is None:
            self.errors += 1
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
        except KeyError as e:               # an unknown instance name
            return {"ok": False, "error": str(e.args[0])}
        except TypeError as e:              # wrong number of arguments
            return {"ok": False, "error": str(e)}
        except Exception as e:
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {e}"}
        return {"ok": True, "result": result}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
