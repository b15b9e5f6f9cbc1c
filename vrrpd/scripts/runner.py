"""Run external scripts as keepalived does, without ever blocking the event loop.

A script is exec'd directly (no shell) from an argv built by keepalived's
quoted/escaped word splitting, in its own session and process group (so a
timeout can kill everything it forked), with stdin/stdout/stderr on /dev/null
(keepalived's set_std_fd(): a script that floods stdout costs nothing) and the
daemon's environment (keepalived passes `environ` to execve).

Spawning, timeouts and reaping happen in a separate process (vrrpd.scripts.spawner):
fork+exec costs much Python per script, which on the daemon's own GIL
would delay adverts.  The loop only sends a request and reads a few replies per
script, and it behaves the same on uvloop and on asyncio.

Security (keepalived's check_script_secure()): a script that runs as root must
not be replaceable by anyone else: every path component, of the configured
path and of its symlink-resolved path, must be root-owned and not
group/world-writable (sticky directories like /tmp excepted, as keepalived
does).  With `enable_script_security` such scripts are refused; without it
they only draw a warning.  Like keepalived we do not check the #! interpreter.
"""
from __future__ import annotations

import asyncio
import grp
import itertools
import logging
import os
import pwd
import stat
from dataclasses import dataclass
from string import hexdigits

from vrrpd.scripts import spawner
from vrrpd.scripts.spawner import Spawner

log = logging.getLogger(__name__)

DEFAULT_SCRIPT_USER = "keepalived_script"
_WHITE_SPACE = " \t\f\n\r\v"
_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t", "v": "\v"}


class CommandSyntaxError(ValueError):
    """A script string keepalived would reject (unmatched quote, trailing backslash, empty)."""


def split_command(cmd: str) -> list[str]:
    """Split a script string into argv the way keepalived does.

    The input is the script keyword's value with the config file's own quoting
    already removed, e.g. `/x.sh 'two words' b\\ c`.  Whitespace separates
    words; ' and " quote (the quote characters are dropped, quoting may start
    mid-word); backslash escapes work everywhere: \\a \\b \\E \\f \\n \\r \\t \\v,
    \\nnn (octal), \\xHH.., \\cC (control C), any other \\C is C.
    """
    words: list[str] = []
    i, n = 0, len(cmd)
    while True:
        while i < n and cmd[i] in _WHITE_SPACE:
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote = ""
        while i < n:
            c = cmd[i]
            if c == "\\":
                ch, i = _escape(cmd, i + 1)
                word.append(ch)
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    word.append(c)
                i += 1
            elif c in "'\"":
                quote = c
                i += 1
            elif c in _WHITE_SPACE:
                break
            else:
                word.append(c)
                i += 1
        if quote:
            raise CommandSyntaxError(f"{cmd!r}: missing terminating {quote}")
        words.append("".join(word))
    if not words:
        raise CommandSyntaxError("empty command")
    return words


def _escape(s: str, i: int) -> tuple[str, int]:
    """Decode the escape whose first character (after the backslash) is s[i]."""
    if i >= len(s):
        raise CommandSyntaxError(f"{s!r}: escape character at end")
    c = s[i]
    if c == "x" and i + 1 < len(s) and s[i + 1] in hexdigits:
        j = i + 1
        while j < len(s) and s[j] in hexdigits:
            j += 1
        return chr(int(s[i + 1:j], 16) & 0xFF), j      # a C char keeps the low byte
    if c == "c" and i + 1 < len(s):
        return chr(ord(s[i + 1]) & 0x1F), i + 2
    if "0" <= c <= "7":
        j = i
        while j < min(i + 3, len(s)) and "0" <= s[j] <= "7":
            j += 1
        return chr(int(s[i:j], 8) & 0xFF), j
    return _ESCAPES.get(c, c), i + 1


@dataclass(frozen=True)
class Script:
    """A prepared (split, resolved, security-checked) command, ready to run."""
    argv: tuple[str, ...]
    uid: int
    gid: int
    label: str = ""                # for logs: e.g. "notify_master of VI_1"

    def __str__(self) -> str:
        return self.label or self.argv[0]


