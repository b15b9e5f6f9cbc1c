"""The typed configuration: frozen dataclasses, field names = keepalived keywords.

Durations are float seconds (keepalived's <TIMER>).  Inherited settings are
already resolved by the builder (an instance's garp_* come from global_defs
when not set; its priority/version/accept have keepalived's defaults), so the
daemon reads final values.  Every object keeps `.where = (file, line)`.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, TypeVar, dataclass_transform

from .problems import Where

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network



class _LeanInterface:
    """An ip_interface() that stores its address and prefix length only:
    `network` and `netmask` are made when asked.  The standard class keeps a
    network object (with its own address and a `hosts` closure) per
    address, several hundred bytes for each of thousands of VIPs that the
    daemon holds for its life.  Equal, hashed, ordered and pickled as the
    standard class (by its text)."""
    _address_class: Any
    _network_class: Any
    _standard: type
    # Provided by the ipaddress class mixed in after this one.
    _split_addr_prefix: Any
    _make_netmask: Any

    def __init__(self, address):
        addr, mask = self._split_addr_prefix(address)
        self._address_class.__init__(self, addr)
        self._prefixlen = self._network_class((addr, mask), strict=False)._prefixlen

    @property
    def network(self):
        # The address class's text keeps an IPv6 scope, as the standard class's network does.
        return self._network_class((self._address_class.__str__(self), self._prefixlen),
                                   strict=False)

    @property
    def netmask(self):
        return self._make_netmask(self._prefixlen)[0]

    def __repr__(self):
        return f"{self._standard.__name__}({str(self)!r})"


class LeanIPv4Interface(_LeanInterface, ipaddress.IPv4Interface):  # type: ignore[override]
    _address_class, _network_class = ipaddress.IPv4Address, ipaddress.IPv4Network
    _standard = ipaddress.IPv4Interface


class LeanIPv6Interface(_LeanInterface, ipaddress.IPv6Interface):  # type: ignore[override]
    _address_class, _network_class = ipaddress.IPv6Address, ipaddress.IPv6Network
    _standard = ipaddress.IPv6Interface


def ip_interface(text: str) -> IPInterface:
    """ipaddress.ip_interface() with the lean classes (ValueError as it)."""
    try:
        return LeanIPv4Interface(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError):
        pass
    try:
        return LeanIPv6Interface(text)
    except (ipaddress.AddressValueError, ipaddress.NetmaskValueError):
        pass
    raise ValueError(f"{text!r} does not appear to be an IPv4 or IPv6 interface")


T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True)
def frozen(cls: type[T]) -> type[T]:
    """The model's dataclass: immutable, slotted, keyword-only (typed as a dataclass)."""
    return dataclass(frozen=True, slots=True, kw_only=True)(cls)


NOWHERE: Where = ("", 0)


@frozen
class Command:
    """A script to run (notify_*, vrrp_script's script, fifo scripts).

    argv is split the keepalived way: unquoted spaces separate arguments,
    single quotes keep spaces together."""
    argv: tuple[str, ...]
    user: str | None = None
    group: str | None = None
    where: Where = NOWHERE


@frozen
class Fifo:
    path: str
    user: str | None = None
    group: str | None = None
    script: Command | None = None        # notify_fifo_script / vrrp_notify_fifo_script
    where: Where = NOWHERE


@frozen
class VirtualAddress:
    """One line of virtual_ipaddress / virtual_ipaddress_excluded / static_ipaddress."""
    address: IPInterface
    brd: IPAddress | str | None = None   # '-' / '+' clear or set the host bits
    dev: str | None = None
    scope: str | None = None
    label: str | None = None
    peer: IPInterface | None = None
    home: bool = False
    nodad: bool = False
    mngtmpaddr: bool = False
    noprefixroute: bool = False
    autojoin: bool = False
    no_track: bool = False
    use_vmac: bool = False
    preferred_lft: int | str | None = None      # seconds or 'forever'
    track_group: str | None = None
    where: Where = NOWHERE

    @property
    def family(self) -> int:
        return self.address.version


