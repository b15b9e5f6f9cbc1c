"""Run external scripts as keepalived does, without ever blocking the event loop.

A script is exec'd directly (no shell) from an argv built by keepalived's
quoted/escaped word splitting, in its own session and process group (so a
timeout can kill everything it forked), with stdin/stdout/stderr on /dev/null
(keepalived's set_std_fd(): a script that floods stdout costs nothing) and the
daemon's environment (keepalived passes `environ` to execve).

Spawning happens on one worker thread (fork+exec waits for the child's exec,
~1 ms each, which must not stall the loop; one FIFO worker keeps start order).
Waiting: each child is watched through a pidfd registered with
loop.add_reader(), so it behaves the same on uvloop and on asyncio, needs no
child watcher and no thread per script.

Security (keepalived's check_script_secure()): a script that runs as root must
not be replaceable by anyone else: every path component, of the configured
path and of its symlink-resolved path, must be root-owned and not
group/world-writable (sticky directories like /tmp excepted, as keepalived
does).  With `enable_script_security` such scripts are refused; without it
they only draw a warning.  Like keepalived we do not check the #! interpreter.
"""
from __future__ import annotations

import asyncio
import errno
import grp
import logging
import os
import pwd
import signal
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from string import hexdigits

log = logging.getLogger(__name__)

KILL_DELAY = 2.0            # keepalived: SIGKILL the group 2 s after the timeout SIGTERM
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
            return f"{comp}: writable by group {st.st_gid} or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


class _Run:
    """One running child: its Popen, pidfd, timers and the future of its result."""
    __slots__ = ("script", "proc", "pidfd", "future", "timed_out", "stopping", "timeout_handle")

    def __init__(self, script: Script, proc: subprocess.Popen, pidfd: int, future: asyncio.Future):
        self.script = script
        self.proc = proc
        self.pidfd = pidfd
        self.future = future
        self.timed_out = False
        self.stopping = False          # we are stopping it: its death is no failure
        self.timeout_handle: asyncio.TimerHandle | None = None


