"""Semantic checks across the model, keepalived's rules (keepalived.conf(5),
vrrp_complete_instance()/vrrp_complete_init() behaviour), each reported at FILE:LINE.

Returns the config with keepalived's adjustments applied (sync-group members'
tracking weights forced to 0).  What cannot be checked statically: whether an
instance with priority 255 really owns its addresses (keepalived decides that
from the interface's addresses at run time) and whether interfaces exist --
the daemon checks both when it starts.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from .model import Config, Track, VrrpInstance
from .problems import Report


def validate(cfg: Config, raw: dict[str, dict], bfd_names: set[str], report: Report) -> Config:
    for name, inst in cfg.instances.items():
        _instance(inst, raw[name], cfg, bfd_names, report)
    _duplicate_vrids(cfg, report)
    cfg = _sync_groups(cfg, bfd_names, report)
    _tracked_objects(cfg, report)
    g = cfg.global_defs
    if cfg.scripts and not g.enable_script_security and g.script_user is None:
        # keepalived -t fails here ("SECURITY VIOLATION"); vrrpd only warns.
        first = next(iter(cfg.scripts.values()))
        report.warn(first.where, "scripts will run as root without enable_script_security")
    if g.notify_fifo and g.vrrp_notify_fifo and g.notify_fifo.path == g.vrrp_notify_fifo.path:
        report.error(g.vrrp_notify_fifo.where, "notify_fifo and vrrp_notify_fifo must differ")
    return cfg


def _instance(inst: VrrpInstance, raw: dict, cfg: Config, bfd_names: set[str], rep: Report) -> None:
    where, n = inst.where, f"vrrp_instance {inst.name}"
    if "virtual_router_id" not in raw:
        rep.error(where, f"{n}: virtual_router_id must be set")
    if inst.interface is None and not inst.unicast_peer:
        rep.error(where, f"{n}: no interface (required unless unicast peers are configured)")
    # RFC 3768 5.3.7: v2 Adver Int is whole seconds (8 bits); RFC 5798 5.2.7: v3 is
    # 12 bits of centiseconds.
    if inst.version == 2:
        if inst.advert_int != int(inst.advert_int) or not 1 <= inst.advert_int <= 255:
            rep.error(where, f"{n}: VRRPv2 advert_int must be whole seconds 1..255, "
                             f"not {inst.advert_int:g}")
    elif not 0.01 <= inst.advert_int <= 40.95:
        rep.error(where, f"{n}: VRRPv3 advert_int must be 0.01..40.95 s, not {inst.advert_int:g}")
    if inst.family == 6 and raw.get("version") == 2:
        rep.error(where, f"{n}: VRRP version 2 cannot carry IPv6 addresses (RFC 3768)")
    for vip in inst.virtual_ipaddress:
        if vip.family != inst.family:
            rep.error(vip.where, f"{n}: {vip.address} is IPv{vip.family} but the instance is "
                                 f"IPv{inst.family} (use virtual_ipaddress_excluded "
                                 f"for mixed families)")
    for label, addr in (("unicast_src_ip", inst.unicast_src_ip),
                        ("mcast_src_ip", inst.mcast_src_ip),
                        ("mcast_dst_ip", inst.mcast_dst_ip)):
        if addr is not None and addr.version != inst.family:
            rep.error(where, f"{n}: {label} {addr} is not IPv{inst.family}")
    if inst.mcast_dst_ip is not None and not inst.mcast_dst_ip.is_multicast:
        rep.error(where, f"{n}: mcast_dst_ip {inst.mcast_dst_ip} is not a multicast address")
    for peer in inst.unicast_peer:
        if peer.address.version != inst.family:
            rep.error(peer.where, f"{n}: unicast_peer {peer.address} is not IPv{inst.family}")
    if inst.use_vmac and inst.unicast_peer and not inst.vmac_xmit_base:
        rep.error(where, f"{n}: use_vmac with unicast_peer needs vmac_xmit_base")
    if inst.version == 3 and inst.authentication is not None:
        rep.error(inst.authentication.where, f"{n}: VRRPv3 has no authentication (RFC 5798)")
    if inst.nopreempt and inst.state == "MASTER":
        rep.error(where, f"{n}: nopreempt does not work with state MASTER")
    if inst.strict_mode:
        _strict(inst, raw, rep)
    _refs(n, inst, cfg, bfd_names, rep)
    if inst.priority == 255:
        for t in _all_tracks(inst):
            if t.weight:
                rep.warn(t.where, f"{n}: address owner (priority 255) ignores "
                                  f"tracking weight {t.weight}")


def _strict(inst: VrrpInstance, raw: dict, rep: Report) -> None:
    """vrrp_strict / strict_mode: keepalived.conf(5) list of enforced rules."""
    n, where = f"vrrp_instance {inst.name} (strict mode)", inst.where
    if not inst.virtual_ipaddress:
        rep.error(where, f"{n}: at least one virtual_ipaddress is required")
    if inst.unicast_peer:
        rep.error(where, f"{n}: unicast peers are not allowed")
    if inst.authentication is not None:
        rep.error(inst.authentication.where, f"{n}: authentication is not allowed")
    if inst.preempt_delay:
        rep.error(where, f"{n}: preempt_delay is not allowed")
    if (inst.state == "MASTER") != (inst.priority == 255):
        rep.error(where, f"{n}: state MASTER if and only if priority 255")
    if inst.version == 2 and "accept" in raw and raw["accept"]:
        rep.error(where, f"{n}: accept mode cannot be set for VRRPv2")
    if inst.vmac_xmit_base:
        rep.error(where, f"{n}: vmac_xmit_base is not allowed")
    if inst.family == 6 and inst.virtual_ipaddress and \
            not inst.virtual_ipaddress[0].address.ip.is_link_local:
        rep.error(inst.virtual_ipaddress[0].where, f"{n}: the first IPv6 VIP must be link-local")


def _all_tracks(obj) -> list[Track]:
    return [*obj.track_interface, *obj.track_script, *obj.track_file,
            *obj.track_process, *obj.track_bfd]


def _refs(n: str, obj, cfg: Config, bfd_names: set[str], rep: Report) -> None:
    for kind, known in (("track_script", cfg.scripts), ("track_file", cfg.track_files),
                        ("track_process", cfg.track_processes), ("track_bfd", bfd_names)):
        for t in getattr(obj, kind):
            if t.name not in known:
                rep.error(t.where, f"{n}: {kind} '{t.name}' is not defined")


def _duplicate_vrids(cfg: Config, rep: Report) -> None:
    """One VRID per (interface, family, multicast group); unicast instances may share
    a VRID when their peer sets do not overlap (keepalived.conf(5) virtual_router_id)."""
    seen: dict[tuple, list[VrrpInstance]] = {}
    for inst in cfg.instances.values():
        key = (inst.interface, inst.family, inst.virtual_router_id,
               None if inst.unicast_peer else inst.mcast_dst_ip)
        for other in seen.get(key, ()):
            if inst.unicast_peer and other.unicast_peer and not (
                    {p.address for p in inst.unicast_peer}
                    & {p.address for p in other.unicast_peer}):
                continue
            if bool(inst.unicast_peer) != bool(other.unicast_peer):
                continue
            rep.error(inst.where, f"vrrp_instance {inst.name}: VRID {inst.virtual_router_id} is "
                                  f"already used on {inst.interface} (IPv{inst.family}) by "
                                  f"{other.name} at {other.where[0]}:{other.where[1]}")
            break
        seen.setdefault(key, []).append(inst)


def _effective_weight(t: Track, kind: str, cfg: Config) -> int:
    if t.weight is not None:
        return t.weight
    tables: dict[str, dict[str, Any]] = {
        "track_script": cfg.scripts, "track_file": cfg.track_files,
        "track_process": cfg.track_processes}
    obj = tables.get(kind, {}).get(t.name)
    return getattr(obj, "weight", 0) or 0


def _sync_groups(cfg: Config, bfd_names: set[str], rep: Report) -> Config:
    member_of: dict[str, str] = {}
    instances = dict(cfg.instances)
    for g in cfg.sync_groups.values():
        n = f"vrrp_sync_group {g.name}"
        if not g.group:
            rep.error(g.where, f"{n}: no group {{ ... }} of instances")
        for m in g.group:
            if m not in cfg.instances:
                rep.error(g.where, f"{n}: member '{m}' is not a vrrp_instance")
            elif m in member_of and member_of[m] != g.name:
                rep.error(g.where, f"{n}: '{m}' is already a member of sync group {member_of[m]}")
            else:
                member_of[m] = g.name
        if len(set(g.group)) == 1:
            rep.warn(g.where, f"{n}: only one member; a sync group needs two to do anything")
        _refs(n, g, cfg, bfd_names, rep)
        if g.sync_group_tracking_weight or g.global_tracking:
            continue
        # keepalived.conf(5) says members' tracking weights are set to zero;
        # what 2.2.7 does (measured, tests/test_semantics.py) differs by kind:
        # a weighted track_script or track_file is dropped from the member
        # (its changes do nothing at all); a track_interface weight is kept
        # (it logs "ignoring ... weight" yet moves the priority); track_process
        # and track_bfd weights are kept, with no message.
        for m in set(g.group) & set(instances):
            inst = instances[m]
            changes: dict[str, Any] = {}
            for kind in ("track_script", "track_file"):
                ts = getattr(inst, kind)
                dropped = [t for t in ts if _effective_weight(t, kind, cfg)]
                for t in dropped:
                    rep.warn(t.where, f"vrrp_instance {m}: ignoring {kind} {t.name} with weight "
                                      f"(member of sync group {g.name}, as keepalived; "
                                      f"see sync_group_tracking_weight)")
                if dropped:
                    changes[kind] = tuple(t for t in ts if t not in dropped)
            for t in inst.track_interface:
                if t.weight:
                    rep.warn(t.where, f"vrrp_instance {m}: track_interface {t.name} weight "
                                      f"{t.weight} kept on a member of sync group {g.name} "
                                      f"(keepalived 2.2.7 logs that it ignores it, yet applies it)")
            if changes:
                instances[m] = dataclasses.replace(inst, **changes)
    instances = {n: dataclasses.replace(i, sync_group=member_of[n]) if n in member_of else i
                 for n, i in instances.items()}
    return dataclasses.replace(cfg, instances=instances)


def _tracked_objects(cfg: Config, rep: Report) -> None:
    for s in cfg.scripts.values():
        if s.script is None:
            rep.error(s.where, f"vrrp_script {s.name}: no script")
    for f in cfg.track_files.values():
        if f.file is None:
            rep.error(f.where, f"track_file {f.name}: no file")
    for p in cfg.track_processes.values():
        if not p.process:
            rep.error(p.where, f"vrrp_track_process {p.name}: no process")
        if p.quorum_max is not None and p.quorum_max < p.quorum:
            rep.error(p.where, f"vrrp_track_process {p.name}: quorum_max < quorum")
