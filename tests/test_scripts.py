"""ScriptRunner: keepalived's argv splitting, process-group timeouts, counters,
script security, and proof that running scripts never stalls the event loop.

Every async test runs under plain asyncio and under uvloop (fixture `aio`).
"""
import asyncio
import logging
import os
import resource
import shutil
import signal
import tempfile
import time

import pytest

from scriptfiles import alive, write_script
from vrrpd.scripts import runner as scripts, spawner
from vrrpd.scripts.runner import CommandSyntaxError, ScriptResult, ScriptRunner, split_command


# -- keepalived's word splitting -------------------------------------------------

@pytest.mark.parametrize("cmd, argv", [
    ("/x.sh", ["/x.sh"]),
    ("  /x.sh   a\tb  ", ["/x.sh", "a", "b"]),
    # man keepalived.conf, "Quoted strings"
    ('abcd" efg h jkl "mnop', ["abcd efg h jkl mnop"]),
    ('abcd "efg h jkl" mnop', ["abcd", "efg h jkl", "mnop"]),
    ("/x.sh 'two words' last", ["/x.sh", "two words", "last"]),
    ("/x.sh 'it\"s'", ["/x.sh", 'it"s']),
    ('/x.sh ""', ["/x.sh", ""]),
    (r"/x.sh a\ b", ["/x.sh", "a b"]),
    (r"/x.sh \t\n\a\E", ["/x.sh", "\t\n\a\x1b"]),
    (r"/x.sh \101\x41\cA\q", ["/x.sh", "AA\x01q"]),
    (r"/x.sh '\''", ["/x.sh", "'"]),
])
def test_split_command(cmd, argv):
    assert split_command(cmd) == argv


@pytest.mark.parametrize("cmd", ["", "   ", "/x.sh 'open", '/x.sh "open', "/x.sh trailing\\"])
def test_split_command_rejects(cmd):
    with pytest.raises(CommandSyntaxError):
        split_command(cmd)


# -- running -----------------------------------------------------------------------

def test_exit_status_args_and_environment(aio, tmp_path, monkeypatch):
    monkeypatch.setenv("VRRPD_TEST_ENV", "inherited")
    out = tmp_path / "out"
    s = write_script(tmp_path / "s.sh",
                     f'printf "%s|" "$@" "$VRRPD_TEST_ENV" > {out}; exit "$1"')

    async def main():
        async with ScriptRunner() as r:
            script = r.prepare(f"{s} 7 'with space'")
            res = await r.run(script, "extra")
            return r, res

    r, res = aio(main())
    assert res == ScriptResult("exited", 7) and not res.ok
    assert out.read_text() == "7|with space|extra|inherited|"
    assert (r.counters.runs, r.counters.failures) == (1, 1)


def test_missing_and_crashing_scripts_are_counted(aio, tmp_path, caplog):
    crash = write_script(tmp_path / "crash.sh", "kill -SEGV $$")
    vanish = write_script(tmp_path / "vanish.sh", "exit 0")

    async def main():
        async with ScriptRunner() as r:
            assert r.prepare(str(tmp_path / "nope.sh")) is None          # disabled at prepare
            assert r.prepare("no-such-command-anywhere") is None
            gone = r.prepare(vanish)
            os.unlink(vanish)                                             # vanished after prepare
            res_gone = await r.run(gone)
            res_crash = await r.run(r.prepare(crash))
            return r, res_gone, res_crash

    r, res_gone, res_crash = aio(main())
    assert res_gone.status == "exec_error"
    assert res_crash == ScriptResult("exited", -11)
    c = r.counters
    assert (c.refused, c.exec_errors, c.failures, c.runs) == (2, 1, 1, 1)
    assert "not found in PATH" in caplog.text and "cannot run" in caplog.text


def test_script_without_shebang_runs_through_sh(aio, tmp_path):
    p = tmp_path / "noshebang"
    p.write_text("exit 5\n")
    p.chmod(0o755)

    async def main():
        async with ScriptRunner() as r:
            return await r.run(r.prepare(str(p)))

    assert aio(main()) == ScriptResult("exited", 5)