@dataclass(frozen=True)
class ScriptResult:
    status: str                    # "exited" | "timeout" | "exec_error"
    returncode: int | None = None  # exit code, or -signal; None unless exited/timeout

    EXITED = "exited"
    TIMEOUT = "timeout"
    EXEC_ERROR = "exec_error"

    @property
    def ok(self) -> bool:
        return self.status == self.EXITED and self.returncode == 0


@dataclass
class ScriptCounters:
    runs: int = 0          # processes started
    failures: int = 0      # exited non-zero or killed by a signal we did not send
    timeouts: int = 0      # killed by us after `timeout`
    exec_errors: int = 0   # could not be started (missing, not executable, setuid failed...)
    refused: int = 0       # disabled at preparation (insecure, not found, bad user, bad syntax)
    insecure: int = 0      # root scripts with unsafe paths (refused only with script security)
    suppressed: int = 0    # notify_master_rx_lower_pri runs skipped by its rate limit


def resolve_user(user: str | None = None, group: str | None = None, *,
                 script_user: str | None = None, script_group: str | None = None,
                 ) -> tuple[int, int]:
    """uid, gid for a script: its own user, else `script_user`, else
    `keepalived_script` if that user exists, else the daemon's own.
    KeyError for an unknown user or group."""
    name, gname = (user, group) if user else (script_user, script_group)
    if name is None:
        try:
            pw = pwd.getpwnam(DEFAULT_SCRIPT_USER)
        except KeyError:
            return os.geteuid(), os.getegid()
        return pw.pw_uid, pw.pw_gid
    pw = pwd.getpwnam(name)
    gid = grp.getgrnam(gname).gr_gid if gname else pw.pw_gid
    return pw.pw_uid, gid


def _is_executable(st: os.stat_result, uid: int, gid: int) -> bool:
    mode = st.st_mode
    if uid == 0:
        return bool(mode & 0o111)
    if uid == st.st_uid:
        return bool(mode & stat.S_IXUSR)
    if gid == st.st_gid:
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


def find_in_path(name: str, uid: int, gid: int) -> str | None:
    """PATH search for a bare command name, as execvp would (keepalived's find_path)."""
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        cand = os.path.join(d or ".", name)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _is_executable(st, uid, gid):
            return cand
    return None


def path_insecurity(path: str) -> str | None:
    """Why `path` could be replaced by a non-root user, or None if it cannot.

    Checks "/", "/a", "/a/b", ... (following symlinks, as keepalived 2.2.7
    does: Debian's /bin -> usr/bin is fine; the caller also checks the
    resolved path).  Unsafe: not root-owned, or group-writable by a non-root
    group, or world-writable -- except a directory with the sticky bit (/tmp).
    """
    parts = [p for p in os.path.abspath(path).split("/") if p]
    prefixes = ["/"] + ["/" + "/".join(parts[:k]) for k in range(1, len(parts) + 1)]
    for k, comp in enumerate(prefixes):
        try:
            st = os.stat(comp)
        except OSError as e:
            return f"{comp}: {e.strerror}"
        is_dir = stat.S_ISDIR(st.st_mode)
        if is_dir == (k == len(prefixes) - 1) or not (is_dir or stat.S_ISREG(st.st_mode)):
            return f"{comp}: wrong file type"
        if st.st_uid != 0:
            return f"{comp}: owned by uid {st.st_uid}"
        if is_dir and st.st_mode & stat.S_ISVTX:
            continue
        if (st.st_gid != 0 and st.st_mode & stat.S_IWGRP) or st.st_mode & stat.S_IWOTH:
            return (f"{comp}: writable by group {st.st_gid} or others "
                    f"(mode {stat.S_IMODE(st.st_mode):o})")
    return None


class _Run:
    """One script asked for: its future, and what the spawner told of it."""
    __slots__ = ("script", "future", "pid", "timed_out", "stopping", "detached")

    def __init__(self, script: Script, future: asyncio.Future, detached: bool):
        self.script = script
        self.future = future
        self.pid: int | None = None
        self.timed_out = False
        self.stopping = False          # we are stopping it: its death is no failure
        self.detached = detached       # left to finish when the daemon stops


