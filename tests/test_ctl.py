"""vrrpctl against running daemons on two namespace hosts: status/show/stats
agree with what the other oracles see (the notify fifo, the VIPs in the
kernel, the peer's address), bad requests get error replies, and the
control socket refuses everyone but root (file mode and SO_PEERCRED)."""
from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from children import child
from daemons import VRRPCTL, two_hosts, vips_on
from vrrpd.lab.conf import vip

pytestmark = [pytest.mark.netns]


@pytest.fixture
def hosts(lan, tmp_path):
    made = []

    def make(**kw):
        net, spec, procs = two_hosts(lan, tmp_path, **kw)
        made.extend(procs)
        return net, spec, procs

    yield make
    for d in made:
        d.stop()


def test_status_show_stats(hosts):
    net, spec, (m, b) = hosts()
    sm, sb = m.ctl_json("status"), b.ctl_json("status")
    assert sm["schema"] == 1 and [v["name"] for v in sm["instances"]] == ["VI_0", "VI_1"]
    for st, d, state, ip in ((sm, m, "MASTER", net.host_ip(0)), (sb, b, "BACKUP", net.host_ip(0))):
        for v in st["instances"]:
            assert v["state"] == state == d.state(v["name"])        # the fifo agrees
            assert v["master_address"] == ip                        # the backup learnt the peer
            assert v["interface"] == "eth0" and v["family"] == 4 and v["version"] == 3
            assert v["advert_int"] == 0.1 and v["last_reason"] is not None
    v0 = sm["instances"][0]
    assert v0["vrid"] == 1 and v0["base_priority"] == v0["effective_priority"] == 200
    assert v0["vips"] == [vip(spec, 0) + "/32"]
    assert vip(spec, 0) + "/32" in vips_on(net.hosts[0])
    assert vip(spec, 0) + "/32" not in vips_on(net.hosts[1])

    text = m.ctl("status").stdout.splitlines()
    assert text[0].split()[:5] == ["NAME", "IFACE", "VRID", "STATE", "PRIO"]
    assert text[1].split()[:5] == ["VI_0", "eth0", "1", "MASTER", "200/200"]

    shown = m.ctl_json("show", "VI_1")
    assert shown["name"] == "VI_1" and shown["counters"]["adverts_sent"] > 0
    assert shown["counters"]["became_master"] == 1
    assert {"kind": "interface", "name": "eth0", "weight": 0, "reverse": False,
            "value": True} in shown["tracking"]["tracks"]
    assert "adverts_sent" in m.ctl("show", "VI_1").stdout
    backup_view = b.ctl_json("show", "VI_1")["counters"]
    assert backup_view["adverts_received"] > 0

    st = b.ctl_json("stats")
    assert set(st["instances"]) == {"VI_0", "VI_1"}
    for name, c in st["instances"].items():     # every transition the fifo saw, counted
        for state in ("MASTER", "BACKUP", "FAULT"):
            lines = [e for e in b.fifo.events() if e[2] == name and e[3] == state]
            assert c["became_" + state.lower()] == len(lines), (name, state)
    assert st["sockets"][0]["interface"] == "eth0"
    assert st["sockets"][0]["counters"]["rx_packets"] > 0
    assert "RECEIVED" in b.ctl("stats").stdout

    r = m.ctl("show", "NOPE")
    assert r.returncode == 1 and "no instance 'NOPE'" in r.stderr


def test_errors_and_bad_requests(hosts, tmp_path):
    net, spec, (m, b) = hosts(instances=1)
    r = subprocess.run([VRRPCTL, "--socket", str(tmp_path / "nothing.sock"), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "cannot talk to vrrpd" in r.stderr
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(m.sock)
        f = s.makefile("rwb")
        for line, error in ((b"not json\n", "bad request"),
                            (b'{"cmd": "format-disk"}\n', "unknown command"),
                            (b'{"cmd": "status", "args": [1]}\n', "bad request"),
                            (b'{"cmd": "show"}\n', "missing"), (b"[]\n", "bad request")):
            f.write(line)
            f.flush()
            reply = json.loads(f.readline())
            assert reply["ok"] is False and error in reply["error"], (line, reply)
        f.write(b'{"cmd": "status"}\n')         # the same connection still works
        f.flush()
        assert json.loads(f.readline())["ok"] is True
    m.check_alive()


def test_refuses_non_root(hosts, tmp_path):
    # A directory nobody may enter, unlike pytest's tmp_path (0700).
    sockdir = tmp_path / "open"
    sockdir.mkdir()
    for d in (sockdir, *sockdir.parents):
        if d == tmp_path.parent.parent.parent:
            break
        d.chmod(d.stat().st_mode | 0o005)
    net, spec, (m, b) = hosts(instances=1, sockdir=sockdir)
    mode = os.stat(m.sock).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    nobody = ("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
    r = m.ctl("status", prefix=nobody)
    assert r.returncode == 2 and "Permission denied" in r.stderr      # the file mode
    # With the file opened up, SO_PEERCRED still refuses a non-root peer.
    os.chmod(m.sock, 0o666)
    r = m.ctl("status", prefix=nobody)
    assert r.returncode == 1 and "root only" in r.stderr, r
    assert m.ctl("status").returncode == 0
    # SO_PEERCRED is checked on accept: a non-root peer that sends nothing
    # is answered and hung up on, not left holding a connection.
    r = subprocess.run([*nobody, sys.executable, child("unix_idle_peer"), m.sock],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "root only" in r.stdout, r


def test_many_clients_at_once(hosts):
    """500 vrrpctl requests at the same moment all get their answer (listen
    backlog, EAGAIN retried by the client); held idle connections over the
    cap get an error reply and the daemon keeps answering once they go."""
    import threading
    from vrrpd.ops.vrrpctl import request
    net, spec, (m, b) = hosts(instances=1)
    results, go = [], threading.Barrier(500)

    def one():
        go.wait()
        try:
            results.append(len(request(m.sock, "status")["instances"]))
        except Exception as e:
            results.append(repr(e))
    threads = [threading.Thread(target=one) for _ in range(500)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [r for r in results if r != 1]
    assert not failed, (len(failed), failed[:3])
    held = []
    for _ in range(80):
        s = socket.socket(socket.AF_UNIX)
        s.connect(m.sock)
        held.append(s)
    s = held[-1]
    s.settimeout(5)
    assert b"too many clients" in s.recv(4096)
    for s in held:
        s.close()
    assert m.ctl("status").returncode == 0
    m.check_alive()


def test_idle_client_is_hung_up_on(tmp_path, monkeypatch, aio):
    """A client that connects and sends nothing loses its connection after
    IDLE_TIMEOUT (the server in-process, on both loops)."""
    import asyncio
    from vrrpd.ops import control

    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.2)
    path = str(tmp_path / "c.sock")

    async def main():
        server = control.ControlServer(path, {"status": lambda: "up"})
        await server.start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            t = asyncio.get_running_loop().time()
            assert await asyncio.wait_for(reader.read(), 5) == b""      # EOF: hung up on
            assert asyncio.get_running_loop().time() - t < 2
            writer.close()
            reader, writer = await asyncio.open_unix_connection(path)  # others still served
            writer.write(b'{"cmd": "status"}\n')
            assert json.loads(await reader.readline()) == {"ok": True, "result": "up"}
            writer.close()
        finally:
            await server.close()
    aio(main())
