"""The configuration resolved for the runtime: what the engine and netlink
need per instance, in the engine's units (centiseconds, packed addresses)."""
from __future__ import annotations

import dataclasses
import socket
from array import array
from dataclasses import dataclass, field

from vrrpd.config.model import NOWHERE, Config, VirtualAddress, VrrpInstance
from vrrpd.config.problems import Where
from vrrpd.net.firewall import needs_drop
from vrrpd.net.vmac import VmacSpec, advert_interface, vip_interface

# rtnetlink scope numbers for virtual_ipaddress `scope NAME` (iproute2's rt_scopes).
SCOPES = {None: 0, "global": 0, "universe": 0, "site": 200, "link": 253, "host": 254,
          "nowhere": 255}


@dataclass(frozen=True, slots=True)
class VipSpec:
    address: str          # "192.0.2.1", normalised (the same object as in advert_addrs)
    prefixlen: int
    dev: str | None       # the interface it goes on (a vmac's, see vmac.vip_interface)
    label: str | None
    scope: int
    broadcast: str | None
    no_track: bool = False    # a deletion from outside does not make the instance BACKUP

    @property
    def with_prefixlen(self) -> str:
        """"192.0.2.1/32" (as ipaddress names it)."""
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    name: str
    # Its vrrp_instance block; in the daemon without what the spec and
    # Plan.positions hold (see lean_plan).
    conf: VrrpInstance
    interface: str | None         # as configured: the base interface with use_vmac
    advert_interface: str | None  # where adverts leave and arrive (the vmac unless vmac_xmit_base)
    vmac: VmacSpec | None
    vrid: int
    src_ip: str | None
    # Tuples: one per instance of each, kept for the daemon's life (the empty
    # tuple is shared by every instance without unicast peers).
    unicast_peers: tuple[str, ...]
    vips: tuple[VipSpec, ...]     # every address to add as MASTER (incl. _excluded)
    advert_addrs: tuple[str, ...]     # the addresses listed in adverts
    v3_checksum_as_v2: bool

    # What comes from the block as it is: read from the conf (shared among
    # instances configured alike), not kept per instance.
    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.conf.family == 6 else socket.AF_INET

    @property
    def version(self) -> int:
        return self.conf.version

    @property
    def priority(self) -> int:
        return self.conf.priority

    @property
    def advert_int_cs(self) -> int:
        return self.conf.advert_int_cs

    @property
    def preempt(self) -> bool:
        return not self.conf.nopreempt

    @property
    def preempt_delay_cs(self) -> int:
        return int(round(self.conf.preempt_delay * 100))

    @property
    def auth_type(self) -> int:
        """1: simple password; 0: none (AH is rejected by validation)."""
        auth = self.conf.authentication
        return 1 if auth is not None and auth.auth_type == "PASS" else 0

    @property
    def auth_pass(self) -> bytes:
        auth = self.conf.authentication
        return auth.auth_pass.encode()[:8] if auth is not None and self.auth_type else b""

    @property
    def needs_drop(self) -> bool:
        """Not owner, no accept mode: drop VIP traffic while master."""
        return needs_drop(self.conf)


@dataclass(frozen=True, slots=True)
class Positions:
    """(file, line) of each instance's block, in Plan.instances' order: two
    arrays, not a tuple and an int per instance, as the daemon reads them
    only for messages.  Indexed by position in Plan.instances."""
    files: tuple[str, ...] = ()
    file_index: array = field(default_factory=lambda: array("H"))
    lines: array = field(default_factory=lambda: array("I"))

    @classmethod
    def of(cls, wheres) -> Positions:
        files: dict[str, int] = {}
        index, lines = array("H"), array("I")
        for file, line in wheres:
            index.append(files.setdefault(file, len(files)))
            lines.append(line)
        return cls(tuple(files), index, lines)

    def __getitem__(self, i: int) -> Where:
        return self.files[self.file_index[i]], self.lines[i]

    def __len__(self) -> int:
        return len(self.lines)


@dataclass
class Plan:
    config: Config
    instances: list[InstanceSpec] = field(default_factory=list)
    positions: Positions = field(default_factory=Positions)
    mcast_group4: str = "224.0.0.18"
    mcast_group6: str = "ff02::12"
    startup_delay: float = 0.0
    static_vips: list[VipSpec] = field(default_factory=list)     # global static_ipaddress

    def where(self, name: str) -> str:
        """"file:line" of the named instance's block ("?" if not known here)."""
        for i, spec in enumerate(self.instances):
            if spec.name == name and i < len(self.positions):
                file, line = self.positions[i]
                return f"{file}:{line}"
        return "?"