@frozen
class Route:
    """A virtual_routes / static_routes line: ip-route syntax, options kept as pairs."""
    destination: IPNetwork | None         # None for `default`-less forms like `blackhole`
    type: str | None = None               # blackhole, unreachable, prohibit, throw, ...
    src: IPAddress | None = None
    via: IPAddress | None = None
    dev: str | None = None
    table: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    no_track: bool = False
    track_group: str | None = None
    inet6: bool = False
    where: Where = NOWHERE


@frozen
class Rule:
    """A virtual_rules / static_rules line: ip-rule syntax, options kept as pairs."""
    from_: IPNetwork | None = None
    to: IPNetwork | None = None
    table: str | None = None
    options: tuple[tuple[str, str], ...] = ()
    no_track: bool = False
    track_group: str | None = None
    inet6: bool = False
    where: Where = NOWHERE


@frozen
class UnicastPeer:
    address: IPAddress
    min_ttl: int | None = None
    max_ttl: int | None = None
    where: Where = NOWHERE


@frozen
class Track:
    """A track_interface/script/file/process/bfd entry; weight None = the tracked
    object's own default weight."""
    name: str
    weight: int | None = None
    reverse: bool = False
    where: Where = NOWHERE


@frozen
class Authentication:
    auth_type: str                 # "PASS" | "AH"
    auth_pass: str = ""            # only the first 8 characters are used (RFC 2338)
    where: Where = NOWHERE


@frozen
class VrrpScript:
    name: str
    script: Command | None = None
    interval: float = 1.0
    timeout: float | None = None   # None: same as interval (keepalived)
    weight: int = 0
    weight_reverse: bool = False
    rise: int = 1
    fall: int = 1
    user: str | None = None
    group: str | None = None
    init_fail: bool = False
    where: Where = NOWHERE

    @property
    def effective_timeout(self) -> float:
        return self.interval if self.timeout is None else self.timeout


@frozen
class TrackFile:
    name: str
    file: str | None = None
    weight: int = 1
    weight_reverse: bool = False
    init_file: bool = False
    init_value: int = 0
    init_overwrite: bool = False
    where: Where = NOWHERE


@frozen
class TrackProcess:
    name: str
    process: tuple[str, ...] = ()   # name then optional parameters
    param_match: str | None = None  # None (exact) | "initial" | "partial"
    weight: int = 1
    weight_reverse: bool = False
    quorum: int = 1
    quorum_max: int | None = None   # None: no maximum
    fork_delay: float = 0.0
    terminate_delay: float = 0.0
    full_command: bool = False
    where: Where = NOWHERE


@frozen
class SyncGroup:
    name: str
    group: tuple[str, ...] = ()
    track_interface: tuple[Track, ...] = ()
    track_script: tuple[Track, ...] = ()
    track_file: tuple[Track, ...] = ()
    track_process: tuple[Track, ...] = ()
    track_bfd: tuple[Track, ...] = ()
    notify_master: Command | None = None
    notify_backup: Command | None = None
    notify_fault: Command | None = None
    notify_stop: Command | None = None
    notify_deleted: Command | None = None
    notify_deleted_enabled: bool = False
    notify: Command | None = None
    notify_priority_changes: bool = False
    smtp_alert: bool = False
    global_tracking: bool = False
    sync_group_tracking_weight: bool = False
    where: Where = NOWHERE


@frozen
class GarpGroup:
    garp_interval: float | None = None
    gna_interval: float | None = None
    interface: str | None = None
    interfaces: tuple[str, ...] = ()
    where: Where = NOWHERE


