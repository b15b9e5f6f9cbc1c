"""Reload (vrrpctl reload / SIGHUP) on running daemons in namespaces.

The wire is the oracle for "no advert gap": a raw AF_PACKET capture in the
backup's namespace stamps every advert with the kernel's receive time
(SO_TIMESTAMPNS); the notify fifos are the oracle for "no transition".
"""
from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from advert_capture import Capture, max_gaps, stall_lengths_ms
from daemons import vips_on
from netns import wait_for
from daemons import VRRPCTL, reconfigure, two_hosts
from vrrpd.ops.vrrpctl import request
from vrrpd.lab.conf import LabSpec, host_config, vip

pytestmark = [pytest.mark.netns]

def test_reload_1000_instances_changes_only_one(lan, tmp_path):
    n = 1000
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=n)
    try:
        # VRIDs by NIC (labconf: 255 per NIC); the test also sees the 4 NICs.
        assert spec.nics == 4
        cap = Capture(net.hosts[1], 5.5)
        time.sleep(2.5)
        t_reload = time.monotonic()
        wall_reload = time.time()       # SO_TIMESTAMPNS is wall-clock time
        text = host_config(spec, 0, priority=200).replace(
            "vrrp_instance VI_5 {\n    state BACKUP\n    interface eth0\n    virtual_router_id 6\n"
            "    priority 200",
            "vrrp_instance VI_5 {\n    state BACKUP\n    interface eth0\n    virtual_router_id 6\n"
            "    priority 150")
        assert text.count("priority 150") == 1
        reconfigure(m, text)
        # vrrpctl's own code, in this process: starting a Python interpreter
        # for the client costs enough CPU on a small machine to delay the
        # daemons' adverts by itself, which is not the reload's cost.
        r = request(m.sock, "reload")
        wall_done = time.time()
        assert r["ok"], r
        assert r["kept"] == n and r["changed"] == ["VI_5"]
        assert r["replaced"] == r["added"] == r["removed"] == []
        packets = cap.packets()

        shown = m.ctl_json("show", "VI_5")
        assert shown["base_priority"] == shown["effective_priority"] == 150
        assert shown["state"] == "MASTER"
        # The wire: VI_5 now advertises 150, every other instance still 200.
        master_ips = {net.host_ip(0, 4, nic) for nic in range(spec.nics)}
        prios = {(p[1], p[3]): p[4] for p in packets if p[2] in master_ips}
        assert len(prios) == n
        assert sorted(prios.values()).count(150) == 1

        # No transition or notify line anywhere since the reload.
        for d in (m, b):
            assert [e for e in d.fifo.events(t_reload)] == []
        # Gaps in the 2 s before the reload (the machine's own jitter: on an idle
        # machine adverts are advert_int apart) and from the reload until 1 s
        # after it; the reload must add no more than 5 ms to that.
        # Both charged less the machine's own CPU stalls (advert_capture.charged_ms).
        due_s = spec.advert_int - 0.005
        before = max_gaps([p for p in packets if wall_reload - 2.0 <= p[0] < wall_reload],
                          master_ips, stalls=cap.stalls, due_s=due_s)
        ends = {}
        during = max_gaps([p for p in packets if wall_reload <= p[0] < wall_done + 1.0], master_ips,
                          ends, stalls=cap.stalls, due_s=due_s)
        assert len(before) == len(during) == n
        base, worst = max(before.values()), max(during.values())
        at = ends[max(during, key=during.get)] - wall_reload
        print(f"largest advert gap over {n} instances: {worst * 1000:.1f} ms around the reload "
              f"(ending {at * 1000:.0f} ms after it began; the reload took "
              f"{(wall_done - wall_reload) * 1000:.0f} ms), {base * 1000:.1f} ms in the 2 s "
              f"before; CPU stalls (ms): {stall_lengths_ms(cap.stalls)}")
        # The gaps on the wire include the machine's own jitter (timer
        # granularity, the capture's NAPI thread on shared cores), so the bound
        # is over the 2 s before: the reload (parse in an exec'd reader, the
        # swap in slices) may add at most 5 ms to that baseline.
        top = sorted(((g, ends[k] - wall_reload) for k, g in during.items()), reverse=True)[:5]
        print("  largest gaps (ms, ending at ms after the reload began):",
              [(round(g * 1000, 1), round(e * 1000)) for g, e in top])
        assert worst <= max(spec.advert_int, base) + 0.005, top
    finally:
        m.stop()
        b.stop()