class ScriptRunner:
    """Prepares and runs scripts; never raises for a script's misbehaviour.

    `prepare()` turns a configured command into a `Script` (or None when it
    must be disabled, logged and counted).  `start()` asks the spawner
    process (vrrpd.scripts.spawner) to run it and returns a future of the
    `ScriptResult`; the order of start() calls is the order the processes
    start.  `run()` awaits it.  Not supported: the keepalived idiom of a
    script starting with "<" run through /bin/sh.
    """

    def __init__(self, *, script_user: str | None = None, script_group: str | None = None,
                 enable_script_security: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.script_user = script_user
        self.script_group = script_group
        self.enable_script_security = enable_script_security
        self.counters = ScriptCounters()
        self._loop = loop
        self._runs: dict[int, _Run] = {}
        self._ids = itertools.count(1)
        self._spawner: Spawner | None = None
        self._closing = False
        self._warned_unsecured = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def running(self) -> int:
        return len(self._runs)

    async def __aenter__(self) -> "ScriptRunner":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.terminate_all()

    # -- preparation ---------------------------------------------------------

    def prepare(self, command: str | list[str] | tuple[str, ...], user: str | None = None,
                group: str | None = None, *, label: str = "") -> Script | None:
        """Split, resolve user and path, check security; None = disabled (logged, counted)."""
        what = label or (command if isinstance(command, str) else " ".join(command))
        try:
            argv = split_command(command) if isinstance(command, str) else list(command)
            if not argv:
                raise CommandSyntaxError("empty command")
            if user is None and self.script_user is None and self.enable_script_security:
                try:
                    pwd.getpwnam(DEFAULT_SCRIPT_USER)
                except KeyError:
                    # keepalived 2.2.7 ("Unable to set default user keepalived_script")
                    self._refuse(what, f"no script user: set script_user or create "
                                       f"{DEFAULT_SCRIPT_USER} (enable_script_security)")
                    return None
            uid, gid = resolve_user(user, group, script_user=self.script_user,
                                    script_group=self.script_group)
        except CommandSyntaxError as e:
            self._refuse(what, str(e))
            return None
        except KeyError as e:
            self._refuse(what, f"unknown user/group {e}")
            return None

        if "/" not in argv[0]:
            found = find_in_path(argv[0], uid, gid)
            if found is None:
                self._refuse(what, f"{argv[0]!r} not found in PATH")
                return None
            log.warning("%s: %r resolved by PATH search to %s; please give the full path",
                        what, argv[0], found)
            argv[0] = found
        try:
            st = os.stat(argv[0])
        except OSError as e:
            self._refuse(what, f"{argv[0]}: {e.strerror}")
            return None
        if not stat.S_ISREG(st.st_mode) or not _is_executable(st, uid, gid):
            self._refuse(what, f"{argv[0]} is not executable for uid:gid {uid}:{gid}")
            return None

        setid_root = (st.st_uid == 0 and st.st_mode & stat.S_ISUID) or \
                     (st.st_gid == 0 and st.st_mode & stat.S_ISGID)
        if uid == 0 or gid == 0 or setid_root:
            real = os.path.realpath(argv[0])
            problem = path_insecurity(argv[0]) or (real != argv[0] and path_insecurity(real))
            if problem:
                self.counters.insecure += 1
                if self.enable_script_security:
                    self._refuse(what, f"insecure: {problem}")
                    return None
                log.warning("%s: unsafe permissions (%s); runs anyway since "
                            "enable_script_security is off", what, problem)
            if not self.enable_script_security and not self._warned_unsecured:
                self._warned_unsecured = True
                log.warning("SECURITY: scripts run as root but enable_script_security is not set")
        return Script(tuple(argv), uid, gid, label)

    def _refuse(self, what: str, why: str) -> None:
        self.counters.refused += 1
        log.error("disabling script %s: %s", what, why)

    # -- running -------------------------------------------------------------

    def start(self, script: Script, *extra_args: str, timeout: float | None = None,
              detached: bool = False) -> asyncio.Future:
        """Ask the spawner to run `script` with `extra_args`; a future of the ScriptResult.
        The timeout's SIGTERM goes to the script's process group, SIGKILL 2 s later.
        A detached script is not stopped by terminate_all(): keepalived forks its
        state notify scripts and forgets them (notify_exec), so a notify_master
        started just before shutdown still runs to its end."""
        fut = self.loop.create_future()
        if self._closing:
            log.warning("not running %s: shutting down", script)
            fut.set_result(ScriptResult(ScriptResult.EXEC_ERROR))
            return fut
        if self._spawner is None:
            self._spawner = Spawner(self.loop, self._reply, self._spawner_lost)
        run_id = next(self._ids)
        self._runs[run_id] = _Run(script, fut, detached)   # a lost spawner resolves it
        try:
            self._spawner.send(spawner.RUN, run_id, [*script.argv, *map(str, extra_args)],
                               script.uid, script.gid, float(timeout or 0))
        except ValueError as e:
            del self._runs[run_id]
            self.counters.exec_errors += 1
            log.error("cannot run %s: %s", script, e)
            fut.set_result(ScriptResult(ScriptResult.EXEC_ERROR))
        return fut

    async def run(self, script: Script, *extra_args: str, timeout: float | None = None,
                  ) -> ScriptResult:
        return await self.start(script, *extra_args, timeout=timeout)

    def _reply(self, msg: tuple) -> None:
        kind, run_id = msg[0], msg[1]
        run = self._runs.get(run_id)
        if run is None:
            return
        if kind == spawner.STARTED:
            self.counters.runs += 1
            run.pid = msg[2]
        elif kind == spawner.TIMEDOUT:
            run.timed_out = True
            self.counters.timeouts += 1
            log.warning("%s timed out; sent SIGTERM to its process group", run.script)
        elif kind == spawner.FAILED:
            del self._runs[run_id]
            self.counters.exec_errors += 1
            log.error("cannot run %s (%s): %s", run.script, run.script.argv[0], msg[2])
            run.future.set_result(ScriptResult(ScriptResult.EXEC_ERROR))
        elif kind == spawner.EXITED:
            del self._runs[run_id]
            rc = msg[2]
            if run.timed_out:
                result = ScriptResult(ScriptResult.TIMEOUT, rc)
            else:
                result = ScriptResult(ScriptResult.EXITED, rc)
                if rc != 0 and not run.stopping:
                    self.counters.failures += 1
                    log.info("%s exited with %s", run.script,
                             f"signal {-rc}" if rc < 0 else f"status {rc}")
            if not run.future.done():
                run.future.set_result(result)

    def _spawner_lost(self) -> None:
        """The spawner died (killed, out of memory): what it ran is unknown.
        The next start() starts a new one."""
        self._spawner = None
        if not self._runs:
            return
        log.error("script spawner exited; %d scripts' results are lost", len(self._runs))
        runs, self._runs = self._runs, {}
        for run in runs.values():
            self.counters.exec_errors += 1
            if not run.future.done():
                run.future.set_result(ScriptResult(ScriptResult.EXEC_ERROR))

    async def stop(self, fut: asyncio.Future, grace: float = 1.0) -> None:
        """Stop the script whose start() returned `fut` (e.g. a notify fifo script)."""
        await self._terminate([(i, r) for i, r in self._runs.items() if r.future is fut], grace)

    async def terminate_all(self, grace: float = 1.0) -> None:
        """Shutdown: stop every running script that is not detached, then the
        spawner (which exits and leaves the detached ones to finish)."""
        self._closing = True
        await self._terminate([(i, r) for i, r in self._runs.items() if not r.detached], grace)
        if self._spawner is not None:
            sp, self._spawner = self._spawner, None
            sp.close()
            await sp.wait_closed()
        for run in self._runs.values():
            run.future.cancel()        # nobody will hear of them again
        self._runs.clear()

    async def _terminate(self, runs: list[tuple[int, _Run]], grace: float) -> None:
        """SIGTERM the groups, SIGKILL them after `grace` (keepalived)."""
        for run_id, run in runs:
            run.stopping = True
            if self._spawner is not None:
                self._spawner.send(spawner.STOP, run_id, grace)
        pending = {r.future for _, r in runs}
        if pending:
            await asyncio.wait(pending, timeout=grace + 1.0)
