"""use_vmac: the macvlan, its MAC, sysctls and link-local, compared with what Debian's
keepalived 2.2.7 builds on the same host; ARP for a VIP on it answered from the virtual
MAC (the peer's neighbour table is the oracle); removal and base sysctls restored.

The module code runs inside the namespace (`ip netns exec NS python -c DRIVER`): the
pytest process lives in the host namespace and must never change it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

from children import child
from netns import veth_host, wait_for
from vrrpd.config import load
from vrrpd.net.vmac import VmacSpec, advert_interface, eui64_link_local, vip_interface, virtual_mac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv/bin/python")
HAVE_KEEPALIVED = shutil.which("keepalived") is not None or os.path.exists("/usr/sbin/keepalived")

CONF = """
vrrp_instance V4 {
    interface eth0
    virtual_router_id 7
    use_vmac
    virtual_ipaddress { 192.0.2.100/24 }
}
vrrp_instance V6 {
    interface eth0
    virtual_router_id 8
    use_vmac
    virtual_ipaddress { fe80::8/64
                        2001:db8::200/64 }
}
"""


def _conf(tmp_path, text=CONF):
    path = tmp_path / "vmac.conf"
    path.write_text(text)
    return str(path)


def test_virtual_mac_rfc5798():
    assert virtual_mac(7, 4) == bytes.fromhex("00005e000107")
    assert virtual_mac(255, 6) == bytes.fromhex("00005e0002ff")


def test_eui64_link_local_matches_kernel():
    # The kernel's own link-local for this MAC, read off a veth.
    assert eui64_link_local(bytes.fromhex("02ed90f97482")) == "fe80::ed:90ff:fef9:7482"


def test_spec_and_placement(tmp_path):
    cfg = load(_conf(tmp_path, CONF.replace("use_vmac\n    virtual_ipaddress { 192",
                                            "use_vmac vip7\n    vmac_xmit_base\n"
                                            "    virtual_ipaddress_excluded { 2001:db8::7 }\n"
                                            "    virtual_ipaddress { 192"))).config
    v4, v6 = cfg.instances["V4"], cfg.instances["V6"]
    s4 = VmacSpec.for_instance(v4, cfg.global_defs)
    s6 = VmacSpec.for_instance(v6, cfg.global_defs)
    assert (s4.name, s4.mac, s4.family, s4.ipv6) == ("vip7", virtual_mac(7, 4), 4, True)
    assert (s6.name, s6.mac, s6.family, s6.ipv6) == ("vrrp.8", virtual_mac(8, 6), 6, True)
    assert vip_interface(v4, v4.virtual_ipaddress[0], False, s4.name) == "vip7"
    assert vip_interface(v4, v4.virtual_ipaddress_excluded[0], True, s4.name) == "eth0"
    assert advert_interface(v4, s4.name) == "eth0"          # vmac_xmit_base
    assert advert_interface(v6, s6.name) == "vrrp.8"
    plain = load(_conf(tmp_path, CONF.replace("use_vmac", ""))).config
    assert VmacSpec.for_instance(plain.instances["V4"], plain.global_defs) is None


def _sysctl(ns, fam, dev, key):
    r = ns.run("cat", f"/proc/sys/net/{fam}/conf/{dev}/{key}", check=False)
    return r.stdout.strip() if r.returncode == 0 else None


def fingerprint(ns) -> dict:
    """What a vmac looks like from outside: link attributes, sysctls, IPv6 link-locals."""
    links = {ln["ifname"]: ln for ln in json.loads(ns.run("ip", "-d", "-j", "link", "show").stdout)}
    out = {}
    for dev in ("vrrp.7", "vrrp.8"):
        link = links.get(dev)
        if link is None:
            out[dev] = None
            continue
        info = link.get("linkinfo", {})
        addrs = json.loads(ns.run("ip", "-j", "-6", "addr", "show", "dev", dev).stdout)
        out[dev] = dict(
            kind=info.get("info_kind"), mode=info.get("info_data", {}).get("mode"),
            mac=link["address"], up="UP" in link["flags"], lower=link.get("link"),
            addrgenmode=link.get("inet6_addr_gen_mode"),
            ipv4={k: _sysctl(ns, "ipv4", dev, k) for k in
                  ("arp_ignore", "accept_local", "rp_filter", "promote_secondaries")},
            disable_ipv6=_sysctl(ns, "ipv6", dev, "disable_ipv6"),
            link_local=sorted(a["local"] for i in addrs for a in i.get("addr_info", [])
                              if a.get("scope") == "link" and a["local"] != "fe80::8"))
    out["base"] = {k: _sysctl(ns, "ipv4", "eth0", k) for k in ("arp_ignore", "arp_filter")}
    return out


def arp_replies(ns, target: str) -> list[str]:
    """MACs of every ARP reply to one who-has for target (scapy, from ns's eth0)."""
    return ns.run(PY, child("arp_who_has"), target, "1").stdout.split()


class Driver:
    def __init__(self, ns, conf_path):
        self.proc = ns.popen(PY, child("vmac_driver"), conf_path, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        self.ready = self.proc.stdout.readline()
        assert self.ready.startswith("READY"), self.ready

    def finish(self) -> str:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        done = self.proc.stdout.readline()
        self.proc.wait(timeout=10)
        return done


@pytest.mark.netns
def test_vmac_lifecycle_and_arp_from_virtual_mac(lan, tmp_path):
    net = lan(hosts=2)
    h0, h1 = net.hosts
    base_link_local = h0.link_local("eth0")
    drv = Driver(h0, _conf(tmp_path))
    assert "['vrrp.7', 'vrrp.8']" in drv.ready and "'created': 2" in drv.ready
    fp = fingerprint(h0)
    for dev, mac in (("vrrp.7", "00:00:5e:00:01:07"), ("vrrp.8", "00:00:5e:00:02:08")):
        assert fp[dev]["kind"] == "macvlan" and fp[dev]["mode"] == "private"
        assert fp[dev]["mac"] == mac and fp[dev]["up"] and fp[dev]["lower"] == "eth0"
        assert fp[dev]["addrgenmode"] == "none"
    assert fp["vrrp.7"]["ipv4"] == dict(arp_ignore="1", accept_local="1", rp_filter="0",
                                        promote_secondaries="1")
    assert fp["vrrp.7"]["disable_ipv6"] == "1" and fp["vrrp.7"]["link_local"] == []
    assert fp["vrrp.8"]["link_local"] == [base_link_local]   # RFC 5798 7.4: never from the VMAC
    assert fp["base"] == dict(arp_ignore="1", arp_filter="1")
    # ARP for a VIP on the vmac is answered from the virtual MAC only: eth0 keeps quiet
    # (arp_ignore=1).  scapy on the peer sees every reply.
    h0.run("ip", "addr", "add", "192.0.2.100/24", "dev", "vrrp.7")
    assert arp_replies(h1, "192.0.2.100") == ["00:00:5e:00:01:07"]
    assert "'removed': 2" in drv.finish()
    after = fingerprint(h0)
    assert after["vrrp.7"] is None and after["vrrp.8"] is None
    assert after["base"] == dict(arp_ignore="0", arp_filter="0")     # put back


@pytest.mark.netns
def test_vmac_adopts_or_replaces_leftovers(netns, tmp_path):
    ns = veth_host(netns(), address=None)
    # vrrp.7 left with the wrong MAC (replaced); vrrp.8 a non-macvlan (never touched).
    ns.run("ip", "link", "add", "link", "eth0", "vrrp.7", "address", "02:00:00:00:00:07",
           "type", "macvlan", "mode", "private")
    ns.run("ip", "link", "add", "vrrp.8", "type", "veth", "peer", "name", "x8")
    drv = Driver(ns, _conf(tmp_path))
    assert "['vrrp.7']" in drv.ready and "'failed': 1" in drv.ready
    assert fingerprint(ns)["vrrp.7"]["mac"] == "00:00:5e:00:01:07"
    drv.finish()
    assert ns.run("ip", "link", "show", "vrrp.8", check=False).returncode == 0


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="keepalived not installed")
def test_vmac_same_as_keepalived(netns, tmp_path):
    """Both daemons build the vmacs for the same config on the same kind of host."""
    prints = {}
    for who in ("keepalived", "vrrpd"):
        ns = veth_host(netns(who[:2]))
        conf = str(tmp_path / f"{ns.name}.conf")
        with open(conf, "w") as f:
            f.write(CONF)
        if who == "keepalived":
            run = tempfile.mkdtemp(dir=tmp_path)
            ns.popen("keepalived", "-n", "-l", "-D", "--vrrp", "-f", conf,
                     "-p", f"{run}/k.pid", "-r", f"{run}/v.pid",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: all(fingerprint(ns)[d] and fingerprint(ns)[d]["up"]
                                 for d in ("vrrp.7", "vrrp.8")), 10, what="keepalived's vmacs")
            prints[who] = fingerprint(ns)
            ns.kill_all()
        else:
            drv = Driver(ns, conf)
            prints[who] = fingerprint(ns)
            drv.finish()
    for p in prints.values():       # the namespaces' own link-locals differ
        p["vrrp.8"]["link_local"] = len(p["vrrp.8"]["link_local"])
    # Deliberate difference: keepalived leaves arp_ignore=0 on IPv6 vmacs, which then
    # answer ARP for the host's IPv4 addresses (test_vmac_lifecycle... shows we do not).
    assert prints["keepalived"]["vrrp.8"]["ipv4"]["arp_ignore"] == "0"
    prints["keepalived"]["vrrp.8"]["ipv4"]["arp_ignore"] = "1"
    assert prints["vrrpd"] == prints["keepalived"]


SAME_VRID = """
vrrp_instance {first} {{
    interface eth0
    virtual_router_id 7
    use_vmac
    virtual_ipaddress {{ {a} }}
}}
vrrp_instance {second} {{
    interface eth0
    virtual_router_id 7
    use_vmac
    virtual_ipaddress {{ {b} }}
}}
"""


def _same_vrid(v6_first: bool) -> str:
    v4, v6 = ("V4", "192.0.2.100/32"), ("V6", "2001:db8::100/128")
    (first, a), (second, b) = (v6, v4) if v6_first else (v4, v6)
    return SAME_VRID.format(first=first, a=a, second=second, b=b)


@pytest.mark.netns
@pytest.mark.keepalived
@pytest.mark.skipif(not HAVE_KEEPALIVED, reason="needs keepalived")
@pytest.mark.parametrize("v6_first", [False, True], ids=["v4-first", "v6-first"])
def test_same_vrid_in_both_families_gets_keepalived_s_vmac_names(netns, tmp_path, v6_first):
    """One VRID in both families on one interface: two vmacs, named as keepalived names them."""
    from vrrpd.core.plan import build_plan
    conf = str(tmp_path / "same.conf")
    with open(conf, "w") as f:
        f.write(_same_vrid(v6_first))
    ours = {s.name: s.vmac.name for s in build_plan(load(conf).config).instances}
    assert len(set(ours.values())) == 2
    ns = veth_host(netns("kv"))
    run = tempfile.mkdtemp(dir=tmp_path)
    ns.popen("keepalived", "-n", "-l", "--vrrp", "-f", conf, "-p", f"{run}/k.pid",
             "-r", f"{run}/v.pid", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mac_family = {"00:00:5e:00:01:07": "V4", "00:00:5e:00:02:07": "V6"}

    def theirs():
        links = json.loads(ns.run("ip", "-j", "link", "show").stdout)
        return {mac_family[ln["address"]]: ln["ifname"] for ln in links
                if ln["address"] in mac_family}

    try:
        wait_for(lambda: len(theirs()) == 2, 10, what="keepalived's two vmacs")
        assert ours == theirs()
    finally:
        ns.kill_all()