def test_broken_config_kept_then_add_and_remove(lan, tmp_path):
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=3)
    try:
        good = host_config(spec, 0, priority=200)
        # A broken file: the daemon keeps running the old configuration.
        reconfigure(m, good.replace("virtual_router_id 2", "virtual_router_id 300"))
        r = m.ctl("reload")
        assert r.returncode == 1 and "virtual_router_id" in r.stdout and "rejected" in r.stdout
        t_hup = time.monotonic()
        m.signal(signal.SIGHUP)
        wait_for(lambda: m.log_tail(400).count("reload rejected") >= 2, 10,
                 what="SIGHUP's rejection in the log")
        st = m.ctl_json("status")
        assert [v["state"] for v in st["instances"]] == ["MASTER"] * 3
        assert m.ctl_json("stats")["reload_failures"] == 2
        assert m.fifo.events(t_hup) == [] and b.fifo.events(t_hup) == []

        # VI_2 removed, VI_3 added (same spec, one more instance; drop VI_2's block).
        spec4 = LabSpec(**{**spec.__dict__, "instances": 4})
        blocks = host_config(spec4, 0, priority=200).split("vrrp_instance ")
        new = "vrrp_instance ".join(x for x in blocks if not x.startswith("VI_2 "))
        cap = Capture(net.hosts[1], 1.5)
        t0 = time.monotonic()
        reconfigure(m, new)
        r = m.ctl_json("reload")
        assert r["ok"] and r["removed"] == ["VI_2"] and r["added"] == ["VI_3"] and r["kept"] == 2
        m.wait_state("VI_3", "MASTER", timeout=5)
        b.wait_state("VI_2", "MASTER", timeout=5)       # the peer takes over what we gave up
        packets = cap.packets()
        vi2 = [p for p in packets if p[2] == net.host_ip(0) and p[3] == 3]
        assert vi2 and vi2[-1][4] == 0, vi2[-3:]        # its last advert: priority 0
        wait_for(lambda: vip(spec4, 2) + "/32" not in vips_on(net.hosts[0]), 5,
                 what="VI_2's VIP gone")
        assert vip(spec4, 3) + "/32" in vips_on(net.hosts[0])
        # VI_0 and VI_1 saw nothing.
        assert [e for e in m.fifo.events(t0) if e[2] in ("VI_0", "VI_1")] == [], \
            (b.fifo.events(t0), m.log_tail(40), b.log_tail(30))
        assert [v["name"] for v in m.ctl_json("status")["instances"]] == ["VI_0", "VI_1", "VI_3"]
    finally:
        m.stop()
        b.stop()




def _routes(ns) -> str:
    return ns.run("ip", "-o", "route", "show", "proto", "keepalived").stdout


def _rules(ns) -> str:
    return ns.run("ip", "rule", "show").stdout


def test_vip_change_keeps_state_and_removed_instance_takes_its_routes(lan, tmp_path):
    """A reload gives VI_1 a virtual route and rule (kept: the master adds
    them); the next one gives VI_0 a second VIP (kept: no transition or
    notify anywhere, the master adds the address and advertises both) and
    removes VI_1: its route and rule go with its VIP."""
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=2)
    try:
        extra = ("    virtual_routes {\n        198.51.100.0/24 dev eth0\n    }\n"
                 "    virtual_rules {\n        from 198.51.100.0/24 table 100\n    }\n")
        text = host_config(spec, 0, priority=200)
        i = text.index("vrrp_instance VI_1 {\n") + len("vrrp_instance VI_1 {\n")
        reconfigure(m, text[:i] + extra + text[i:])
        r = m.ctl_json("reload")
        assert r["ok"] and r["changed"] == ["VI_1"] and r["kept"] == 2, r
        wait_for(lambda: "198.51.100.0/24" in _routes(net.hosts[0]), 5, what="VI_1's route")
        assert "lookup 100" in _rules(net.hosts[0])

        new_vip = "198.19.200.1"
        texts = []
        for d, prio in ((m, 200), (b, 100)):
            text = host_config(spec, 0 if d is m else 1, priority=prio)
            text = text.replace(f"        {vip(spec, 0)}/32 dev eth0\n",
                                f"        {vip(spec, 0)}/32 dev eth0\n"
                                f"        {new_vip}/32 dev eth0\n")
            blocks = text.split("vrrp_instance ")
            texts.append("vrrp_instance ".join(x for x in blocks if not x.startswith("VI_1 ")))
        cap = Capture(net.hosts[1], 2.5)
        t0 = time.monotonic()
        for d, text in zip((m, b), texts):
            reconfigure(d, text)
        # Both at once: until both run the new list each drops the other's adverts.
        procs = [subprocess.Popen([VRRPCTL, "--socket", d.sock, "reload", "--json"],
                                  stdout=subprocess.PIPE, text=True) for d in (m, b)]
        for p in procs:
            r = json.loads(p.communicate(timeout=60)[0])
            assert r["ok"] and r["changed"] == ["VI_0"] and r["removed"] == ["VI_1"], r
            assert r["replaced"] == r["added"] == [] and r["kept"] == 1
        wait_for(lambda: new_vip + "/32" in vips_on(net.hosts[0]), 5,
                 what="the new VIP on the master")
        wait_for(lambda: "198.51.100.0/24" not in _routes(net.hosts[0]), 5,
                 what="VI_1's route gone")
        assert "lookup 100" not in _rules(net.hosts[0])
        assert vip(spec, 1) + "/32" not in vips_on(net.hosts[0])
        assert vip(spec, 0) + "/32" in vips_on(net.hosts[0])
        assert new_vip + "/32" not in vips_on(net.hosts[1])
        packets = cap.packets()
        vi0 = [p for p in packets if p[2] == net.host_ip(0) and p[3] == 1]
        assert vi0[-1][5] == 2 and vi0[-1][4] == 200, vi0[-3:]     # both addresses, still master
        time.sleep(0.5)         # a takeover would need Master_Down_Interval (0.36 s)
        # VI_0 saw no transition on either host.
        assert [e for e in m.fifo.events(t0) if e[2] == "VI_0"] == []
        assert [e for e in b.fifo.events(t0) if e[2] == "VI_0"] == []
        assert m.ctl_json("show", "VI_0")["state"] == "MASTER"
    finally:
        m.stop()
        b.stop()