@frozen
class VrrpInstance:
    name: str
    state: str = "BACKUP"                       # initial state wanted
    interface: str | None = None
    vrf: str | None = None
    virtual_router_id: int = 0
    priority: int = 100                         # 255 when omitted with state MASTER
    advert_int: float = 1.0                     # seconds
    version: int = 2                            # resolved: global vrrp_version, 3 for IPv6
    family: int = 4                             # 4 or 6, from the addresses
    use_vmac: bool = False
    vmac_name: str | None = None
    vmac_mac: str | None = None
    use_vmac_addr: bool = False
    vmac_xmit_base: bool = False
    vmac_garp_intvl: tuple[float, bool] | None = None
    use_ipvlan: tuple[str, ...] | None = None
    native_ipv6: bool = False
    dont_track_primary: bool = False
    track_interface: tuple[Track, ...] = ()
    track_script: tuple[Track, ...] = ()
    track_file: tuple[Track, ...] = ()
    track_process: tuple[Track, ...] = ()
    track_bfd: tuple[Track, ...] = ()
    mcast_src_ip: IPAddress | None = None
    unicast_src_ip: IPAddress | None = None
    mcast_dst_ip: IPAddress | None = None
    track_src_ip: bool = False
    check_unicast_src: bool = False
    unicast_peer: tuple[UnicastPeer, ...] = ()
    unicast_fault_no_peer: bool = False
    unicast_ttl: int | None = None
    old_unicast_checksum: str | None = None     # None | "on" | "never"
    v3_checksum_as_v2: bool = False             # keepalived >= 2.2.8 keyword
    garp_master_delay: float = 5.0
    garp_master_repeat: int = 5
    garp_lower_prio_delay: float = 5.0
    garp_lower_prio_repeat: int = 5
    garp_master_refresh: float = 0.0
    garp_master_refresh_repeat: int = 1
    garp_extra_if: tuple[float, bool] | None = None    # (interval, all)
    down_timer_adverts: int = 3
    lower_prio_no_advert: bool = False
    higher_prio_send_advert: bool = False
    authentication: Authentication | None = None
    virtual_ipaddress: tuple[VirtualAddress, ...] = ()
    virtual_ipaddress_excluded: tuple[VirtualAddress, ...] = ()
    promote_secondaries: bool = False
    virtual_routes: tuple[Route, ...] = ()
    virtual_rules: tuple[Rule, ...] = ()
    accept: bool = True
    nopreempt: bool = False
    preempt_delay: float = 0.0
    skip_check_adv_addr: bool = False
    strict_mode: bool = False
    debug: int = 0
    notify_master: Command | None = None
    notify_backup: Command | None = None
    notify_fault: Command | None = None
    notify_stop: Command | None = None
    notify_deleted: Command | None = None
    notify_deleted_enabled: bool = False
    notify: Command | None = None
    notify_master_rx_lower_pri: Command | None = None
    notify_priority_changes: bool = False
    smtp_alert: bool = False
    kernel_rx_buf_size: int | None = None
    linkbeat_use_polling: bool = False
    lvs_sync_daemon_interface: str | None = None
    sync_group: str | None = None               # name of the vrrp_sync_group it belongs to
    where: Where = NOWHERE

    @property
    def advert_int_cs(self) -> int:
        """Advertisement interval in centiseconds (the VRRPv3 Max Adver Int unit)."""
        return int(round(self.advert_int * 100))

    @property
    def owner(self) -> bool:
        """Configured as address owner (priority 255)."""
        return self.priority == 255

    @property
    def source_address(self) -> IPAddress | None:
        return self.unicast_src_ip or self.mcast_src_ip


