"""Statement tree -> typed model.  One table per block maps each keyword to the
model field and the converter for its value; a keyword not in the block's table
is an error (never silently ignored).  The tables list every keyword keepalived
2.2.7 accepts in those blocks (probed against the binary), plus vrrpd's
`v3_checksum_as_v2` (keepalived >= 2.2.8)."""
from __future__ import annotations

import dataclasses

from . import values as v
from .model import (Authentication, Config, Fifo, GarpGroup, GlobalDefs, Route, Rule, SyncGroup,
                    TrackFile, TrackProcess, VirtualAddress, VrrpInstance, VrrpScript)
from .parser import Node
from .problems import Report

BadValue = v.BadValue

# Keywords keepalived accepts in global_defs that concern other daemons (LVS,
# BFD, SNMP for checkers, process management): accepted, warned once, ignored.
GLOBAL_IGNORED = {
    "bfd_cpu_affinity", "bfd_no_swap", "bfd_priority", "bfd_process_name", "bfd_rlimit_rtime",
    "bfd_rlimit_rttime", "bfd_rt_priority", "checker_cpu_affinity", "checker_log_all_failures",
    "checker_no_swap", "checker_priority", "checker_process_name", "checker_rlimit_rtime",
    "checker_rlimit_rttime", "checker_rt_priority", "config_save_dir", "data_use_instance",
    "enable_snmp_checker", "enable_snmp_keepalived", "enable_snmp_rfc", "enable_snmp_rfcv2",
    "enable_snmp_rfcv3", "lvs_flush", "lvs_flush_on_stop", "lvs_flush_onstop",
    "lvs_netlink_cmd_rcv_bufs", "lvs_netlink_cmd_rcv_bufs_force", "lvs_netlink_monitor_rcv_bufs",
    "lvs_netlink_monitor_rcv_bufs_force", "lvs_notify_fifo", "lvs_notify_fifo_script",
    "lvs_process_name", "lvs_sync_daemon", "lvs_timeouts", "nftables_ipvs",
    "nftables_ipvs_priority", "nftables_ipvs_start_fwmark", "no_checker_emails",
    "process_monitor_rcv_bufs", "process_monitor_rcv_bufs_force", "process_name",
    "process_names", "reload_file", "reload_repeat", "reload_time_file", "rs_init_notifies",
    "shutdown_script", "shutdown_script_timeout", "smtp_alert_checker", "snmp_socket",
    "startup_script", "startup_script_timeout", "tmp_config_directory", "vrrp_vmac_garp_intvl",
    "linkbeat_use_polling", "namespace_with_ipsets", "net_namespace", "net_namespace_ipvs",
    "instance", "use_pid_dir", "child_wait_time",
}
# Top-level sections that are not VRRP: skipped with one warning each.
TOP_SKIPPED = {"virtual_server", "virtual_server_group", "bfd_instance", "net_namespace",
               "net_namespace_ipvs", "namespace_with_ipsets", "instance", "use_pid_dir",
               "linkbeat_use_polling", "child_wait_time"}
UINT = 2**31 - 1


def _fifo(node: Node) -> Fifo:
    a = node.args
    if not a or len(a) > 3:
        raise BadValue(f"'{node.keyword}' FIFO_NAME [username [groupname]]")
    return Fifo(path=a[0], user=a[1] if len(a) > 1 else None,
                group=a[2] if len(a) > 2 else None, where=node.where)


def _extra_if(node: Node) -> tuple[float, bool]:
    a = list(node.args)
    every = bool(a) and a[0] == "all"
    if every:
        a.pop(0)
    if len(a) != 1:
        raise BadValue(f"'{node.keyword}' [all] SECONDS")
    return v.number(a[0], 0, 86400, node.keyword), every


def _smtp_server(node: Node, out: dict) -> None:
    out["smtp_server"] = v.arg(node)
    if len(node.args) > 1:
        out["smtp_port"] = v.integer(node.args[1], 1, 65535, "smtp_server port")


