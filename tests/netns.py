"""Test hosts in network namespaces: vrrpd.lab.net with the tests' own prefix.

Every namespace a test makes is named vt<pid>...; conftest checks none is left.
"""
import os

from vrrpd.lab import net as labnet
from vrrpd.lab.net import Lan as _Lan, P2P as _P2P, Netns, sh, wait_for  # noqa: F401

PREFIX = "vt"


def new_name(tag: str) -> str:
    return labnet.new_name(tag, PREFIX)


def Lan(*args, **kw):
    kw.setdefault("prefix", PREFIX)
    return _Lan(*args, **kw)


def P2P(*args, **kw):
    kw.setdefault("prefix", PREFIX)
    return _P2P(*args, **kw)


def our_namespaces() -> set[str]:
    return labnet.namespaces(PREFIX + str(os.getpid() % 10000))


def veth_host(ns: Netns, address: str | None = "192.0.2.10/24") -> Netns:
    """A lone host: eth0 (with `address`) wired to eth1 inside the same namespace, both up."""
    ns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    for dev in ("eth0", "eth1"):
        ns.run("ip", "link", "set", dev, "up")
    if address:
        ns.run("ip", "addr", "add", address, "dev", "eth0")
    return ns