def test_advert_int_change_keeps_state(lan, tmp_path):
    """advert_int 0.1 -> 0.3 s for VI_0 on both hosts: kept (keepalived keeps
    the instance), no transition or notify, and on the wire the master's
    adverts come 300 ms apart from then on, still at priority 200."""
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=2)
    try:
        cap = Capture(net.hosts[1], 3.0)
        time.sleep(0.5)
        t0 = time.monotonic()
        wall0 = time.time()
        for d, prio in ((m, 200), (b, 100)):
            text = host_config(spec, 0 if d is m else 1, priority=prio)
            head, vi1, tail = text.partition("vrrp_instance VI_1 {")
            assert head.count("advert_int 0.1") == 1
            reconfigure(d, head.replace("advert_int 0.1", "advert_int 0.3") + vi1 + tail)
        procs = [subprocess.Popen([VRRPCTL, "--socket", d.sock, "reload", "--json"],
                                  stdout=subprocess.PIPE, text=True) for d in (m, b)]
        for p in procs:
            r = json.loads(p.communicate(timeout=60)[0])
            assert r["ok"] and r["changed"] == ["VI_0"] and r["replaced"] == [], r
        packets = cap.packets()
        vi0 = [p[0] for p in packets if p[2] == net.host_ip(0) and p[3] == 1 and p[0] > wall0 + 0.8]
        gaps = sorted(b - a for a, b in zip(vi0, vi0[1:]))
        assert len(gaps) >= 4 and 0.28 <= gaps[len(gaps) // 2] <= 0.32, gaps
        assert all(p[4] == 200 for p in packets if p[2] == net.host_ip(0) and p[3] == 1)
        for d in (m, b):
            assert [e for e in d.fifo.events(t0) if e[2] == "VI_0"] == []
        assert m.ctl_json("show", "VI_0")["state"] == "MASTER"
    finally:
        m.stop()
        b.stop()


def test_moved_instance_shows_its_new_line(lan, tmp_path):
    """A comment block inserted above VI_1: the reload keeps both instances
    unchanged (no transition, no notify) and VI_1 now names its new line."""
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=2)
    try:
        text = host_config(spec, 0, priority=200)

        def line_of(t: str, name: str) -> str:
            return f"{m.conf}:{t.splitlines().index(f'vrrp_instance {name} {{') + 1}"

        before = m.ctl_json("show", "VI_1")
        assert before["defined_at"] == line_of(text, "VI_1")
        moved = text.replace("vrrp_instance VI_1 {", "# a comment block\n#\n\n# more\n"
                             "vrrp_instance VI_1 {")
        t0 = time.monotonic()
        reconfigure(m, moved)
        r = m.ctl_json("reload")
        assert r["ok"] and r["kept"] == 2, r
        assert r["changed"] == r["replaced"] == r["added"] == r["removed"] == []
        assert m.ctl_json("show", "VI_0")["defined_at"] == line_of(moved, "VI_0")
        shown = m.ctl_json("show", "VI_1")
        assert shown["defined_at"] == line_of(moved, "VI_1") != line_of(text, "VI_1")
        assert f"defined_at         {line_of(moved, 'VI_1')}" in m.ctl("show", "VI_1").stdout
        assert shown["state"] == "MASTER" and shown["transitions"] == before["transitions"]
        time.sleep(0.5)         # a takeover would need Master_Down_Interval (0.36 s)
        for d in (m, b):
            assert d.fifo.events(t0) == []
    finally:
        m.stop()
        b.stop()