def _script_user(node: Node, out: dict) -> None:
    out["script_user"] = v.arg(node)
    if len(node.args) > 1:
        out["script_group"] = node.args[1]


def _fifo_script(field: str):
    def apply(node: Node, out: dict) -> None:
        out[field + "_script"] = v.command(node)
    return apply


def _dynamic_interfaces(node: Node, out: dict) -> None:
    out["dynamic_interfaces"] = True
    if node.args:
        if node.args != ["allow_if_changes"]:
            raise BadValue("dynamic_interfaces [allow_if_changes]")
        out["dynamic_interfaces_allow_if_changes"] = True


def _nftables(node: Node) -> str:
    return node.args[0] if node.args else "keepalived"


def _iptables(node: Node) -> tuple[str, ...]:
    if len(node.args) > 2:
        raise BadValue("vrrp_iptables [IN_CHAIN [OUT_CHAIN]]")
    return tuple(node.args) or ("INPUT",)


def _cpus(node: Node) -> tuple[int, ...]:
    return tuple(v.integer(a, 0, 4095, node.keyword) for a in node.args)


def _umask(node: Node) -> str:
    return " ".join(node.args)


def _version(node: Node) -> int:
    return v.integer(v.arg(node), 2, 3, node.keyword)


# keyword -> field converter (field = keyword) or a function(node, out) for several fields
GLOBAL = {
    "router_id": v.string, "notification_email": v.name_list,
    "notification_email_from": v.string, "smtp_server": _smtp_server,
    "smtp_helo_name": v.string, "smtp_connect_timeout": v.float_range(0.001, 86400),
    "smtp_alert": v.bool_opt, "smtp_alert_vrrp": v.bool_opt, "no_email_faults": v.flag,
    "vrrp_mcast_group4": v.ip_arg, "vrrp_mcast_group6": v.ip_arg, "default_interface": v.interface,
    "vrrp_garp_master_delay": v.float_range(0, 86400),
    "vrrp_garp_master_repeat": v.int_range(0, UINT),
    "vrrp_garp_lower_prio_delay": v.float_range(0, 86400),
    "vrrp_garp_lower_prio_repeat": v.int_range(0, UINT),
    "vrrp_garp_master_refresh": v.float_range(0, 86400),
    "vrrp_garp_master_refresh_repeat": v.int_range(0, UINT),
    "vrrp_garp_interval": v.float_range(0, 86400), "vrrp_gna_interval": v.float_range(0, 86400),
    "vrrp_min_garp": v.bool_opt, "vrrp_garp_extra_if": _extra_if,
    "vrrp_down_timer_adverts": v.int_range(1, 100), "vrrp_lower_prio_no_advert": v.bool_opt,
    "vrrp_higher_prio_send_advert": v.bool_opt, "vrrp_version": _version,
    "vrrp_iptables": _iptables, "vrrp_ipsets": v.words, "nftables": _nftables,
    "nftables_priority": v.int_range(-2**31, UINT), "nftables_counters": v.flag,
    "nftables_ifindex": v.flag, "vrrp_check_unicast_src": v.flag,
    "vrrp_skip_check_adv_addr": v.flag, "vrrp_strict": v.flag,
    "vrrp_notify_priority_changes": v.bool_opt, "vrrp_priority": v.int_range(-20, 19),
    "vrrp_no_swap": v.flag, "vrrp_cpu_affinity": _cpus, "vrrp_rt_priority": v.int_range(1, 99),
    "vrrp_rlimit_rttime": v.int_range(1, UINT), "vrrp_rlimit_rtime": v.int_range(1, UINT),
    "vrrp_process_name": v.string, "max_auto_priority": v.int_range(-1, 99),
    "min_auto_priority_delay": v.int_range(1, 10_000_000), "script_user": _script_user,
    "enable_script_security": v.flag, "notify_fifo": _fifo,
    "notify_script_timeout": v.float_range(0.001, 86400), "notify_script_kill_on_stop": v.flag,
    "notify_fifo_script": _fifo_script("notify_fifo"), "vrrp_notify_fifo": _fifo,
    "vrrp_notify_fifo_script": _fifo_script("vrrp_notify_fifo"),
    "fifo_write_vrrp_states_on_reload": v.flag, "dynamic_interfaces": _dynamic_interfaces,
    "vrrp_netlink_cmd_rcv_bufs": v.int_range(0, UINT),
    "vrrp_netlink_cmd_rcv_bufs_force": v.bool_opt,
    "vrrp_netlink_monitor_rcv_bufs": v.int_range(0, UINT),
    "vrrp_netlink_monitor_rcv_bufs_force": v.bool_opt,
    "vrrp_rx_bufs_policy": v.string, "vrrp_rx_bufs_multiplier": v.int_range(1, UINT),
    "vrrp_startup_delay": v.float_range(0, 86400), "log_unknown_vrids": v.flag,
    "vmac_prefix": v.string, "vmac_addr_prefix": v.string, "disable_local_igmp": v.flag,
    "v3_checksum_as_v2": v.bool_opt, "enable_dbus": v.flag, "dbus_service_name": v.string,
    "enable_snmp_vrrp": v.flag, "enable_traps": v.flag, "umask": _umask,
    "random_seed": v.int_range(0, 2**32 - 1), "reload_check_config": lambda n: True,
}
_GLOBAL_ALIASES = {"vrrp_rlimit_rtime": "vrrp_rlimit_rttime"}


