"""Notifier: start order and arguments of notify scripts, exact fifo lines,
bounded fifo queue with counted drops, the fifo script's life cycle."""
import asyncio
import fcntl
import logging
import os
import shutil
import signal
import subprocess
import time

import pytest

from scriptfiles import RECORDER, alive, read_kept_lines, recorded, write_script
from vrrpd.scripts import notify
from vrrpd.scripts.notify import NotifyFifo, Notifier, NotifyScripts, fifo_line
from vrrpd.scripts.runner import ScriptRunner


def test_notify_scripts_start_in_order_with_their_arguments(aio, tmp_path):
    log = tmp_path / "log"
    rec = write_script(tmp_path / "rec.sh", RECORDER.format(log=log))

    async def main():
        async with ScriptRunner() as r:
            inst = NotifyScripts(
                notify_master=r.prepare(f"{rec} master 'quoted arg'"),
                notify_backup=r.prepare(f"{rec} backup"),
                notify_fault=r.prepare(f"{rec} fault"),
                notify=r.prepare(rec),
            )
            group = NotifyScripts(notify=r.prepare(f"{rec} group-generic"))
            n = Notifier(r)
            n.notify("INSTANCE", "VI_1", "BACKUP", 100, inst)
            n.notify("INSTANCE", "VI_1", "MASTER", 100, inst)
            n.notify("GROUP", "G1", "MASTER", 100, group)          # group priority is always 0
            n.notify("INSTANCE", "VI_1", "FAULT", 90, inst)
            while r.counters.runs < 7 or r.running:            # notify() never waits; we do
                await asyncio.sleep(0.01)
            return r

    r = aio(main())
    rows = recorded(log, 7)
    assert [(argc, args) for _, argc, args in rows] == [
        (1, "<backup>"),
        (4, "<INSTANCE> <VI_1> <BACKUP> <100>"),              # exactly 4 for the generic notify
        (2, "<master> <quoted arg>"),
        (4, "<INSTANCE> <VI_1> <MASTER> <100>"),
        (5, "<group-generic> <GROUP> <G1> <MASTER> <0>"),     # 4 appended after its own
        (1, "<fault>"),
        (4, "<INSTANCE> <VI_1> <FAULT> <90>"),
    ]
    assert r.counters.runs == 7 and r.counters.failures == 0


def test_master_rx_lower_pri_and_stop(aio, tmp_path):
    log = tmp_path / "log"
    rec = write_script(tmp_path / "rec.sh", RECORDER.format(log=log))
    slow_stop = write_script(tmp_path / "stop.sh", f"sleep 0.3; {RECORDER.format(log=log)}")

    async def main():
        async with ScriptRunner() as r:
            s = NotifyScripts(notify_master_rx_lower_pri=r.prepare(f"{rec} rxlower"),
                              notify_stop=r.prepare(f"{slow_stop} stop"))
            n = Notifier(r)
            n.master_rx_lower_pri("VI_1", 100, s)
            n.notify("INSTANCE", "VI_1", "STOP", 100, s)
            t0 = time.monotonic()
            await n.shutdown()                      # waits for notify_stop (bounded)
            return time.monotonic() - t0

    waited = aio(main())
    assert 0.2 < waited < 1.5
    assert [args for _, _, args in recorded(log, 2)] == ["<rxlower>", "<stop>"]


def test_fifo_lines_are_exact(aio, tmp_path):
    path = str(tmp_path / "fifo")

    async def main():
        async with ScriptRunner() as r:
            fifo = NotifyFifo(path)
            n = Notifier(r, [fifo])
            n.open()
            reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            n.notify("INSTANCE", "VI_1", "BACKUP", 100)
            n.notify("INSTANCE", "VI_1", "MASTER", 100)
            n.notify("GROUP", "G1", "MASTER", 100)
            n.master_rx_lower_pri("VI_1", 100)
            n.priority_changed("VI_1", "MASTER", 90)
            n.notify("INSTANCE", "VI_1", "STOP", 90)
            n.notify("GROUP", "G1", "STOP", 90)
            data = os.read(reader, 65536)
            os.close(reader)
            await n.shutdown()
            return data, fifo

    data, fifo = aio(main())
    assert data.decode().splitlines() == [
        'INSTANCE "VI_1" BACKUP 100',
        'INSTANCE "VI_1" MASTER 100',
        'GROUP "G1" MASTER 0',
        'INSTANCE "VI_1" MASTER_RX_LOWER_PRI 100',
        'INSTANCE "VI_1" MASTER_PRIORITY 90',
        'INSTANCE "VI_1" STOP 90',
        'GROUP "G1" STOP 0',
    ]
    assert fifo.lines == 7 and fifo.drops == 0
    assert not os.path.exists(fifo.path)              # we created it, we remove it


