"""What vrrpd keeps per instance (the target: RSS at 10,000 instances <= 60 MiB;
bench/rss.py measures the whole daemon).  Bounds are per instance, from
resident memory or object counts, generous enough that no allocator detail
fails them, tight enough that the per-instance waste each test names does."""
from __future__ import annotations

import pickle
import socket
import subprocess
import sys

from children import child
from vrrpd import engine as E


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_engine_advert_buffers_are_sized_to_the_advert():
    # Each instance's two advert variants get room for their own encoded size,
    # not the largest advert's (255 IPv6 addresses, 4 kB) each.
    n = 4000
    e = E.Engine(n, defer_sends=True)
    socks = [e.add_socket(-2, socket.AF_INET, 10 + k) for k in range(-(-n // 250))]
    src = socket.inet_pton(socket.AF_INET, "192.0.2.10")
    dst = [socket.inet_pton(socket.AF_INET, "224.0.0.18")]
    before = rss_kb()
    for i in range(n):
        vip = socket.inet_pton(socket.AF_INET, f"198.19.{i // 250}.{i % 250 + 1}")
        e.add_instance(sock_id=socks[i // 250], vrid=i % 250 + 1, version=3, priority=100,
                       advert_int_cs=10, src=src, dsts=dst, vips=[vip])
    per_instance = (rss_kb() - before) * 1024 / n
    assert per_instance < 1500, f"{per_instance:.0f} bytes resident per engine instance"
    # Re-encoding (a reload's new address list) still fits the longer advert.
    idx = 0
    more = [socket.inet_pton(socket.AF_INET, f"198.51.100.{k}") for k in range(1, 201)]
    e.set_advert_addrs(idx, more)
    e.set_priority(idx, 150, 0)


def test_daemon_loads_only_the_pyroute2_message_classes():
    # pyroute2's __init__ imports the whole library (megabytes resident; sqlite3
    # through NDB): the daemon imports only its netlink message classes, and
    # the rest of pyroute2 still loads on demand.  Nor the configuration
    # reader's modules: a child reads the configuration.
    subprocess.run([sys.executable, child("daemon_imports")], check=True)


def test_daemon_receives_its_configuration_read_by_a_child(tmp_path, monkeypatch):
    # The daemon's heap never holds the configuration's text, tokens and
    # parse tree: a child reads, resolves and fingerprints it, the daemon
    # unpickles the result in one piece.
    from vrrpd.core import service as daemon
    from vrrpd.core.reload import child as reloadchild
    from vrrpd.config import lexer, load
    from vrrpd.lab.conf import LabSpec, host_config
    from vrrpd.core.plan import build_plan, lean_plan

    conf = tmp_path / "k.conf"
    conf.write_text(host_config(LabSpec(instances=300, version=3, advert_int=0.1), 1))
    expected = build_plan(load(str(conf), config_id="x").config)

    def no_parsing_here(*a, **kw):
        raise AssertionError("the daemon parsed its configuration itself")
    monkeypatch.setattr(lexer, "read", no_parsing_here)
    got = daemon.read_config(str(conf), "x")
    assert not got.errors
    assert got.plan == lean_plan(expected)
    # Kept pickled: the daemon only hands them back to the reload's reader.
    assert isinstance(got.fingerprints, bytes)
    assert pickle.loads(got.fingerprints) == reloadchild.fingerprints(expected, expected.instances)

    conf.write_text("vrrp_instance VI_1 {\n    interface eth0\n    bogus_keyword 1\n}\n")
    bad = daemon.read_config(str(conf), "x")
    monkeypatch.undo()
    assert bad.plan is None
    assert bad.errors == [str(e) for e in load(str(conf), config_id="x").errors]
    assert bad.warnings == [str(w) for w in load(str(conf), config_id="x").warnings]


def test_instances_share_equal_tracking_and_notify_objects(tmp_path):
    # 10,000 instances tracking their interface, without notify scripts:
    # one Track list per interface, one Verdict per value, one empty
    # NotifyScripts, one callback -- not one of each per instance.
    from vrrpd.config import load
    from vrrpd.lab.conf import LabSpec, host_config
    from vrrpd.scripts.reporting import Reporter
    from vrrpd.track.trackers import Trackers

    spec = LabSpec(instances=600, version=3, advert_int=0.1)
    (tmp_path / "k.conf").write_text(host_config(spec, 1))
    cfg = load(str(tmp_path / "k.conf"), config_id="x").config
    seen = []
    t = Trackers(cfg, runner=None, on_verdict=lambda n, v: seen.append((n, v)))
    tis = list(t.instances.values())
    assert len({id(ti.tracks) for ti in tis}) == spec.nics
    assert len({id(ti.verdict) for ti in tis}) == 1
    assert len({id(ti.on_change) for ti in tis}) == 1
    t._update("interface", "eth1", False)       # each instance still reports under its name
    assert sorted(n for n, v in seen if v.fault) == sorted(
        f"VI_{i}" for i in range(255, 510))
    r = Reporter(cfg, runner=None)
    assert len({id(s) for s in r.scripts.values()}) == 1


def lab_plan(tmp_path):
    """The lab's generated config for 600 instances, as the daemon reads it at
    start-up: (LabSpec, config path, plan)."""
    from vrrpd.core import service as daemon
    from vrrpd.lab.conf import LabSpec, host_config

    spec = LabSpec(instances=600, version=3, advert_int=0.1)
    conf = tmp_path / "k.conf"
    conf.write_text(host_config(spec, 1))
    return spec, conf, daemon.read_config(str(conf), "x").plan


def test_words_repeated_in_every_instance_reach_the_daemon_once(tmp_path):
    # "eth0" and "BACKUP" of 10,000 instance blocks: one string each in the
    # daemon (the lexer interns them, pickle then sends each once).
    spec, conf, plan = lab_plan(tmp_path)
    assert len({id(s.interface) for s in plan.instances}) == spec.nics
    assert len({id(s.conf.state) for s in plan.instances}) == 1


def test_instances_configured_alike_share_one_conf_in_the_daemon(tmp_path):
    # The daemon keeps an instance's block without its name, VRID, addresses
    # and position (the spec and the plan's positions have them): 10,000
    # instances that differ only there are one VrrpInstance per interface.
    spec, conf, plan = lab_plan(tmp_path)
    assert len({id(s.conf) for s in plan.instances}) == spec.nics
    assert all(plan.config.instances[s.name] is s.conf for s in plan.instances)
    line = conf.read_text().splitlines().index("vrrp_instance VI_599 {") + 1
    assert plan.where("VI_599") == f"{conf}:{line}"


def test_numbers_repeated_in_every_instance_are_one_object_in_the_daemon(tmp_path):
    # Pickle writes floats and ints by value: unshared, 10,000 instances'
    # advert_int, garp_* delays and the like are 10,000 objects each.
    from dataclasses import dataclass

    from vrrpd.core import service as daemon
    from vrrpd.lab.conf import LabSpec, host_config
    from vrrpd.core.reload.child import share_numbers

    spec = LabSpec(instances=600, version=3, advert_int=0.1)
    conf = tmp_path / "k.conf"
    conf.write_text(host_config(spec, 1))
    plan = daemon.read_config(str(conf), "x").plan
    for name in ("advert_int", "garp_master_delay", "preempt_delay"):
        assert len({id(getattr(s.conf, name)) for s in plan.instances}) == 1, name

    @dataclass(frozen=True)
    class D:
        a: float
        b: object = None
    neg, pos = D(-0.0), D(float("0"))
    share_numbers([neg, pos, D(float("0"), b=(D(float("0")),))])
    assert str(neg.a) == "-0.0" and str(pos.a) == "0.0"
