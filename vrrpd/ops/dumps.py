"""What the daemon shows of itself: the status and stats views behind
`vrrpctl` (JSON) and keepalived's signal dumps (SIGUSR1 data, SIGUSR2 stats,
SIGRTMIN+2 JSON, written to keepalived's paths unless configured).

Instance view (a JSON object; `vrrpctl status --json` lists them, schema 1):
  name, interface, family (4|6), vrid, version, state (INIT|BACKUP|MASTER|FAULT),
  base_priority, effective_priority, master_address (null if unknown),
  advert_int (s, configured), master_adver_int (s, learned), preempt,
  preempt_delay (s), vips ["addr/len", ...], transitions,
  last_transition (Unix time or null), last_reason (engine reason or null),
  next_timer (s from now, or null).
`show` adds: defined_at ("file:line" of its vrrp_instance block; a reload
  updates it when the block only moved), tracking {fault, pending, tracks:
  [{kind, name, weight, reverse, value}]}, counters {engine counter: n}.
Stats (`stats --json`): {instances: {name: counters (+ released_master)}, sockets: [{interface,
  family, counters}], engine: {...}, scripts: {...}, fifos: [{path, lines,
  drops, errors}], reloads, reload_failures}.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import time

from vrrpd.engine import MASTER, STATE_NAMES

log = logging.getLogger("vrrpd")

SCHEMA = 1
DATA_PATH = "/tmp/keepalived.data"
STATS_PATH = "/tmp/keepalived.stats"
JSON_PATH = "/tmp/keepalived.json"


def _addr(packed: bytes | None) -> str | None:
    if not packed:
        return None
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def instance_view(daemon, inst, now_us: int) -> dict:
    e, spec, idx = daemon.engine, inst.spec, inst.idx
    deadline = e.deadline(idx)
    return {
        "name": inst.name, "interface": inst.ifname,
        "family": 6 if spec.family == socket.AF_INET6 else 4,
        "vrid": spec.vrid, "version": spec.version, "state": STATE_NAMES[e.state(idx)],
        "base_priority": spec.priority, "effective_priority": e.priority(idx),
        "master_address": _addr(e.master_address(idx)),
        "advert_int": spec.advert_int_cs / 100,
        "master_adver_int": e.master_adver_int_us(idx) / 1e6,
        "preempt": spec.preempt, "preempt_delay": spec.preempt_delay_cs / 100,
        "vips": [v.with_prefixlen for v in spec.vips], "transitions": inst.transitions,
        "last_transition": inst.last_transition or None, "last_reason": inst.last_reason or None,
        "next_timer": round((deadline - now_us) / 1e6, 6) if deadline >= 0 else None,
    }


def tracking_view(daemon, name: str) -> dict:
    ti = daemon.trackers.instances.get(name)
    if ti is None:
        return {}
    return {"fault": ti.verdict.fault, "pending": ti.verdict.pending,
            "tracks": [{"kind": k, "name": t.name, "weight": t.weight, "reverse": t.reverse,
                        "value": v} for k, t, v in ti.states()]}


def status(daemon) -> dict:
    from vrrpd.core.daemon import now_us
    t = now_us()
    return {"schema": SCHEMA, "pid": os.getpid(), "time": time.time(),
            "instances": [instance_view(daemon, i, t) for i in daemon.instances.values()]}


def show(daemon, name: str) -> dict:
    from vrrpd.core.daemon import now_us
    inst = daemon.instances.get(name)
    if inst is None:
        raise KeyError(f"no instance {name!r}")
    view = instance_view(daemon, inst, now_us())
    view["defined_at"] = daemon.plan.where(name)
    view["tracking"] = tracking_view(daemon, name)
    view["counters"] = counters(daemon.engine, inst.idx)
    return view


def counters(engine, idx: int) -> dict:
    c = engine.counters(idx)
    # Every entry into MASTER but the current one ended in a release.
    c["released_master"] = c["became_master"] - (engine.state(idx) == MASTER)
    return c


def stats(daemon, reloader=None) -> dict:
    e = daemon.engine
    reporter = next((h for h in daemon.hooks if hasattr(h, "notifier")), None)
    fifos = reporter.notifier.fifos if reporter is not None else []
    return {
        "schema": SCHEMA,
        "instances": {i.name: counters(e, i.idx) for i in daemon.instances.values()},
        "sockets": [{"interface": ifname, "family": 6 if fam == socket.AF_INET6 else 4,
                     "counters": e.socket_counters(sid)}
                    for (ifname, fam), (sid, _) in daemon.sockets.items()],
        "engine": e.stats(),
        "scripts": vars(daemon.runner.counters).copy(),
        "fifos": [{"path": f.path, "lines": f.lines, "drops": f.drops, "errors": f.errors}
                  for f in fifos],
        "reloads": reloader.reloads if reloader else 0,
        "reload_failures": reloader.failures if reloader else 0,
    }


# -- keepalived-like text ------------------------------------------------------------

def data_text(st: dict) -> str:
    """SIGUSR1: the state of every instance (keepalived's /tmp/keepalived.data)."""
    out = ["------< VRRP Topology >------"]
    for v in st["instances"]:
        next_timer = "(none)" if v["next_timer"] is None else f"{v['next_timer']:g} sec"
        out += [f" VRRP Instance = {v['name']}",
                f"   State = {v['state']}",
                f"   Interface = {v['interface']}",
                f"   Virtual Router ID = {v['vrid']}",
                f"   VRRP Version = {v['version']}",
                f"   Family = IPv{v['family']}",
                f"   Base priority = {v['base_priority']}",
                f"   Effective priority = {v['effective_priority']}",
                f"   Master address = {v['master_address'] or '(none)'}",
                f"   Advert interval = {v['advert_int']:g} sec",
                f"   Master advert interval = {v['master_adver_int']:g} sec",
                f"   Preempt = {'enabled' if v['preempt'] else 'disabled'}",
                f"   Preempt delay = {v['preempt_delay']:g} sec",
                f"   Next timer = {next_timer}",
                f"   Transitions = {v['transitions']}",
                f"   Last transition = {_when(v['last_transition'])} ({v['last_reason'] or '-'})",
                f"   Virtual IP = {len(v['vips'])}"]
        out += [f"     {a}" for a in v["vips"]]
    return "\n".join(out) + "\n"


def stats_text(st: dict) -> str:
    """SIGUSR2: per-instance counters (keepalived's /tmp/keepalived.stats layout, plus
    every reject reason by name)."""
    out = []
    for name, c in st["instances"].items():
        out += [f"VRRP Instance: {name}",
                "  Advertisements:",
                f"    Received: {c['adverts_received']}",
                f"    Sent: {c['adverts_sent']}",
                f"  Became master: {c['became_master']}",
                f"  Released master: {c['released_master']}",
                "  Priority Zero:",
                f"    Received: {c['pri0_received']}",
                f"    Sent: {c['pri0_sent']}",
                "  Rejected:"]
        out += [f"    {k[7:]}: {n}" for k, n in c.items()
                if k.startswith("reject_") and k != "reject_none"]
    for s in st["sockets"]:
        out += [f"Socket {s['interface']} IPv{s['family']}:"]
        out += [f"  {k}: {n}" for k, n in s["counters"].items() if n]
    return "\n".join(out) + "\n"


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "never"


def write_file(path: str, text: str) -> None:
    """Atomically, never following a symlink planted at a /tmp path."""
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".vrrpd-dump-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class Dumps:
    """The signal handlers' side: build the view, write the file, log failures."""

    def __init__(self, daemon, reloader=None, data_path: str = DATA_PATH,
                 stats_path: str = STATS_PATH, json_path: str = JSON_PATH):
        self.daemon, self.reloader = daemon, reloader
        self.data_path, self.stats_path, self.json_path = data_path, stats_path, json_path

    def data(self) -> None:
        self._write(self.data_path, lambda: data_text(status(self.daemon)))

    def stats(self) -> None:
        self._write(self.stats_path, lambda: stats_text(stats(self.daemon, self.reloader)))

    def json(self) -> None:
        self._write(self.json_path, lambda: json.dumps(
            {"status": status(self.daemon), "stats": stats(self.daemon, self.reloader)},
            indent=1) + "\n")

    def _write(self, path: str, build) -> None:
        try:
            write_file(path, build())
            log.info("wrote %s", path)
        except Exception as e:      # a dump must never take the daemon down
            log.error("cannot write %s: %s", path, e)