def _state(node: Node) -> str:
    s = v.arg(node)
    if s not in ("MASTER", "BACKUP"):
        raise BadValue(f"state must be MASTER or BACKUP, not '{s}'")
    return s


def _use_vmac(node: Node, out: dict) -> None:
    out["use_vmac"] = True
    for a in node.args:
        if a.count(":") >= 4:
            out["vmac_mac"] = a
        else:
            out["vmac_name"] = v.ifname(a, "use_vmac")


def _auth(node: Node) -> Authentication:
    kw: dict = {}
    for item in v.block_items(node):
        if item.keyword == "auth_type":
            t = v.arg(item)
            if t not in ("PASS", "AH"):
                raise BadValue(f"auth_type must be PASS or AH, not '{t}'")
            kw["auth_type"] = t
        elif item.keyword == "auth_pass":
            kw["auth_pass"] = v.arg(item)[:8]    # RFC 2338 5.3.6: 8 octets
        else:
            raise BadValue(f"unknown keyword '{item.keyword}' in authentication")
    if "auth_type" not in kw:
        raise BadValue("authentication without auth_type")
    return Authentication(where=node.where, **kw)


def _accept(value: bool):
    def apply(node: Node, out: dict) -> None:
        v.flag(node)
        out["accept"] = value
    return apply


def _preempt(value: bool):
    def apply(node: Node, out: dict) -> None:
        v.flag(node)
        out["nopreempt"] = not value
    return apply


def _notify_deleted(node: Node, out: dict) -> None:
    out["notify_deleted_enabled"] = True
    if node.args:
        out["notify_deleted"] = v.command(node)


def _old_checksum(node: Node) -> str:
    if node.args and node.args != ["never"]:
        raise BadValue("old_unicast_checksum [never]")
    return "never" if node.args else "on"


def _src_ip(field: str):
    def apply(node: Node, out: dict) -> None:
        out[field] = v.ip_arg(node)
    return apply