# Ten seconds or more of reading, under every limit of the reader: each line's
# parameter takes 61 substitution passes.
SLOW = ("".join(f"$D{i}=${{D{i + 1}}}\n" for i in range(60)) + "$D60=x\n"
        "~SEQ(a,1,200000) y $D0\n")
# Hundreds of MB of lines, under every limit of the reader.
BIG = "~SEQ(a,1,450000) x ${a} y ${a}\n"


def _lone(lan, tmp_path, *extra):
    from daemons import OpsDaemon
    spec = LabSpec(instances=1, version=3, advert_int=0.1, notify_fifo="@FIFO@")
    net = lan(hosts=1, nics=spec.nics)
    d = OpsDaemon(net.hosts[0], host_config(spec, 0, priority=200), tmp_path, extra=extra)
    d.start()
    d.wait_all(["VI_0"], "MASTER", timeout=30)
    d.wait_socket()
    return d, host_config(spec, 0, priority=200)


def test_reader_time_limit(lan, tmp_path):
    """A reload whose reader overruns its time limit is rejected with one
    line for vrrpctl; the running configuration stays."""
    d, good = _lone(lan, tmp_path, "--reload-timeout", "0.5")
    try:
        reconfigure(d, good + SLOW)
        t = time.monotonic()
        r = d.ctl("reload")
        took = time.monotonic() - t
        lines = r.stdout.strip().splitlines()
        assert r.returncode == 1 and took < 10, (r, took)
        assert any("longer than 0.5 s" in x for x in lines), r
        assert "Traceback" not in r.stdout + r.stderr and len(lines) == 2, r
        assert d.ctl_json("status")["instances"][0]["state"] == "MASTER"
        assert d.ctl_json("stats")["reload_failures"] == 1
    finally:
        d.stop()


def test_reader_out_of_memory_is_one_line(lan, tmp_path):
    d, good = _lone(lan, tmp_path, "--reload-memory", "120")
    try:
        reconfigure(d, good + BIG)
        r = d.ctl("reload")
        assert r.returncode == 1 and "needs more than 120 MiB" in r.stdout, r
        assert "Traceback" not in r.stdout
        reconfigure(d, good)
        assert d.ctl_json("reload")["ok"]
    finally:
        d.stop()


def test_sigterm_while_a_reload_reads(lan, tmp_path):
    """SIGTERM is honoured at once even while a reload's reader is busy."""
    d, good = _lone(lan, tmp_path)
    try:
        reconfigure(d, good + SLOW)
        d.signal(signal.SIGHUP)
        wait_for(lambda: "reloading configuration" in d.log_tail(50), 5, what="reload started")
        time.sleep(0.3)
        t = time.monotonic()
        d.signal(signal.SIGTERM)
        d.wait_exit(timeout=20)
        took = time.monotonic() - t
        assert took < 1.0, (took, d.log_tail(20))
        assert "Traceback" not in d.log_tail(200)
    finally:
        d.stop()


@pytest.mark.parametrize("busy", [False, True])
def test_stop_signal_resigns_at_once_unless_a_reload_is_under_way(busy):
    """The stop signal's callback (service._on_stop_signal): the masters'
    priority-0 adverts leave in it, before any other turn of the loop, unless
    a reload is under way (whose instances must not start after the resign:
    Daemon.stop resigns after it); either way no reload starts any more and
    the rest of the stop goes on."""
    import asyncio
    from types import SimpleNamespace
    from vrrpd.core.service import _on_stop_signal
    calls: list[str] = []
    daemon = SimpleNamespace(resign=lambda: calls.append("resign"))
    reloader = SimpleNamespace(busy=busy, abort=lambda: calls.append("abort"))
    stop = asyncio.Event()
    _on_stop_signal(daemon, reloader, stop)
    assert calls == (["abort"] if busy else ["abort", "resign"]) and stop.is_set()