def test_fifo_without_reader_drops_are_counted_and_loop_never_blocks(aio, tmp_path, caplog):
    path = str(tmp_path / "fifo")
    total = 60_000          # ~1.9 MB: more than the pipe holds (FIFO_PIPE_SIZE)

    async def main():
        fifo = NotifyFifo(path, max_queue=500)
        assert fifo.open()
        # The daemon's fifo holds a takeover of thousands of lines, not 64 kB.
        assert fcntl.fcntl(fifo._fd, fcntl.F_GETPIPE_SZ) == notify.FIFO_PIPE_SIZE
        t0 = time.monotonic()
        for i in range(total):
            fifo.write_line(fifo_line("INSTANCE", f"VI_{i}", "MASTER", 100))
        took = time.monotonic() - t0
        in_pipe, queued, drops = fifo.lines, fifo.queued, fifo.drops
        # A reader appears: everything kept is delivered, in order.
        return took, in_pipe, queued, drops, await read_kept_lines(fifo, path, total), fifo

    with caplog.at_level(logging.WARNING):
        took, in_pipe, queued, drops, lines, fifo = aio(main())
    assert took < 2.0                                   # no blocking write anywhere
    assert queued == 500 and in_pipe > 0
    assert drops == total - in_pipe - queued and fifo.drops == drops
    assert len(lines) == total - drops
    names = [int(line.split('"')[1][3:]) for line in lines]
    # Order kept, a gapless prefix.
    assert names == sorted(names) and names == list(range(len(names)))
    assert "dropping events" in caplog.text and f"{drops} events were dropped" in caplog.text


def test_slow_fifo_script_gets_every_line_and_is_stopped(aio, tmp_path):
    path = str(tmp_path / "fifo")
    out = tmp_path / "out"
    pidf = tmp_path / "pid"
    reader = write_script(tmp_path / "reader.sh",
                          f'echo $$ > {pidf}; while read -r line; do echo "$line" >> {out}; '
                          f'sleep 0.002; done < "$1"')

    async def main():
        async with ScriptRunner() as r:
            fifo = NotifyFifo(path, r.prepare(reader))
            n = Notifier(r, [fifo])
            n.open()
            for i in range(300):
                n.notify("INSTANCE", f"VI_{i}", "BACKUP", 50)
            for _ in range(500):
                await asyncio.sleep(0.01)
                if out.exists() and len(out.read_text().splitlines()) == 300:
                    break
            await n.shutdown()
            return fifo

    fifo = aio(main())
    lines = out.read_text().splitlines()
    assert lines == [f'INSTANCE "VI_{i}" BACKUP 50' for i in range(300)]
    assert fifo.drops == 0
    assert not alive(int(pidf.read_text()))            # fifo script stopped at shutdown


def test_existing_non_fifo_path_is_refused(aio, tmp_path):
    p = tmp_path / "plain"
    p.write_text("")

    async def main():
        return NotifyFifo(str(p)).open()

    assert aio(main()) is False
    assert p.exists()                                  # not ours: never unlinked


# -- against keepalived 2.2.7 ------------------------------------------------------------

KA_CONF = """
global_defs {{
  router_id T
  script_user root
  enable_script_security
  vrrp_version 3
  vrrp_notify_fifo {fifo}
  vrrp_notify_fifo_script {reader}
}}
vrrp_instance VI_1 {{
  state BACKUP
  interface veth0
  virtual_router_id 51
  priority 100
  advert_int 0.1
  virtual_ipaddress {{
    192.0.2.100/24
  }}
  notify_master "{rec} master 'quoted arg'"
  notify_backup "{rec} backup"
  notify_stop "{rec} stop"
  notify {rec}
}}
"""


KEEPALIVED = shutil.which("keepalived") or "/usr/sbin/keepalived"


def run_keepalived(netns, tmp_path, conf):
    ns = netns("ka")
    ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
    ns.run("ip", "link", "set", "veth1", "up")
    ns.run("ip", "link", "set", "veth0", "up")
    ns.run("ip", "addr", "add", "192.0.2.10/24", "dev", "veth0")
    cfg = tmp_path / "k.conf"
    cfg.write_text(conf)
    pid = str(tmp_path / "k.pid")         # unique pid files: other keepalived may be running
    with open(tmp_path / "ka.log", "wb") as log:
        return ns.popen(KEEPALIVED, "-n", "-l", "-D", "--vrrp", "-f", str(cfg), "-p", pid,
                        "-r", pid + ".vrrp", "-c", pid + ".chk",
                        stdout=log, stderr=subprocess.STDOUT)


def lines_of(path):
    return path.read_text().splitlines() if path.exists() else []