def test_timeout_kills_the_whole_process_group(aio, tmp_path):
    pids = tmp_path / "pids"
    s = write_script(tmp_path / "fork.sh",
                     f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; sleep 60")

    async def main():
        async with ScriptRunner() as r:
            t0 = time.monotonic()
            res = await r.run(r.prepare(s), timeout=0.3)
            return r, res, time.monotonic() - t0

    r, res, took = aio(main())
    assert res.status == "timeout" and res.returncode == -15
    assert r.counters.timeouts == 1 and r.counters.failures == 0
    assert took < 5
    child, script = map(int, pids.read_text().split())
    deadline = time.monotonic() + 2
    while (alive(child) or alive(script)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(script) and not alive(child)


def test_sigterm_ignoring_grandchild_gets_sigkill(aio, tmp_path):
    pidf = tmp_path / "pid"
    s = write_script(tmp_path / "stubborn.sh",
                     f"sh -c 'trap \"\" TERM; echo $$ > {pidf}; while :; do sleep 0.05; done'"
                     " & sleep 60")

    async def main():
        async with ScriptRunner() as r:
            res = await r.run(r.prepare(s), timeout=0.3)
            pid = int(pidf.read_text())
            assert alive(pid)                       # survived SIGTERM
            await asyncio.sleep(spawner.KILL_DELAY + 0.5)
            return res, pid

    res, pid = aio(main())
    assert res.status == "timeout"
    assert not alive(pid)


def test_flooding_stdout_neither_blocks_nor_grows_memory(aio, tmp_path):
    s = write_script(tmp_path / "flood.sh",
                     "head -c 200000000 /dev/zero; head -c 50000000 /dev/zero >&2")

    async def main():
        async with ScriptRunner() as r:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            res = await r.run(r.prepare(s), timeout=30)
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            return res, after - before

    res, grown_kib = aio(main())
    assert res.ok
    assert grown_kib < 20_000          # 250 MB written; our RSS must not follow


def test_loop_stays_live_while_100_scripts_hang_past_timeout(aio, tmp_path):
    s = write_script(tmp_path / "hang.sh", "sleep 30")

    async def main():
        loop = asyncio.get_running_loop()
        async with ScriptRunner() as r:
            script = r.prepare(s)
            lateness = []

            async def ticker():
                while True:
                    t = loop.time()
                    await asyncio.sleep(0.01)
                    lateness.append(loop.time() - t - 0.01)

            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            results = await asyncio.gather(*(r.start(script, timeout=0.3) for _ in range(100)))
            await asyncio.sleep(0.1)
            tick.cancel()
            return r, results, max(lateness), len(lateness)

    r, results, worst, ticks = aio(main())
    assert all(res.status == "timeout" for res in results)
    assert r.counters.timeouts == 100 and r.running == 0
    assert ticks > 20
    # Liveness, not a benchmark: spawning 100 children is the only work in the loop.
    print(f"max timer lateness {worst * 1000:.1f} ms over {ticks} ticks")
    assert worst < 0.05, f"loop stalled {worst * 1000:.1f} ms"


def test_terminate_all_stops_running_scripts(aio, tmp_path):
    s = write_script(tmp_path / "hang.sh", "sleep 30")

    async def main():
        async with ScriptRunner() as r:
            futs = [r.start(r.prepare(s)) for _ in range(3)]
            await asyncio.sleep(0.1)
            await r.terminate_all(grace=1.0)
            return r, [f.result() for f in futs]

    r, results = aio(main())
    assert r.running == 0 and all(res.returncode == -15 for res in results)


def test_terminate_all_leaves_detached_scripts_to_finish(aio, tmp_path):
    """keepalived forks its state notify scripts and forgets them: a
    notify_master started just before shutdown still does its work."""
    out = tmp_path / "done"
    notify = write_script(tmp_path / "notify.sh", f"sleep 0.5; echo done > {out}")
    track = write_script(tmp_path / "track.sh", "exec sleep 30")

    async def main():
        r = ScriptRunner()
        detached = r.start(r.prepare(notify), detached=True)
        tracked = r.start(r.prepare(track))
        await asyncio.sleep(0.1)
        await r.terminate_all(grace=1.0)
        return r, detached, tracked.result()

    r, detached, tracked = aio(main())
    assert tracked.returncode == -15 and r.running == 0
    assert detached.cancelled()
    assert not out.exists()                 # still running when terminate_all returned
    deadline = time.monotonic() + 5
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.read_text() == "done\n"


def test_terminate_all_ends_the_spawner_process(aio, tmp_path):
    s = write_script(tmp_path / "ok.sh", "exit 0")

    async def main():
        r = ScriptRunner()
        assert (await r.run(r.prepare(s))).ok
        proc = r._spawner.proc
        await r.terminate_all()
        return proc.returncode, r.start(r.prepare(s)).result()

    rc, after = aio(main())
    assert rc == 0                              # exited by itself on EOF
    assert after.status == "exec_error"         # nothing runs once shut down


def test_signals_for_the_daemon_spare_the_spawner_not_the_scripts(aio, tmp_path):
    """Ctrl-C or a SIGTERM meant for the daemon's process group must not take
    the spawner down, yet a script it starts must still die of SIGTERM (a
    handler, unlike SIG_IGN, is reset at exec)."""
    s = write_script(tmp_path / "hang.sh", "exec sleep 30")

    async def main():
        async with ScriptRunner() as r:
            first = r.start(r.prepare(s), timeout=0.3)
            await asyncio.sleep(0.2)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                os.kill(r._spawner.proc.pid, sig)
            res = await asyncio.wait_for(first, 5)
            return res, (await r.run(r.prepare(write_script(tmp_path / "ok.sh", "exit 3")))), \
                r._spawner.proc.poll()

    res, later, spawner_rc = aio(main())
    assert res == ScriptResult("timeout", -signal.SIGTERM)
    assert later == ScriptResult("exited", 3) and spawner_rc is None


def test_a_killed_spawner_fails_its_scripts_and_is_replaced(aio, tmp_path, caplog):
    s = write_script(tmp_path / "hang.sh", "exec sleep 30")

    async def main():
        async with ScriptRunner() as r:
            futs = [r.start(r.prepare(s)) for _ in range(3)]
            await asyncio.sleep(0.2)
            old = r._spawner.proc
            pids = [run.pid for run in r._runs.values()]
            old.kill()
            results = [await asyncio.wait_for(f, 5) for f in futs]
            again = await r.run(r.prepare(write_script(tmp_path / "ok.sh", "exit 0")))
            for pid in pids:          # orphans of the dead spawner: not ours to reap
                os.kill(pid, signal.SIGKILL)
            return r.counters, results, again, old.wait(5)

    counters, results, again, _ = aio(main())
    assert all(res.status == "exec_error" for res in results) and counters.exec_errors == 3
    assert again.ok
    assert "spawner exited" in caplog.text


def test_an_oversized_command_is_refused_not_fatal(aio, tmp_path):
    s = write_script(tmp_path / "ok.sh", "exit 0")

    async def main():
        async with ScriptRunner() as r:
            huge = await r.run(r.prepare(s), "x" * (spawner.MAX_MESSAGE + 1))
            return huge, await r.run(r.prepare(s)), r.counters.exec_errors

    huge, normal, errors = aio(main())
    assert huge.status == "exec_error" and errors == 1 and normal.ok


# -- users and script security --------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")


@pytest.fixture
def world_dir():
    """A root-owned 0755 directory outside pytest's 0700 tree (other users can reach it)."""
    d = tempfile.mkdtemp(prefix="vrrpd-scripts-", dir="/tmp")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d)


@needs_root
def test_runs_as_configured_user(aio, world_dir):
    from pathlib import Path
    s = write_script(Path(world_dir) / "who.sh",
                     '[ "$(id -u)" = 65534 ] && [ "$(id -g)" = 65534 ] && [ "$(id -G)" = 65534 ]')

    async def main():
        async with ScriptRunner(script_user="nobody") as r:
            script = r.prepare(s)
            assert (script.uid, script.gid) == (65534, 65534)
            own = r.prepare(s, "root")                      # the script's own user wins
            assert (own.uid, own.gid) == (0, 0)
            return await r.run(script)

    assert aio(main()).ok


@needs_root
def test_security_refuses_root_script_in_group_writable_dir(tmp_path, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    os.chown(bad, 0, 100)
    bad.chmod(0o775)
    s = write_script(bad / "s.sh", "exit 0")
    good = write_script(tmp_path / "good.sh", "exit 0")
    link = tmp_path / "link.sh"
    link.symlink_to(s)                       # secure link, insecure target

    secure = ScriptRunner(script_user="root", enable_script_security=True)
    with caplog.at_level(logging.INFO):
        assert secure.prepare(s, label="chk_bad") is None
        assert secure.prepare(str(link), label="chk_link") is None
        assert secure.prepare(good) is not None
    assert secure.counters.refused == 2 and secure.counters.insecure == 2
    assert "disabling script chk_bad: insecure" in caplog.text
    assert f"{bad}: writable by group 100" in caplog.text

    # Without enable_script_security keepalived only warns.
    lax = ScriptRunner()
    assert lax.prepare(s) is not None
    assert lax.counters.insecure == 1 and lax.counters.refused == 0


@needs_root
def test_security_world_writable_script_and_non_root_owner(tmp_path):
    ww = write_script(tmp_path / "ww.sh", "exit 0", mode=0o777)
    owned = write_script(tmp_path / "owned.sh", "exit 0")
    os.chown(owned, 65534, 65534)
    r = ScriptRunner(script_user="root", enable_script_security=True)
    assert r.prepare(ww) is None and r.prepare(owned) is None
    assert r.counters.refused == 2


def test_security_without_any_script_user_refuses(monkeypatch, tmp_path):
    # keepalived 2.2.7 with enable_script_security, no script_user and no
    # keepalived_script user: "Unable to set default user keepalived_script".
    def no_user(name):
        raise KeyError(name)
    monkeypatch.setattr(scripts.pwd, "getpwnam", no_user)
    s = write_script(tmp_path / "s.sh", "exit 0")
    r = ScriptRunner(enable_script_security=True)
    assert r.prepare(s) is None and r.counters.refused == 1


def test_resolve_user_order(monkeypatch):
    class PW:
        def __init__(self, uid, gid):
            self.pw_uid, self.pw_gid = uid, gid
    users = {"own": PW(1001, 1001), "glob": PW(1002, 1002), "keepalived_script": PW(1003, 1003)}

    def getpwnam(name):
        return users[name]
    monkeypatch.setattr(scripts.pwd, "getpwnam", getpwnam)
    assert scripts.resolve_user("own", script_user="glob") == (1001, 1001)
    assert scripts.resolve_user(None, script_user="glob") == (1002, 1002)
    assert scripts.resolve_user(None) == (1003, 1003)
    del users["keepalived_script"]
    assert scripts.resolve_user(None) == (os.geteuid(), os.getegid())