INSTANCE = {
    "state": _state, "interface": v.interface, "vrf": v.string, "use_vmac": _use_vmac,
    "use_vmac_addr": v.flag, "vmac_xmit_base": v.flag, "vmac_garp_intvl": _extra_if,
    "use_ipvlan": v.words, "native_ipv6": v.flag, "dont_track_primary": v.flag,
    "track_interface": v.tracks(-253, 253, v.ifname), "track_script": v.tracks(-253, 253),
    "track_file": v.tracks(-254, 254), "track_process": v.tracks(-254, 254),
    "track_bfd": v.tracks(-253, 253),
    "mcast_src_ip": _src_ip("mcast_src_ip"), "unicast_src_ip": _src_ip("unicast_src_ip"),
    "mcast_dst_ip": v.ip_arg, "track_src_ip": v.flag, "version": _version,
    "check_unicast_src": v.flag, "unicast_peer": v.peers, "unicast_fault_no_peer": v.flag,
    "unicast_ttl": v.int_range(0, 255), "old_unicast_checksum": _old_checksum,
    "v3_checksum_as_v2": v.bool_opt,
    "garp_master_delay": v.float_range(0, 86400), "garp_master_repeat": v.int_range(0, UINT),
    "garp_lower_prio_delay": v.float_range(0, 86400),
    "garp_lower_prio_repeat": v.int_range(0, UINT),
    "garp_master_refresh": v.float_range(0, 86400),
    "garp_master_refresh_repeat": v.int_range(0, UINT), "garp_extra_if": _extra_if,
    "down_timer_adverts": v.int_range(1, 100), "lower_prio_no_advert": v.bool_opt,
    "higher_prio_send_advert": v.bool_opt,
    "virtual_router_id": v.int_range(1, 255), "priority": v.int_range(1, 255),
    "advert_int": v.float_range(0.001, 255), "authentication": _auth,
    "virtual_ipaddress": v.vips, "virtual_ipaddress_excluded": v.vips,
    "promote_secondaries": v.flag, "virtual_routes": v.routes, "virtual_rules": v.rules,
    "accept": _accept(True), "no_accept": _accept(False),
    "preempt": _preempt(True), "nopreempt": _preempt(False),
    "preempt_delay": v.float_range(0, 1000), "skip_check_adv_addr": v.bool_opt,
    "strict_mode": v.bool_opt, "debug": v.int_range(0, 4),
    "notify_master": v.command, "notify_backup": v.command, "notify_fault": v.command,
    "notify_stop": v.command, "notify_deleted": _notify_deleted, "notify": v.command,
    "notify_master_rx_lower_pri": v.command, "notify_priority_changes": v.bool_opt,
    "smtp_alert": v.bool_opt, "kernel_rx_buf_size": v.int_range(0, UINT),
    "linkbeat_use_polling": v.flag, "lvs_sync_daemon_interface": v.string,
}


def _script_weight(node: Node, out: dict) -> None:
    out["weight"], out["weight_reverse"] = v.weight_with_reverse(node, -253, 253)


def _script_user_kw(node: Node, out: dict) -> None:
    out["user"] = v.arg(node)
    if len(node.args) > 1:
        out["group"] = node.args[1]


SCRIPT = {
    "script": v.script_line, "interval": v.float_range(0.000001, 86400),
    "timeout": v.float_range(0.000001, 86400), "weight": _script_weight,
    "rise": v.int_range(1, UINT), "fall": v.int_range(1, UINT), "user": _script_user_kw,
    "init_fail": v.flag,
}


def _wide_weight(lo: int, hi: int):
    def apply(node: Node, out: dict) -> None:
        out["weight"], out["weight_reverse"] = v.weight_with_reverse(node, lo, hi)
    return apply


def _init_file(node: Node, out: dict) -> None:
    out["init_file"] = True
    for a in node.args:
        if a == "overwrite":
            out["init_overwrite"] = True
        else:
            out["init_value"] = v.integer(a, -2**31, 2**31 - 1, "init_file value")


TRACK_FILE = {"file": v.string, "weight": _wide_weight(-2**31 + 1, 2**31 - 1),
              "init_file": _init_file}


def _process(node: Node) -> tuple[str, ...]:
    if not node.args:
        raise BadValue("'process' needs a process name")
    return tuple(node.args)


def _param_match(node: Node) -> str:
    m = v.arg(node)
    if m not in ("initial", "partial"):
        raise BadValue("param_match must be initial or partial")
    return m


def _delay(node: Node, out: dict) -> None:
    out["fork_delay"] = out["terminate_delay"] = v.number(v.arg(node), 0, 86400, "delay")