@frozen
class GlobalDefs:
    router_id: str | None = None               # None: the host name
    notification_email: tuple[str, ...] = ()
    notification_email_from: str | None = None  # None: keepalived@<host name>
    smtp_server: str | None = None
    smtp_port: int = 25
    smtp_helo_name: str | None = None
    smtp_connect_timeout: float = 30.0
    smtp_alert: bool | None = None
    smtp_alert_vrrp: bool | None = None
    no_email_faults: bool = False
    vrrp_mcast_group4: ipaddress.IPv4Address = ipaddress.IPv4Address("224.0.0.18")
    vrrp_mcast_group6: ipaddress.IPv6Address = ipaddress.IPv6Address("ff02::12")
    default_interface: str = "eth0"
    vrrp_garp_master_delay: float = 5.0
    vrrp_garp_master_repeat: int = 5
    vrrp_garp_lower_prio_delay: float | None = None   # None: = vrrp_garp_master_delay
    vrrp_garp_lower_prio_repeat: int | None = None    # None: = vrrp_garp_master_repeat
    vrrp_garp_master_refresh: float = 0.0
    vrrp_garp_master_refresh_repeat: int = 1
    vrrp_garp_interval: float = 0.0
    vrrp_gna_interval: float = 0.0
    vrrp_min_garp: bool = False
    vrrp_garp_extra_if: tuple[float, bool] | None = None
    vrrp_down_timer_adverts: int = 3
    vrrp_lower_prio_no_advert: bool | None = None     # None: = vrrp_strict
    vrrp_higher_prio_send_advert: bool = False
    vrrp_version: int = 2
    vrrp_iptables: tuple[str, ...] | None = None
    vrrp_ipsets: tuple[str, ...] | None = None
    nftables: str | None = None
    nftables_priority: int | None = None
    nftables_counters: bool = False
    nftables_ifindex: bool = False
    vrrp_check_unicast_src: bool = False
    vrrp_skip_check_adv_addr: bool = False
    vrrp_strict: bool = False
    vrrp_notify_priority_changes: bool = False
    vrrp_priority: int | None = None
    vrrp_no_swap: bool = False
    vrrp_cpu_affinity: tuple[int, ...] = ()
    vrrp_rt_priority: int | None = None
    vrrp_rlimit_rttime: int | None = None
    vrrp_process_name: str | None = None
    max_auto_priority: int | None = None
    min_auto_priority_delay: int | None = None
    script_user: str | None = None
    script_group: str | None = None
    enable_script_security: bool = False
    # vrrpd extensions (keepalived has neither): a time limit for notify scripts,
    # and stopping the ones still running when the daemon stops.
    notify_script_timeout: float | None = None
    notify_script_kill_on_stop: bool = False
    notify_fifo: Fifo | None = None
    vrrp_notify_fifo: Fifo | None = None
    fifo_write_vrrp_states_on_reload: bool = False
    dynamic_interfaces: bool = False
    dynamic_interfaces_allow_if_changes: bool = False
    vrrp_netlink_cmd_rcv_bufs: int | None = None
    vrrp_netlink_cmd_rcv_bufs_force: bool = False
    vrrp_netlink_monitor_rcv_bufs: int | None = None
    vrrp_netlink_monitor_rcv_bufs_force: bool = False
    vrrp_rx_bufs_policy: str | None = None
    vrrp_rx_bufs_multiplier: int = 3
    vrrp_startup_delay: float = 0.0
    log_unknown_vrids: bool = False
    vmac_prefix: str = "vrrp"
    vmac_addr_prefix: str | None = None
    disable_local_igmp: bool = False
    v3_checksum_as_v2: bool = False
    enable_dbus: bool = False
    dbus_service_name: str | None = None
    enable_snmp_vrrp: bool = False
    enable_traps: bool = False
    umask: str | None = None
    random_seed: int | None = None
    reload_check_config: bool = False
    where: Where = NOWHERE


@frozen
class Config:
    global_defs: GlobalDefs = field(default_factory=GlobalDefs)
    instances: dict[str, VrrpInstance] = field(default_factory=dict)
    scripts: dict[str, VrrpScript] = field(default_factory=dict)
    track_files: dict[str, TrackFile] = field(default_factory=dict)
    track_processes: dict[str, TrackProcess] = field(default_factory=dict)
    sync_groups: dict[str, SyncGroup] = field(default_factory=dict)
    garp_groups: tuple[GarpGroup, ...] = ()
    static_ipaddress: tuple[VirtualAddress, ...] = ()
    static_routes: tuple[Route, ...] = ()
    static_rules: tuple[Rule, ...] = ()
    track_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    linkbeat_interfaces: dict[str, str | None] = field(default_factory=dict)
    interface_up_down_delays: dict[str, tuple[float, float]] = field(default_factory=dict)
    files: tuple[str, ...] = ()               # every file read, main first
    config_id: str = ""

    @staticmethod
    def instance_key(inst: VrrpInstance) -> tuple[int, int, str | None, IPAddress | None]:
        """keepalived's reload identity of an instance: (VRID, family, interface,
        source address) -- names do not matter across a SIGHUP."""
        return (inst.virtual_router_id, inst.family, inst.interface, inst.source_address)
