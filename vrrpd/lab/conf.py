"""keepalived.conf generator for labs, benchmarks and tests.

One config per host, identical for vrrpd and keepalived, so both daemons
are measured on the same input.  N instances need ceil(N / 255) NICs; instance
i lives on NIC i // 255 with VRID i % 255 + 1, or with `balanced` spread evenly
over those NICs (10,000 instances: 40 NICs of 250 VRIDs).  Its VIPs come from
198.19.0.0/16 (IPv4) or 2001:db8:ffff::/48 (IPv6).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

VRIDS_PER_NIC = 255
GARP_MASTER_REPEAT = 1                  # vrrp_garp_master_repeat of every generated config


@dataclass
class LabSpec:
    instances: int = 4
    version: int = 3
    advert_int: float = 1.0
    family: int = 4
    unicast: bool = False
    vips_per_instance: int = 1
    notify_fifo: str | None = None      # path; both daemons write state lines there
    extra_instance: str = ""            # lines added to every vrrp_instance
    balanced: bool = False              # the same number of VRIDs on every NIC

    @property
    def nics(self) -> int:
        return max(1, -(-self.instances // VRIDS_PER_NIC))

    @property
    def vrids_per_nic(self) -> int:
        return -(-self.instances // self.nics) if self.balanced else VRIDS_PER_NIC

    def placement(self, i: int) -> tuple[int, int]:
        """(NIC index, VRID) of instance i."""
        return i // self.vrids_per_nic, i % self.vrids_per_nic + 1

    def instance_of(self, nic: int, vrid: int) -> int:
        return nic * self.vrids_per_nic + vrid - 1


def placement(i: int) -> tuple[str, int]:
    """(interface, VRID) of instance i."""
    return f"eth{i // VRIDS_PER_NIC}", i % VRIDS_PER_NIC + 1


def vip(spec: LabSpec, i: int, k: int = 0) -> str:
    n = i * spec.vips_per_instance + k
    if spec.family == 6:
        return str(ipaddress.IPv6Address("2001:db8:ffff::") + n + 1)
    return str(ipaddress.IPv4Address("198.19.0.0") + n + 1)


def host_config(spec: LabSpec, host: int, peers: list[dict[int, str]] | None = None,
                priority: int = 100, state: str = "BACKUP",
                src: dict[int, str] | None = None) -> str:
    """keepalived.conf text for one host.

    peers: for unicast, per other host a {nic: address} map (this host's
    unicast_peer list); src: this host's {nic: address} for unicast_src_ip
    (needed for IPv6 unicast, where the default source is the link-local
    address that the peers do not list).
    """
    lines = ["global_defs {", f"    router_id lab{host}", "    vrrp_garp_master_delay 0",
             f"    vrrp_garp_master_repeat {GARP_MASTER_REPEAT}"]
    if spec.notify_fifo:
        lines.append(f"    vrrp_notify_fifo {spec.notify_fifo}")
    lines.append("}")
    for i in range(spec.instances):
        nic, vrid = spec.placement(i)
        dev = f"eth{nic}"
        lines += [f"vrrp_instance VI_{i} {{",
                  f"    state {state}",
                  f"    interface {dev}",
                  f"    virtual_router_id {vrid}",
                  f"    priority {priority}",
                  f"    advert_int {spec.advert_int:g}",
                  f"    version {spec.version}"]
        if spec.unicast and src:
            lines.append(f"    unicast_src_ip {src[nic]}")
        if spec.unicast and peers:
            lines.append("    unicast_peer {")
            lines += [f"        {p[nic]}" for p in peers]
            lines.append("    }")
        lines.append("    virtual_ipaddress {")
        plen = 128 if spec.family == 6 else 32
        lines += [f"        {vip(spec, i, k)}/{plen} dev {dev}"
                  for k in range(spec.vips_per_instance)]
        lines.append("    }")
        if spec.extra_instance:
            lines.append("    " + spec.extra_instance)
        lines.append("}")
    return "\n".join(lines) + "\n"