def _vip(v: VirtualAddress, dev: str | None) -> VipSpec:
    brd = v.brd if v.brd is None or isinstance(v.brd, str) else str(v.brd)
    return VipSpec(str(v.address.ip), v.address.network.prefixlen, dev, v.label,
                   SCOPES.get(v.scope, 0),
                   None if brd in ("-", None) else brd, v.no_track)


def instance_spec(inst: VrrpInstance, config: Config,
                  vmacs: set[str] | None = None) -> InstanceSpec:
    """vmacs: names of the vmacs of the instances before this one (updated)."""
    g = config.global_defs
    src = inst.source_address
    vmacs = set() if vmacs is None else vmacs
    vmac = VmacSpec.for_instance(inst, g, vmacs)
    vmac_name = vmac.name if vmac else None
    if vmac_name:
        vmacs.add(vmac_name)
    vips = tuple([_vip(v, vip_interface(inst, v, False, vmac_name))
                  for v in inst.virtual_ipaddress] +
                 [_vip(v, vip_interface(inst, v, True, vmac_name))
                  for v in inst.virtual_ipaddress_excluded])
    return InstanceSpec(
        name=inst.name, conf=inst,
        interface=inst.interface, advert_interface=advert_interface(inst, vmac_name), vmac=vmac,
        vrid=inst.virtual_router_id, src_ip=str(src) if src is not None else None,
        unicast_peers=tuple(str(p.address) for p in inst.unicast_peer),
        vips=vips,
        # virtual_ipaddress_excluded exists to keep addresses out of the advert
        # (and of the other family); an advert lists at most 255.  The
        # VipSpecs' own strings: one object per address in the daemon.
        advert_addrs=tuple([s.address for s, v in zip(vips, inst.virtual_ipaddress)
                            if v.family == inst.family][:255]),
        v3_checksum_as_v2=inst.v3_checksum_as_v2 or g.v3_checksum_as_v2)


def build_plan(config: Config) -> Plan:
    g = config.global_defs
    vmacs: set[str] = set()
    return Plan(config=config,
                instances=[instance_spec(i, config, vmacs) for i in config.instances.values()],
                positions=Positions.of(i.where for i in config.instances.values()),
                mcast_group4=str(g.vrrp_mcast_group4), mcast_group6=str(g.vrrp_mcast_group6),
                startup_delay=g.vrrp_startup_delay,
                static_vips=[_vip(v, v.dev) for v in config.static_ipaddress])


def lean_conf(inst: VrrpInstance) -> VrrpInstance:
    """What the daemon keeps of an instance's block: not its name, VRID,
    addresses and position (its InstanceSpec and Plan.positions have them),
    so that instances configured alike can share one object.  Not for
    Config.instance_key or the reload's fingerprints: they are made from
    the whole block."""
    return dataclasses.replace(inst, name="", virtual_router_id=0, virtual_ipaddress=(),
                               virtual_ipaddress_excluded=(), where=NOWHERE)


def lean_spec(spec: InstanceSpec, shared: dict[VrrpInstance, VrrpInstance]) -> InstanceSpec:
    """The spec with its lean_conf(), one object for equal ones (`shared`:
    those known so far, updated)."""
    conf = lean_conf(spec.conf)
    return dataclasses.replace(spec, conf=shared.setdefault(conf, conf))


def lean_plan(plan: Plan) -> Plan:
    """The plan as the daemon keeps it: lean_spec()s, config.instances the same confs."""
    shared: dict[VrrpInstance, VrrpInstance] = {}
    specs = [lean_spec(s, shared) for s in plan.instances]
    config = dataclasses.replace(plan.config, instances={s.name: s.conf for s in specs})
    return dataclasses.replace(plan, config=config, instances=specs)


def engine_tunables(spec: InstanceSpec) -> dict:
    """Engine settings a running instance can take without leaving its state
    (Engine.add_instance() and Engine.retune() keywords)."""
    c = spec.conf
    return dict(version=spec.version, advert_int_cs=spec.advert_int_cs, preempt=spec.preempt,
                preempt_delay_cs=spec.preempt_delay_cs, down_timer_adverts=c.down_timer_adverts,
                lower_prio_no_advert=bool(c.lower_prio_no_advert),
                higher_prio_send_advert=bool(c.higher_prio_send_advert),
                skip_check_adv_addr=bool(c.skip_check_adv_addr))
