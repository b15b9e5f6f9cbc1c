"""Strict mode's VIP firewall: traffic to a VIP is dropped while the rule is in place and
flows again after (ping from the peer is the oracle), and the nftables layout equals
the one Debian's keepalived 2.2.7 builds for the same VIPs.  Module code runs inside
the namespace."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

from children import child
from netns import veth_host, wait_for
from vrrpd.config import load
from vrrpd.net.firewall import DEFAULT_TABLE, firewall_for, needs_drop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv/bin/python")
HAVE_KEEPALIVED = shutil.which("keepalived") is not None or os.path.exists("/usr/sbin/keepalived")
pytestmark = pytest.mark.skipif(shutil.which("nft") is None, reason="nftables not installed")

CONF = """
global_defs { vrrp_strict }
vrrp_instance V4 {
    interface eth0
    virtual_router_id 7
    priority 200
    advert_int 1
    virtual_ipaddress { 192.0.2.100/24 }
}
vrrp_instance V6 {
    interface eth0
    virtual_router_id 8
    priority 200
    advert_int 1
    virtual_ipaddress { fe80::8/64
                        2001:db8::200/64 }
}
"""


def _cfg(tmp_path, text=CONF):
    path = tmp_path / "strict.conf"
    path.write_text(text)
    return load(str(path)).config


def test_who_needs_the_drop_rule(tmp_path):
    cfg = _cfg(tmp_path)
    assert all(needs_drop(i) for i in cfg.instances.values())     # strict: accept off
    fw = firewall_for(cfg)
    assert (fw.table, fw.priority, fw.counters) == (DEFAULT_TABLE, -1, False)
    loose = _cfg(tmp_path, CONF.replace("vrrp_strict", ""))
    assert firewall_for(loose) is None                              # accept is the default
    owner = _cfg(tmp_path, CONF.replace("vrrp_strict", "nftables vrrpd\n nftables_counters")
                 .replace("advert_int 1\n    virtual_ipaddress { 192",
                          "advert_int 1\n    no_accept\n    virtual_ipaddress { 192"))
    assert needs_drop(owner.instances["V4"]) and not needs_drop(owner.instances["V6"])
    assert (firewall_for(owner).table, firewall_for(owner).counters) == ("vrrpd", True)


def _pings(ns, addr) -> bool:
    return ns.run("ping", "-c", "1", "-W", "1", addr, check=False).returncode == 0


class Driver:
    def __init__(self, ns, vips):
        self.proc = ns.popen(PY, child("firewall_driver"), *vips, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.next_line("READY True")

    def next_line(self, expect):
        line = self.proc.stdout.readline()
        assert line.startswith(expect), line
        return line

    def step(self, expect):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return self.next_line(expect)


@pytest.mark.netns
def test_drop_rule_blocks_vip_traffic_while_in_place(lan):
    net = lan(hosts=2)
    h0, h1 = net.hosts
    h0.run("ip", "addr", "add", "192.0.2.100/24", "dev", "eth0")
    h0.run("ip", "-6", "addr", "add", "2001:db8::200/64", "dev", "eth0", "nodad")
    h0.run("ip", "-6", "addr", "add", "fe80::8/64", "dev", "eth0", "nodad")
    targets = ["192.0.2.100", "2001:db8::200", "fe80::8%eth0"]
    assert all(_pings(h1, t) for t in targets)
    drv = Driver(h0, ["192.0.2.100", "2001:db8::200", "fe80::8"])
    assert not any(_pings(h1, t) for t in targets)
    assert _pings(h1, "192.0.2.10") and _pings(h1, "2001:db8::10")     # only the VIPs
    drv.step("READY True")                                               # removed
    assert all(_pings(h1, t) for t in targets)
    assert "'removed': 3" in drv.step("DONE True")
    drv.proc.wait(timeout=10)
    assert h0.run("nft", "list", "tables").stdout.strip() == ""


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="keepalived not installed")
def test_ruleset_same_as_keepalived(netns, tmp_path):
    rulesets = {}
    for who in ("keepalived", "vrrpd"):
        ns = veth_host(netns(who[:2]))
        if who == "keepalived":
            conf = str(tmp_path / f"{ns.name}.conf")
            with open(conf, "w") as f:
                f.write(CONF)
            run = tempfile.mkdtemp(dir=tmp_path)
            ns.popen("keepalived", "-n", "-l", "-D", "--vrrp", "-f", conf, "-p", f"{run}/k.pid",
                     "-r", f"{run}/v.pid", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            # Both instances MASTER: every VIP is in the sets.
            wait_for(lambda: "fe80::8" in ns.run("nft", "list", "ruleset").stdout and
                     "192.0.2.100" in ns.run("nft", "list", "ruleset").stdout, 15,
                     what="keepalived's VIPs in the ruleset")
            rulesets[who] = ns.run("nft", "list", "ruleset").stdout
            ns.kill_all()
        else:
            drv = Driver(ns, ["192.0.2.100", "fe80::8", "2001:db8::200"])
            rulesets[who] = ns.run("nft", "list", "ruleset").stdout
            drv.step("READY True")
            drv.step("DONE True")
    assert rulesets["vrrpd"] == rulesets["keepalived"]
