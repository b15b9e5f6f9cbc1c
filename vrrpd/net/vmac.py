"""use_vmac: a macvlan carrying the VRRP virtual MAC (RFC 5798 7.3), the keepalived way.

What keepalived 2.2.7 does (vrrp_vmac.c, vrrp_if_config.c; checked in a namespace):
- a macvlan in mode private named `<vmac_prefix>.<VRID>` (or the use_vmac NAME) on the
  base interface, MAC 00:00:5e:00:01:VRID (IPv4) / 00:00:5e:00:02:VRID (IPv6);
- IPv6 addr_gen_mode none before it goes up: no link-local from the virtual MAC, which
  a backup router would then also own (RFC 5798 7.4);
- IPv4 instances: on the vmac arp_ignore=1 (answer ARP only for its own addresses),
  accept_local=1 (hear the other routers' adverts sourced from an address we hold),
  rp_filter=0 (receive while it has no address), promote_secondaries=1; on the base
  interface arp_ignore=1 and arp_filter=1 so only the vmac answers for the VIPs.  IPv6
  is disabled on the vmac unless the instance has IPv6 excluded addresses;
- IPv6 instances: (we also set arp_ignore=1, see create()); the vmac gets a link-local
  /64 as advert source: the configured source address, else the base interface's
  link-local, else EUI-64 of the base MAC.
- shutdown deletes the vmac.  keepalived 2.2.7 leaves the base's arp_ignore/arp_filter
  at 1; we put back what was there once the last vmac on that base is gone.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from vrrpd.net import netlink as nl
from vrrpd.config.model import GlobalDefs, VirtualAddress, VrrpInstance
from vrrpd.net.links import Link
from vrrpd.net.nlbatch import IFINFOMSG, Requester, encode

log = logging.getLogger("vrrpd.net.vmac")

MACVLAN_MODE_PRIVATE = 1
IN6_ADDR_GEN_MODE_NONE = 1
VMAC_SYSCTLS = {"arp_ignore": 1, "accept_local": 1, "rp_filter": 0, "promote_secondaries": 1}
BASE_SYSCTLS = {"arp_ignore": 1, "arp_filter": 1}
SYSCTL_ROOT = "/proc/sys/net"


class VmacError(Exception):
    pass


def virtual_mac(vrid: int, family: int) -> bytes:
    """RFC 5798 7.3: 00-00-5E-00-01-{VRID} for IPv4, 00-00-5E-00-02-{VRID} for IPv6."""
    return bytes((0, 0, 0x5E, 0, 2 if family == 6 else 1, vrid))


def eui64_link_local(mac: bytes) -> str:
    """fe80::/64 with the modified EUI-64 interface identifier of `mac` (RFC 4291 2.5.1)."""
    iid = bytes((mac[0] ^ 0x02, mac[1], mac[2], 0xFF, 0xFE, mac[3], mac[4], mac[5]))
    return str(ipaddress.IPv6Address(b"\xfe\x80" + bytes(6) + iid))


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True)
class VmacSpec:
    name: str
    base: str                   # the instance's `interface`
    vrid: int
    family: int                 # 4 | 6
    mac: bytes
    ipv6: bool                  # keep IPv6 on the vmac (IPv6 instance or IPv6 excluded VIPs)
    source: str | None = None   # configured IPv6 advert source (mcast_src_ip/unicast_src_ip)

    @classmethod
    def for_instance(cls, inst: VrrpInstance, g: GlobalDefs,
                     taken: set[str] | frozenset[str] = frozenset()) -> "VmacSpec | None":
        """taken: vmac names of the instances configured before this one."""
        if not inst.use_vmac or inst.interface is None:
            return None
        mac = bytes.fromhex(inst.vmac_mac.replace(":", "")) if inst.vmac_mac \
            else virtual_mac(inst.virtual_router_id, inst.family)
        src = inst.source_address
        name = inst.vmac_name or f"{g.vmac_prefix}.{inst.virtual_router_id}"
        if not inst.vmac_name and name in taken:
            # The same VRID in both families: keepalived 2.2.7 (seen on the
            # binary) names the later one vrrp6.VRID if IPv6, vrrp1.VRID if IPv4.
            name = f"{g.vmac_prefix}{6 if inst.family == 6 else 1}.{inst.virtual_router_id}"
        return cls(name=name,
                   base=inst.interface, vrid=inst.virtual_router_id, family=inst.family,
                   mac=mac,
                   ipv6=inst.family == 6
                   or any(v.family == 6 for v in inst.virtual_ipaddress_excluded),
                   source=str(src) if src is not None and src.version == 6 else None)


def vip_interface(inst: VrrpInstance, vip: VirtualAddress, excluded: bool,
                  vmac_name: str | None) -> str | None:
    """Where keepalived puts an address: its own `dev`, else the vmac for virtual_ipaddress
    (and for excluded ones marked use_vmac), else the instance's interface."""
    if vip.dev:
        return vip.dev
    if vmac_name and (not excluded or vip.use_vmac):
        return vmac_name
    return inst.interface