TRACK_PROCESS = {
    "process": _process, "param_match": _param_match, "weight": _wide_weight(-254, 254),
    "quorum": v.int_range(0, UINT), "quorum_max": v.int_range(0, UINT),
    "fork_delay": v.float_range(0, 86400), "terminate_delay": v.float_range(0, 86400),
    "delay": _delay, "full_command": v.flag,
}

SYNC_GROUP = {
    "group": v.name_list, "track_interface": v.tracks(-253, 253, v.ifname),
    "track_script": v.tracks(-253, 253), "track_file": v.tracks(-254, 254),
    "track_process": v.tracks(-254, 254), "track_bfd": v.tracks(-253, 253),
    "notify_master": v.command, "notify_backup": v.command, "notify_fault": v.command,
    "notify_stop": v.command, "notify_deleted": _notify_deleted, "notify": v.command,
    "notify_priority_changes": v.bool_opt, "smtp_alert": v.bool_opt,
    "global_tracking": v.flag, "sync_group_tracking_weight": v.flag,
}

GARP_GROUP = {"garp_interval": v.float_range(0, 86400), "gna_interval": v.float_range(0, 86400),
              "interface": v.interface, "interfaces": v.name_list}


# Values keepalived 2.2.7 reads as whole seconds (read_unsigned_strvec): a
# fraction, or a number outside the range, is "invalid ... - ignoring" there
# and its default stays; vrrpd takes the value, and `vrrpd -t` says so.
# block keyword -> {keyword: (lo, hi)}; measured with `keepalived -t`.
KEEPALIVED_WHOLE_SECONDS = {
    "global_defs": {"vrrp_garp_master_delay": (0, 86400), "vrrp_garp_lower_prio_delay": (0, 86400),
                    "vrrp_garp_master_refresh": (0, 86400)},
    "vrrp_instance": {"garp_master_delay": (0, 86400), "garp_lower_prio_delay": (0, 86400),
                      "garp_master_refresh": (0, 86400)},
    "vrrp_script": {"interval": (1, 4294), "timeout": (1, 4294)},
}


def keepalived_differs(block: str, node: Node) -> str | None:
    """Why keepalived 2.2.7 would ignore this statement's value, or None."""
    rng = KEEPALIVED_WHOLE_SECONDS.get(block.split()[0], {}).get(node.keyword)
    if rng is None or not node.args:
        return None
    text = node.args[0]
    lo, hi = rng
    if text.isdigit() and lo <= int(text) <= hi:
        return None
    return (f"{node.keyword} {text}: keepalived 2.2.7 takes whole seconds {lo}..{hi} only, "
            f"ignores this value and keeps its default; vrrpd uses {text}")