class ScriptRunner:
    """Prepares and runs scripts; never raises for a script's misbehaviour.

    `prepare()` turns a configured command into a `Script` (or None when it
    must be disabled, logged and counted).  `start()` queues the spawn (the
    order of start() calls is the order the processes start) and returns a
    future of the `ScriptResult`; `run()` awaits it.  Not supported: the
    keepalived idiom of a script starting with "<" run through /bin/sh.
    """

    def __init__(self, *, script_user: str | None = None, script_group: str | None = None,
                 enable_script_security: bool = False,
                 loop: asyncio.AbstractEventLoop | None = None):
        self.script_user = script_user
        self.script_group = script_group
        self.enable_script_security = enable_script_security
        self.counters = ScriptCounters()
        self._loop = loop
        self._running: dict[int, _Run] = {}
        self._spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vrrpd-spawn")
        self._closing = False
        self._warned_unsecured = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def running(self) -> int:
        return len(self._running)

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
                    return self._refuse(what, f"no script user: set script_user or create "
                                              f"{DEFAULT_SCRIPT_USER} (enable_script_security)")
            uid, gid = resolve_user(user, group, script_user=self.script_user,
                                    script_group=self.script_group)
        except CommandSyntaxError as e:
            return self._refuse(what, str(e))
        except KeyError as e:
            return self._refuse(what, f"unknown user/group {e}")

        if "/" not in argv[0]:
            found = find_in_path(argv[0], uid, gid)
            if found is None:
                return self._refuse(what, f"{argv[0]!r} not found in PATH")
            log.warning("%s: %r resolved by PATH search to %s; please give the full path",
                        what, argv[0], found)
            argv[0] = found
        try:
            st = os.stat(argv[0])
        except OSError as e:
            return self._refuse(what, f"{argv[0]}: {e.strerror}")
        if not stat.S_ISREG(st.st_mode) or not _is_executable(st, uid, gid):
            return self._refuse(what, f"{argv[0]} is not executable for uid:gid {uid}:{gid}")

        setid_root = (st.st_uid == 0 and st.st_mode & stat.S_ISUID) or \
                     (st.st_gid == 0 and st.st_mode & stat.S_ISGID)
        if uid == 0 or gid == 0 or setid_root:
            real = os.path.realpath(argv[0])
            problem = path_insecurity(argv[0]) or (real != argv[0] and path_insecurity(real))
            if problem:
                self.counters.insecure += 1
                if self.enable_script_security:
                    return self._refuse(what, f"insecure: {problem}")
                log.warning("%s: unsafe permissions (%s); runs anyway since "
                            "enable_script_security is off", what, problem)
            if not self.enable_script_security and not self._warned_unsecured:
                self._warned_unsecured = True
                log.warning("SECURITY: scripts run as root but enable_script_security is not set")
        return Script(tuple(argv), uid, gid, label)

    def _refuse(self, what: str, why: str) -> None:
        self.counters.refused += 1
        log.error("disabling script %s: %s", what, why)
        return None

    # -- running -------------------------------------------------------------

    def start(self, script: Script, *extra_args: str, timeout: float | None = None,
              ) -> asyncio.Future:
        """Queue the spawn and return a future of the ScriptResult.

        fork+exec waits for the child's exec (~1 ms each here), so 100 at once
        would stall the loop for 100 ms: spawns run on one worker thread, in
        call order (start order == call order; keepalived's notify ordering).
        """
        loop = self.loop
        fut = loop.create_future()
        argv = [*script.argv, *map(str, extra_args)]
        spawning = loop.run_in_executor(self._spawner, self._spawn, argv, script)
        spawning.add_done_callback(lambda sp: self._spawned(sp, script, fut, timeout))
        return fut

    async def run(self, script: Script, *extra_args: str, timeout: float | None = None,
                  ) -> ScriptResult:
        return await self.start(script, *extra_args, timeout=timeout)

    @staticmethod
    def _spawn(argv: list[str], script: Script) -> subprocess.Popen:
        """Runs on the spawner thread."""
        kw = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        if script.uid != os.geteuid() or script.gid != os.getegid():
            # keepalived: setgid, setgroups(1, &gid), setuid in the child.
            kw.update(user=script.uid, group=script.gid, extra_groups=[script.gid])
        try:
            return subprocess.Popen(argv, **kw)
        except OSError as e:
            if e.errno != errno.ENOEXEC:
                raise
            # No #! line: keepalived then runs it through /bin/sh (system()).
            return subprocess.Popen(["/bin/sh", *argv], **kw)

    def _spawned(self, spawning: asyncio.Future, script: Script, fut: asyncio.Future,
                 timeout: float | None) -> None:
        try:
            proc = spawning.result()
        except (OSError, subprocess.SubprocessError, ValueError) as e:
            self.counters.exec_errors += 1
            log.error("cannot run %s (%s): %s", script, script.argv[0], e)
            fut.set_result(ScriptResult(ScriptResult.EXEC_ERROR))
            return
        self.counters.runs += 1
        run = _Run(script, proc, os.pidfd_open(proc.pid), fut)
        self._running[proc.pid] = run
        self.loop.add_reader(run.pidfd, self._reap, run)
        if self._closing:
            run.stopping = True
            _killpg(proc.pid, signal.SIGKILL)
        elif timeout is not None and timeout > 0:
            run.timeout_handle = self.loop.call_later(timeout, self._on_timeout, run)

    def _reap(self, run: _Run) -> None:
        if run.proc.poll() is None:        # spurious wakeup
            return
        self.loop.remove_reader(run.pidfd)
        os.close(run.pidfd)
        self._running.pop(run.proc.pid, None)
        if run.timeout_handle is not None:
            run.timeout_handle.cancel()
        rc = run.proc.returncode
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

    def _on_timeout(self, run: _Run) -> None:
        run.timeout_handle = None
        run.timed_out = True
        self.counters.timeouts += 1
        log.warning("%s timed out; sending SIGTERM to its process group", run.script)
        pgid = run.proc.pid            # own session: pgid == pid
        _killpg(pgid, signal.SIGTERM)
        # SIGKILL the whole group later even if the leader obeys: its children may not.
        self.loop.call_later(KILL_DELAY, _killpg, pgid, signal.SIGKILL)

    async def stop(self, fut: asyncio.Future, grace: float = 1.0) -> None:
        """Stop the script whose start() returned `fut` (e.g. a notify fifo script)."""
        await self._terminate([r for r in self._running.values() if r.future is fut], grace)

    async def terminate_all(self, grace: float = 1.0) -> None:
        """Shutdown: stop every running script; those still queued are killed as they start."""
        self._closing = True
        await self.loop.run_in_executor(self._spawner, lambda: None)   # drain the spawn queue
        await asyncio.sleep(0)
        await self._terminate(list(self._running.values()), grace)
        self._spawner.shutdown(wait=False)

    async def _terminate(self, runs: list[_Run], grace: float) -> None:
        """SIGTERM the groups, SIGKILL those still there after `grace` (keepalived)."""
        for run in runs:
            run.stopping = True
            _killpg(run.proc.pid, signal.SIGTERM)
        pending = {r.future for r in runs}
        if pending:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for run in runs:
            if run.future in pending:
                _killpg(run.proc.pid, signal.SIGKILL)
        if pending:
            await asyncio.wait(pending, timeout=grace)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass          # the whole group is already gone