def wait_lines(path, pred, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not pred(lines_of(path)):
        assert time.monotonic() < deadline, f"{path}: {lines_of(path)}"
        time.sleep(0.02)


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.skipif(not os.path.exists(KEEPALIVED) or os.geteuid() != 0,
                    reason="needs keepalived, root")
def test_same_script_arguments_and_fifo_lines_as_keepalived(aio, netns, tmp_path):
    ka_dir, our_dir = tmp_path / "ka", tmp_path / "ours"
    for d in (ka_dir, our_dir):
        d.mkdir()
        write_script(d / "rec.sh", RECORDER.format(log=d / "log"))
        write_script(d / "reader.sh",
                     f'while read -r l; do echo "$l" >> {d / "fifo.out"}; done < "$1"')

    proc = run_keepalived(netns, tmp_path, KA_CONF.format(
        fifo=ka_dir / "fifo", reader=ka_dir / "reader.sh", rec=ka_dir / "rec.sh"))
    try:
        wait_lines(ka_dir / "fifo.out", lambda ls: any(" MASTER " in x for x in ls))
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ka_lines = (ka_dir / "fifo.out").read_text().splitlines()
    ka_rows = recorded(ka_dir / "log", 6)            # notify_* and notify for BACKUP, MASTER, STOP
    # keepalived's transitions, from what its generic notify was given.
    transitions = [args[1:-1].split("> <") for _, argc, args in ka_rows if argc == 4]
    assert [t[2] for t in transitions] == ["BACKUP", "MASTER", "STOP"]

    # Replay them through our Notifier.
    async def main():
        async with ScriptRunner(script_user="root", enable_script_security=True) as r:
            rec = str(our_dir / "rec.sh")
            s = NotifyScripts(notify_master=r.prepare(f"{rec} master 'quoted arg'"),
                              notify_backup=r.prepare(f"{rec} backup"),
                              notify_stop=r.prepare(f"{rec} stop"), notify=r.prepare(rec))
            n = Notifier(r, [NotifyFifo(str(our_dir / "fifo"),
                                        r.prepare(str(our_dir / "reader.sh")))])
            n.open()
            for kind, name, state, prio in transitions:
                n.notify(kind, name, state, int(prio), s)
            for _ in range(500):
                if len(lines_of(our_dir / "fifo.out")) == len(transitions):
                    break
                await asyncio.sleep(0.01)
            await n.shutdown()

    aio(main())
    # keepalived may stop its fifo reader before it reads the STOP line: compare a prefix.
    assert (our_dir / "fifo.out").read_text().splitlines()[:len(ka_lines)] == ka_lines
    ours = recorded(our_dir / "log", len(ka_rows))
    assert [(argc, args) for _, argc, args in ours] == [(argc, args) for _, argc, args in ka_rows]
    assert ka_lines[:2] == ['INSTANCE "VI_1" BACKUP 100', 'INSTANCE "VI_1" MASTER 100']


def _hanging_master(lan, tmp_path, global_lines: str):
    """A lone master whose notify_master never exits; -> (daemon, pid file)."""
    from daemons import OpsDaemon
    from vrrpd.lab.conf import LabSpec, host_config
    pids = tmp_path / "pids"
    script = tmp_path / "hang.sh"
    script.write_text(f"#!/bin/sh\necho $$ >> {pids}\nexec sleep 1000\n")
    script.chmod(0o755)
    spec = LabSpec(instances=1, version=3, advert_int=0.1, notify_fifo="@FIFO@",
                   extra_instance=f"notify_master {script}")
    net = lan(hosts=1, nics=spec.nics)
    conf = host_config(spec, 0, priority=200).replace("global_defs {",
                                                      "global_defs {\n" + global_lines, 1)
    d = OpsDaemon(net.hosts[0], conf, tmp_path)
    d.start()
    d.wait_all(["VI_0"], "MASTER", timeout=30)
    d.wait_socket()
    from netns import wait_for
    wait_for(lambda: pids.exists() and pids.read_text().strip(), 10, what="notify_master ran")
    return d, int(pids.read_text().split()[0])


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.netns
def test_notify_script_timeout(lan, tmp_path):
    """notify_script_timeout (a vrrpd extension): a notify script that never
    exits is stopped after it and counted as a timeout."""
    from netns import wait_for
    d, pid = _hanging_master(lan, tmp_path, "    notify_script_timeout 0.5")
    try:
        wait_for(lambda: not _alive(pid), 5, what="the hanging notify_master stopped")
        assert d.ctl_json("stats")["scripts"]["timeouts"] == 1
    finally:
        d.stop()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.netns
@pytest.mark.parametrize("kill", [False, True])
def test_notify_scripts_at_stop(lan, tmp_path, kill):
    """keepalived leaves notify scripts running when it stops (the default);
    notify_script_kill_on_stop stops them with the daemon."""
    d, pid = _hanging_master(lan, tmp_path, "    notify_script_kill_on_stop" if kill else "")
    try:
        d.signal(signal.SIGTERM)
        d.wait_exit(timeout=20)
        time.sleep(0.5)
        assert _alive(pid) is not kill
    finally:
        d.stop()
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
