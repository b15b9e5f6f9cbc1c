"""The control socket behind vrrpctl: a unix stream socket on the daemon's
loop, root only (mode 0600 in a 0700 directory, and SO_PEERCRED checked on
accept: a peer whose uid is not 0 gets an error reply and is hung up on).
At most MAX_CLIENTS connections at once, each hung up on after IDLE_TIMEOUT
seconds without a request; every request is checked against the schema
(check_request) before dispatch, so bad input is an error reply.

Protocol: the client sends one JSON object per line, {"cmd": NAME, "args":
[...]}; the daemon answers each with one line, {"ok": true, "result": ...}
or {"ok": false, "error": "text"}.  Commands (see vrrpd.ops.dumps for the
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
MAX_CLIENTS = 64            # connections at once; more get an error reply
IDLE_TIMEOUT = 30.0         # seconds a connection may wait between requests
BACKLOG = 1024              # pending connections (the kernel caps it at somaxconn)
MAX_ARG = 4096              # characters in one argument


class BadRequest(ValueError):
    pass


def arity(fn) -> tuple[int, int]:
    """(least, most) positional arguments a command callable takes."""
    params = inspect.signature(fn).parameters.values()
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        raise ValueError("control commands take a fixed number of arguments")
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return sum(1 for p in pos if p.default is p.empty), len(pos)


def check_request(req, schema: dict[str, tuple[int, int]]) -> tuple[str, list[str]]:
    """The schema: {"cmd": one of the commands, "args": [string, ...]} (args optional,
    as many as the command takes); nothing else.  -> (cmd, args) or BadRequest."""
    if not isinstance(req, dict):
        raise BadRequest("a request is a JSON object")
    unknown = set(req) - {"cmd", "args"}
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(map(repr, unknown)))[:200]}")
    cmd, args = req.get("cmd"), req.get("args", [])
    if not isinstance(cmd, str):
        raise BadRequest("cmd must be a string")
    if cmd not in schema:
        raise BadRequest(f"unknown command {cmd[:64]!r}")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise BadRequest("args must be a list of strings")
    if any(len(a) > MAX_ARG for a in args):
        raise BadRequest(f"an argument is longer than {MAX_ARG} characters")
    least, most = schema[cmd]
    if len(args) < least:
        raise BadRequest(f"{cmd}: {least - len(args)} argument(s) missing")
    if len(args) > most:
        raise BadRequest(f"{cmd}: takes at most {most} argument(s), got {len(args)}")
    return cmd, args


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class ControlServer:
    """commands: name -> callable(*args) returning a JSON-able result (or an awaitable)."""

    def __init__(self, path: str, commands: dict):
        self.path = path
        self.commands = commands
        self.schema = {name: arity(fn) for name, fn in commands.items()}
        self.refused = 0            # non-root peers
        self.busy = 0               # connections over MAX_CLIENTS
        self.errors = 0             # bad requests, dropped clients
        self.clients = 0
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
                                                           limit=MAX_REQUEST, backlog=BACKLOG)
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
        self.clients += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as e:
            self.errors += 1
            log.warning("control socket: client dropped: %s", e)
        except Exception:               # a bug: counted and logged, the daemon goes on
            self.errors += 1
            log.exception("control socket: client failed")
        finally:
            self.clients -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        uid = peer_uid(writer.get_extra_info("socket"))
        if uid != 0:
            # Refused on accept; the reply tells the client why.
            self.refused += 1
            log.warning("control socket: refused a client with uid %d", uid)
            await self._reply(writer, {"ok": False, "error": "permission denied: root only"})
            return
        if self.clients > MAX_CLIENTS:
            self.busy += 1
            log.warning("control socket: more than %d clients, one refused", MAX_CLIENTS)
            await self._reply(writer, {"ok": False, "error": "busy: too many clients"})
            return
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
            except asyncio.TimeoutError:
                log.debug("control socket: idle client hung up on")
                return
            except ValueError:          # no newline within MAX_REQUEST bytes
                self.errors += 1
                await self._reply(writer, {
                    "ok": False, "error": f"bad request: longer than {MAX_REQUEST} bytes"})
                return
            if not line:
                return
            await asyncio.wait_for(self._reply(writer, await self.handle(line)), IDLE_TIMEOUT)

    async def handle(self, line: bytes) -> dict:
        """One request line -> the reply object; bad input is an error reply, never a crash."""
        try:
            cmd, args = check_request(json.loads(line), self.schema)
        except (ValueError, RecursionError) as e:   # JSON syntax, nesting, schema
            self.errors += 1
            return {"ok": False, "error": f"bad request: {str(e)[:200]}"}
        fn = self.commands[cmd]
        try:
            result = fn(*args)
            if inspect.isawaitable(result):
                result = await result
        except KeyError as e:               # an unknown instance name
            return {"ok": False, "error": str(e.args[0]) if e.args else "not found"}
        except Exception as e:
            log.exception("control command %s failed", cmd)
            return {"ok": False, "error": f"{cmd} failed: {e}"}
        return {"ok": True, "result": result}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, obj: dict) -> None:
        writer.write(json.dumps(obj).encode() + b"\n")
        await writer.drain()