class Builder:
    def __init__(self, report: Report):
        self.report = report
        self.bfd_names: set[str] = set()     # bfd_instance names, for track_bfd

    def fill(self, node: Node, table: dict, block: str, out: dict | None = None) -> dict:
        """Apply each child statement of `node` through `table`; errors are reported."""
        out = {} if out is None else out
        for child in node.children or ():
            conv = table.get(child.keyword)
            if conv is None:
                if block == "global_defs" and child.keyword in GLOBAL_IGNORED:
                    self.report.warn(child.where,
                                     f"'{child.keyword}' does not concern VRRP: ignored")
                    continue
                self.report.error(child.where, f"unknown keyword '{child.keyword}' in {block}")
                continue
            differs = keepalived_differs(block, child)
            if differs:
                self.report.warn(child.where, differs)
            try:
                if conv.__code__.co_argcount == 2:      # function(node, out)
                    conv(child, out)
                else:
                    key = _GLOBAL_ALIASES.get(child.keyword, child.keyword)
                    value = conv(child)
                    if isinstance(value, tuple) and isinstance(out.get(key), tuple) and key not in (
                            "vrrp_garp_extra_if", "garp_extra_if", "vmac_garp_intvl"):
                        value = out[key] + value     # repeated list blocks add up (keepalived)
                    out[key] = value
            except BadValue as e:
                self.report.error(child.where, str(e))
        return out

    def named(self, node: Node, kind: str) -> str | None:
        if len(node.args) != 1:
            self.report.error(node.where, f"{kind} needs exactly one name")
            return None
        if node.children is None:
            self.report.error(node.where, f"{kind} {node.args[0]} needs a {{ ... }} block")
            return None
        return node.args[0]

    def build(self, tree: list[Node]) -> tuple[Config, dict]:
        rep = self.report
        glob_kw: dict = {}
        raw_instances: dict[str, tuple[Node, dict]] = {}
        scripts: dict[str, VrrpScript] = {}
        tfiles: dict[str, TrackFile] = {}
        tprocs: dict[str, TrackProcess] = {}
        groups: dict[str, SyncGroup] = {}
        garp_groups: list[GarpGroup] = []
        static_ip: list[VirtualAddress] = []
        static_routes: list[Route] = []
        static_rules: list[Rule] = []
        track_groups: dict[str, tuple[str, ...]] = {}
        linkbeat: dict[str, str | None] = {}
        updown: dict[str, tuple] = {}
        for node in tree:
            k = node.keyword
            try:
                if k == "global_defs":
                    glob_kw["where"] = node.where
                    self.fill(node, GLOBAL, "global_defs", glob_kw)
                elif k == "vrrp_instance":
                    name = self.named(node, k)
                    if name is None:
                        continue
                    if name in raw_instances:
                        rep.error(node.where, f"vrrp_instance {name} already defined")
                        continue
                    raw_instances[name] = (node, self.fill(node, INSTANCE, f"vrrp_instance {name}"))
                elif k == "vrrp_script":
                    self._object(node, k, scripts, SCRIPT, VrrpScript)
                elif k in ("track_file", "vrrp_track_file"):
                    self._object(node, k, tfiles, TRACK_FILE, TrackFile)
                elif k == "vrrp_track_process":
                    self._object(node, k, tprocs, TRACK_PROCESS, TrackProcess)
                elif k == "vrrp_sync_group":
                    self._object(node, k, groups, SYNC_GROUP, SyncGroup)
                elif k == "garp_group":
                    garp_groups.append(GarpGroup(where=node.where,
                                                 **self.fill(node, GARP_GROUP, k)))
                elif k == "static_ipaddress":
                    static_ip.extend(v.vips(node))
                elif k == "static_routes":
                    static_routes.extend(v.routes(node))
                elif k == "static_rules":
                    static_rules.extend(v.rules(node))
                elif k == "track_group":
                    name = self.named(node, k)
                    if name:
                        members: tuple[str, ...] = ()
                        for c in node.children or ():
                            if c.keyword != "group":
                                rep.error(c.where, f"unknown keyword '{c.keyword}' in track_group")
                            else:
                                members = v.name_list(c)
                        track_groups[name] = members
                elif k == "linkbeat_interfaces":
                    for c in v.block_items(node):
                        linkbeat[c.keyword] = c.args[0] if c.args else None
                elif k == "interface_up_down_delays":
                    for c in v.block_items(node):
                        down = v.number(v.arg(c), 0, 255, "down delay")
                        up = v.number(c.args[1], 0, 255, "up delay") if len(c.args) > 1 else down
                        updown[c.keyword] = (down, up)
                elif k in TOP_SKIPPED:
                    if k == "bfd_instance" and node.args:
                        self.bfd_names.add(node.args[0])
                    rep.warn(node.where, f"'{k}' is not VRRP configuration: skipped")
                else:
                    rep.error(node.where, f"unknown keyword '{k}'")
            except BadValue as e:
                rep.error(node.where, str(e))
        for fifo in ("notify_fifo", "vrrp_notify_fifo"):
            script = glob_kw.pop(fifo + "_script", None)
            if script is None:
                continue
            if fifo not in glob_kw:
                rep.error(script.where, f"{fifo}_script without {fifo}")
            else:
                glob_kw[fifo] = dataclasses.replace(glob_kw[fifo], script=script)
        g = GlobalDefs(**glob_kw)
        instances = {name: self.instance(name, node, kw, g)
                     for name, (node, kw) in raw_instances.items()}
        cfg = Config(global_defs=g, instances=instances, scripts=scripts, track_files=tfiles,
                     track_processes=tprocs, sync_groups=groups, garp_groups=tuple(garp_groups),
                     static_ipaddress=tuple(static_ip), static_routes=tuple(static_routes),
                     static_rules=tuple(static_rules), track_groups=track_groups,
                     linkbeat_interfaces=linkbeat, interface_up_down_delays=updown)
        return cfg, {name: kw for name, (_, kw) in raw_instances.items()}

    def _object(self, node: Node, kind: str, into: dict, table: dict, cls) -> None:
        name = self.named(node, kind)
        if name is None:
            return
        if name in into:
            self.report.error(node.where, f"{kind} {name} already defined")
            return
        into[name] = cls(name=name, where=node.where, **self.fill(node, table, f"{kind} {name}"))

    def instance(self, name: str, node: Node, kw: dict, g: GlobalDefs) -> VrrpInstance:
        """Resolve keepalived's defaults and inheritance from global_defs."""
        out = dict(kw)
        if "priority" not in out:
            out["priority"] = 255 if out.get("state") == "MASTER" else 100
        family = None
        for src in (*out.get("virtual_ipaddress", ()),):
            family = src.family
            break
        if family is None:
            for a in (out.get("unicast_src_ip"), out.get("mcast_src_ip"),
                      *(p.address for p in out.get("unicast_peer", ()))):
                if a is not None:
                    family = a.version
                    break
        if family is None:
            family = 6 if out.get("native_ipv6") else 4
        out["family"] = family
        out.setdefault("version", 3 if family == 6 else g.vrrp_version)
        strict = out.setdefault("strict_mode", g.vrrp_strict)
        out.setdefault("accept", not strict or out["priority"] == 255)
        out.setdefault("skip_check_adv_addr", g.vrrp_skip_check_adv_addr)
        out["check_unicast_src"] = out.get("check_unicast_src", False) or g.vrrp_check_unicast_src \
            or any(p.min_ttl is not None or p.max_ttl is not None
                   for p in out.get("unicast_peer", ()))
        out.setdefault("garp_master_delay", g.vrrp_garp_master_delay)
        out.setdefault("garp_master_repeat", g.vrrp_garp_master_repeat)
        out.setdefault("garp_lower_prio_delay", g.vrrp_garp_lower_prio_delay
                       if g.vrrp_garp_lower_prio_delay is not None else out["garp_master_delay"])
        out.setdefault("garp_lower_prio_repeat", g.vrrp_garp_lower_prio_repeat
                       if g.vrrp_garp_lower_prio_repeat is not None else out["garp_master_repeat"])
        out.setdefault("garp_master_refresh", g.vrrp_garp_master_refresh)
        out.setdefault("garp_master_refresh_repeat", g.vrrp_garp_master_refresh_repeat)
        out.setdefault("garp_extra_if", g.vrrp_garp_extra_if)
        out.setdefault("down_timer_adverts", g.vrrp_down_timer_adverts)
        out.setdefault("lower_prio_no_advert", g.vrrp_lower_prio_no_advert
                       if g.vrrp_lower_prio_no_advert is not None else strict)
        out.setdefault("higher_prio_send_advert", g.vrrp_higher_prio_send_advert)
        out.setdefault("notify_priority_changes", g.vrrp_notify_priority_changes)
        out.setdefault("v3_checksum_as_v2", g.v3_checksum_as_v2)
        default_alert = g.smtp_alert_vrrp if g.smtp_alert_vrrp is not None else g.smtp_alert
        out.setdefault("smtp_alert", bool(default_alert))
        return VrrpInstance(name=name, where=node.where, **out)