def advert_interface(inst: VrrpInstance, vmac_name: str | None) -> str | None:
    """Adverts leave from the vmac (source MAC = virtual MAC) unless vmac_xmit_base."""
    return vmac_name if vmac_name and not inst.vmac_xmit_base else inst.interface


@dataclass
class Vmac:
    spec: VmacSpec
    index: int
    base_index: int
    link_local: str | None = None     # IPv6 instances: the advert source on the vmac


def _sysctl_path(family: int, ifname: str, key: str) -> str:
    return f"{SYSCTL_ROOT}/{'ipv6' if family == 6 else 'ipv4'}/conf/{ifname}/{key}"


def read_sysctl(family: int, ifname: str, key: str) -> int | None:
    try:
        with open(_sysctl_path(family, ifname, key)) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def write_sysctl(family: int, ifname: str, key: str, value: int) -> bool:
    try:
        with open(_sysctl_path(family, ifname, key), "w") as f:
            f.write(str(value))
        return True
    except OSError as e:
        log.warning("sysctl net.%s.conf.%s.%s=%d failed: %s",
                    "ipv6" if family == 6 else "ipv4", ifname, key, value, e.strerror)
        return False


class VmacManager:
    """Creates/removes vmacs and keeps the base interfaces' sysctls, reference-counted."""

    def __init__(self, requester: Requester | None = None):
        self._nl = requester or Requester()
        self._own_requester = requester is None
        self.vmacs: dict[str, Vmac] = {}                     # name -> Vmac
        # base index -> (name, saved sysctls, vmacs on it)
        self._base_saved: dict[int, tuple[str, dict[str, int | None], int]] = {}
        self.stats = dict(created=0, reused=0, removed=0, failed=0)

    async def create(self, spec: VmacSpec, base: Link) -> Vmac:
        """Make (or adopt) the vmac, configure it, bring it up.  Raises VmacError."""
        try:
            return await self._create(spec, base)
        except VmacError:
            self.stats["failed"] += 1
            raise

    async def _create(self, spec: VmacSpec, base: Link) -> Vmac:
        old = await self._get(spec.name)
        if old is not None:
            kind, index, mac, link = old
            if kind != "macvlan":
                raise VmacError(f"{spec.name} exists and is not a macvlan; not touching it")
            if mac == spec.mac and link == base.index:
                self.stats["reused"] += 1
            else:
                # A vmac left by an earlier run for another base/MAC (keepalived does the same).
                log.info("removing stale vmac %s (MAC %s on ifindex %s)", spec.name,
                         _mac_text(mac or b""), link)
                await self._check(self._link_msg(nl.RTM_DELLINK, index),
                                  f"delete stale {spec.name}")
                old = None
        if old is None:
            m = ifinfmsg()
            m["family"] = socket.AF_UNSPEC
            m["attrs"] = [("IFLA_IFNAME", spec.name), ("IFLA_LINK", base.index),
                          ("IFLA_ADDRESS", _mac_text(spec.mac)),
                          ("IFLA_LINKINFO", {"attrs": [
                              ("IFLA_INFO_KIND", "macvlan"),
                              ("IFLA_INFO_DATA", {"attrs": [
                                  ("IFLA_MACVLAN_MODE", MACVLAN_MODE_PRIVATE)]})]})]
            await self._check(encode(m, nl.RTM_NEWLINK, nl.NLM_F_CREATE | nl.NLM_F_EXCL),
                              f"create {spec.name} on {base.name}")
            self.stats["created"] += 1
            got = await self._get(spec.name)
            if got is None:
                raise VmacError(f"{spec.name} vanished right after creation")
            index = got[1]
        vmac = Vmac(spec, index, base.index)
        self.vmacs[spec.name] = vmac
        # Before up: otherwise the kernel already made a link-local from the virtual MAC.
        write_sysctl(6, spec.name, "addr_gen_mode", IN6_ADDR_GEN_MODE_NONE)
        if spec.family == 4:
            for key, value in VMAC_SYSCTLS.items():
                write_sysctl(4, spec.name, key, value)
            self._hold_base(base)
        else:
            # keepalived leaves arp_ignore=0 here, so an IPv6 vmac answers ARP for every
            # IPv4 address of the host with its 00:00:5e:00:02:XX MAC.
            write_sysctl(4, spec.name, "arp_ignore", 1)
        if not spec.ipv6:
            write_sysctl(6, spec.name, "disable_ipv6", 1)
        if spec.family == 6:
            vmac.link_local = (spec.source or base.ipv6_link_local()
                               or eui64_link_local(base.mac or bytes(6)))
            code = await self._add_link_local(index, vmac.link_local)
            if code not in (0, errno.EEXIST):
                log.warning("adding link-local %s to %s failed: %s", vmac.link_local, spec.name,
                            os.strerror(code))
        up = self._link_msg(nl.RTM_NEWLINK, index, flags=nl.IFF_UP)
        await self._check(up, f"set {spec.name} up")
        log.info("vmac %s (%s) up on %s", spec.name, _mac_text(spec.mac), base.name)
        return vmac

    async def remove(self, name: str) -> bool:
        vmac = self.vmacs.pop(name, None)
        if vmac is None:
            return False
        if vmac.spec.family == 4:
            self._release_base(vmac.base_index)
        code = (await self._nl.errnos([self._link_msg(nl.RTM_DELLINK, vmac.index)]))[0]
        if code in (0, errno.ENODEV):
            self.stats["removed"] += 1
            return True
        self.stats["failed"] += 1
        log.warning("removing vmac %s failed: %s", name, os.strerror(code))
        return False

    async def close(self) -> None:
        """Shutdown: delete every vmac we manage, restore the base interfaces."""
        for name in list(self.vmacs):
            await self.remove(name)
        if self._own_requester:
            self._nl.close()

    # -- base interface sysctls ------------------------------------------------------
    def _hold_base(self, base: Link) -> None:
        held = self._base_saved.get(base.index)
        if held is not None:
            self._base_saved[base.index] = (held[0], held[1], held[2] + 1)
            return
        saved = {k: read_sysctl(4, base.name, k) for k in BASE_SYSCTLS}
        for key, value in BASE_SYSCTLS.items():
            if saved[key] != value:
                write_sysctl(4, base.name, key, value)
        self._base_saved[base.index] = (base.name, saved, 1)

    def _release_base(self, index: int) -> None:
        entry = self._base_saved.pop(index, None)
        if entry is None:
            return
        name, saved, refs = entry
        if refs > 1:
            self._base_saved[index] = (name, saved, refs - 1)
            return
        for key, value in saved.items():
            if value is not None and value != BASE_SYSCTLS[key]:
                write_sysctl(4, name, key, value)

    # -- netlink ---------------------------------------------------------------------
    @staticmethod
    def _link_msg(mtype: int, index: int, flags: int | None = None) -> bytearray:
        m = ifinfmsg()
        m["family"] = socket.AF_UNSPEC
        m["index"] = index
        if flags is not None:
            m["flags"] = flags
            m["change"] = flags
        return encode(m, mtype, 0)

    async def _check(self, msg: bytearray, what: str) -> None:
        code = (await self._nl.errnos([msg]))[0]
        if code:
            raise VmacError(f"{what}: {os.strerror(code)}")

    async def _get(self, name: str):
        """(kind, index, mac, lower ifindex) of the link called `name`, or None."""
        m = ifinfmsg()
        m["family"] = socket.AF_UNSPEC
        m["attrs"] = [("IFLA_IFNAME", name)]
        code, replies = (await self._nl.request([encode(m, nl.RTM_GETLINK, 0)]))[0]
        if code in (errno.ENODEV, errno.ENOENT) or not replies:
            return None
        if code:
            raise VmacError(f"looking up {name}: {os.strerror(code)}")
        msg = ifinfmsg(replies[0])
        msg.decode()
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        mac = msg.get_attr("IFLA_ADDRESS")
        return (kind, IFINFOMSG.unpack_from(replies[0], nl.NLMSGHDR.size)[2],
                bytes.fromhex(mac.replace(":", "")) if mac else None, msg.get_attr("IFLA_LINK"))

    async def _add_link_local(self, index: int, address: str) -> int:
        m = ifaddrmsg()
        m["family"] = socket.AF_INET6
        m["prefixlen"] = 64
        m["index"] = index
        m["scope"] = nl.RT_SCOPE_LINK
        # As keepalived: no DAD (the base owns the same address) and deprecated, so the
        # kernel never picks it as a source for anything but our adverts.
        m["flags"] = nl.IFA_F_NODAD
        m["attrs"] = [("IFA_LOCAL", address), ("IFA_ADDRESS", address),
                      ("IFA_CACHEINFO", {"ifa_preferred": 0, "ifa_valid": 0xFFFFFFFF,
                                         "cstamp": 0, "tstamp": 0})]
        msg = encode(m, nl.RTM_NEWADDR, nl.NLM_F_CREATE | nl.NLM_F_EXCL)
        return (await self._nl.errnos([msg]))[0]


async def create_all(manager: VmacManager, specs: list[VmacSpec], link_by_name) -> dict[str, Vmac]:
    """Create the vmacs for many instances (deduplicated by name); failures are logged
    and counted, the instance then runs on its base interface."""
    made: dict[str, Vmac] = {}
    for spec in {s.name: s for s in specs}.values():
        base = link_by_name(spec.base)
        if base is None:
            log.error("vmac %s: base interface %s does not exist", spec.name, spec.base)
            continue
        try:
            made[spec.name] = await manager.create(spec, base)
        except VmacError as e:
            log.error("vmac %s: %s", spec.name, e)
        await asyncio.sleep(0)
    return made
