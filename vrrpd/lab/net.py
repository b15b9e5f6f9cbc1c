"""Hosts in network namespaces, for vrrpd-lab and the tests.

Network safety rule: nothing here touches the host's own namespace except
creating/deleting namespaces and the veth pairs moved into them at once.  A LAN is a
bridge inside its own "switch" namespace with one veth per host; every host is a
namespace with eth0 (and more NICs on request).  Addresses come from the documentation ranges
(192.0.2.0/24, 2001:db8::/64) so they can never be mistaken for real ones.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def new_name(tag: str, prefix: str) -> str:
    return f"{prefix}{os.getpid() % 10000}{tag}{uuid.uuid4().hex[:4]}"


class Netns:
    """One namespace; processes started in it are tracked and killed on delete."""

    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []
        sh("ip", "netns", "add", name)
        # No DAD: link-local addresses are usable at once, no 1-2 s tentative wait.
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            self.run("sysctl", "-qw", f"{key}=0")
        self.run("ip", "link", "set", "lo", "up")

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
        return sh(*self.cmd(*args), check=check, **kw)

    def popen(self, *args: str, **kw) -> subprocess.Popen:
        kw.setdefault("start_new_session", True)
        p = subprocess.Popen(self.cmd(*args), **kw)
        self.procs.append(p)
        return p

    def addrs(self, dev: str = "eth0", family: str = "-4") -> list[str]:
        out = self.run("ip", "-o", family, "addr", "show", "dev", dev).stdout
        return [line.split()[3] for line in out.splitlines()]

    def link_local(self, dev: str = "eth0") -> str:
        out = self.run("ip", "-o", "-6", "addr", "show", "dev", dev, "scope", "link").stdout
        return out.split()[3].split("/")[0]

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        self.procs.clear()
        # Anything else still living in the namespace (daemons' children, scripts).
        pids = sh("ip", "netns", "pids", self.name, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def delete(self) -> None:
        self.kill_all()
        sh("ip", "netns", "delete", self.name, check=False)


class Lan:
    """A bridge in a switch namespace plus N host namespaces, each with eth0.

    Host i gets host_ip(i) on each NIC (192.0.2.(10+i)/24 and 2001:db8::(10+i)/64
    on eth0) unless addresses=False.  nics>1 adds eth1.. on further bridges
    (more than 255 VRIDs).
    """

    def __init__(self, hosts: int = 2, nics: int = 1, addresses: bool = True, tag: str = "l",
                 prefix: str = "vt"):
        self.switch = Netns(new_name(tag + "s", prefix))
        self.hosts: list[Netns] = []
        try:
            for n in range(nics):
                br = f"br{n}"
                self.switch.run("ip", "link", "add", br, "type", "bridge",
                                "forward_delay", "0", "mcast_snooping", "0")
                self.switch.run("ip", "link", "set", br, "up")
            for i in range(hosts):
                h = Netns(new_name(f"{tag}{i}", prefix))
                self.hosts.append(h)
                for n in range(nics):
                    dev, peer = f"eth{n}", f"h{i}n{n}"
                    sh("ip", "link", "add", "name", dev, "netns", h.name, "type", "veth",
                       "peer", "name", peer, "netns", self.switch.name)
                    self.switch.run("ip", "link", "set", peer, "master", f"br{n}", "up")
                    h.run("ip", "link", "set", dev, "up")
                    if addresses:
                        h.run("ip", "addr", "add", f"{self.host_ip(i, 4, n)}/24", "dev", dev)
                        h.run("ip", "-6", "addr", "add", f"{self.host_ip(i, 6, n)}/64", "dev", dev)
        except BaseException:
            self.delete()
            raise

    @staticmethod
    def host_ip(i: int, family: int = 4, nic: int = 0) -> str:
        # nic 0 in TEST-NET-1, further NICs in the benchmarking range 198.18.0.0/16
        # (VIPs of generated labs use 198.19.0.0/16).
        if family == 6:
            return f"2001:db8:{nic:x}::{10 + i}"
        return f"192.0.2.{10 + i}" if nic == 0 else f"198.18.{nic}.{10 + i}"

    def delete(self) -> None:
        for h in self.hosts:
            h.delete()
        self.switch.delete()


class P2P:
    """Two host namespaces joined directly by veth pairs, eth<n> to eth<n>: no bridge, and no
    qdisc (a veth has none), so the wire is only the kernel's veth transmit.  Same addresses
    and names as Lan (host_ip); there is no switch namespace."""

    switch = None
    host_ip = staticmethod(Lan.host_ip)

    def __init__(self, nics: int = 1, addresses: bool = True, tag: str = "p", prefix: str = "vt"):
        self.hosts: list[Netns] = []
        try:
            self.hosts = [Netns(new_name(f"{tag}{i}", prefix)) for i in range(2)]
            a, b = self.hosts
            sh("ip", "-n", a.name, "-batch", "-", input="".join(
                f"link add name eth{n} type veth peer name eth{n} netns {b.name}\n"
                for n in range(nics)))
            for i, h in enumerate(self.hosts):
                cmds = [f"link set eth{n} up\n" for n in range(nics)]
                if addresses:
                    cmds += [f"addr add {self.host_ip(i, 4, n)}/24 dev eth{n}\n"
                             f"addr add {self.host_ip(i, 6, n)}/64 dev eth{n}\n"
                             for n in range(nics)]
                sh("ip", "-n", h.name, "-batch", "-", input="".join(cmds))
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        for h in self.hosts:
            h.delete()


def namespaces(prefix: str) -> set[str]:
    """Namespaces whose name starts with prefix (for leak checks and cleanup)."""
    out = sh("ip", "netns", "list", check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith(prefix)}


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Poll predicate until true; used for test orchestration, never for protocol timing asserts."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)

