"""The reload's heavy part, in a forked child: read the new configuration,
resolve it and diff it against the running one -- off the daemon's GIL.

Parsing 1,000 instances takes 0.2-1 s of pure Python; in a thread of the
daemon it competed with the loop for the GIL and delayed adverts.  A child
made by os.fork() inherits the running plan for free (copy-on-write), works
on the other core, and sends back (one pickle over a pipe) only what the
loop needs: the instances in their new order, each either "the running one,
unchanged" (the daemon keeps its objects) or the new InstanceSpec, pickled
on its own so the daemon can unpickle a large change in slices.

fork() is safe because the daemon has no other Python thread; the child
never touches the event loop, resets the signals the daemon handles (their
handlers write to the loop's wakeup fd) and leaves with os._exit().
"""
from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import signal
import traceback
from dataclasses import dataclass, field

from .config import Config, load
from .plan import InstanceSpec, Plan, build_plan

# The daemon's signal handlers; the child must not answer them.
DAEMON_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
                  signal.SIGRTMIN + 2)

CHANGED, REPLACED, ADDED = "changed", "replaced", "added"


@dataclass
class Outcome:
    """What the child found.  names: the new configuration's instance names
    in order, one string ("\\n"-joined: one object to unpickle, not 1,000);
    changes: (position in names, kind, running name or None) of each
    instance that is not SAME, with its pickled InstanceSpec in specs."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skeleton: Plan | None = None          # the new plan without its instances
    names: str = ""
    changes: list[tuple[int, str, str | None]] = field(default_factory=list)
    specs: list[bytes] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)    # running names
    globals_same: bool = False            # everything but the instances is unchanged


def engine_settings(spec: InstanceSpec) -> tuple:
    """What Engine.add_instance() fixes; a change means replacing the instance.
    (Not the advert's address list: Engine.set_advert_addrs; nor timing and
    election settings: Engine.retune, see plan.engine_tunables.)"""
    return (spec.advert_interface, spec.version, spec.src_ip, tuple(spec.unicast_peers),
            spec.auth_type, spec.auth_pass, spec.v3_checksum_as_v2, spec.priority == 255)


def norm(obj):
    """A comparable form of a config object without its `where`: a block
    that only moved in the file is not a changed block."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__,) + tuple(
            norm(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name != "where")
    if isinstance(obj, dict):
        return tuple((k, norm(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return tuple(norm(v) for v in obj)
    return obj


def skeleton(plan: Plan) -> Plan:
    return dataclasses.replace(plan, instances=[],
                               config=dataclasses.replace(plan.config, instances={}, files=()))


def compute(path: str, config_id: str | None, running: Plan, current: dict[str, InstanceSpec]) -> Outcome:
    """Parse, plan and diff.  current: the running instances by name (their specs)."""
    result = load(path, config_id=config_id)
    out = Outcome(errors=[str(e) for e in result.errors],
                  warnings=[str(w) for w in result.warnings])
    if result.errors:
        return out
    plan = build_plan(result.config)
    out.skeleton = skeleton(plan)
    out.globals_same = norm(out.skeleton) == norm(skeleton(running))
    # keepalived matches instances by identity, not name (vrrp.c vrrp_exist).
    old = {Config.instance_key(s.conf): name for name, s in current.items()}
    for pos, spec in enumerate(plan.instances):
        name = old.pop(Config.instance_key(spec.conf), None)
        if name is None:
            kind = ADDED
        elif engine_settings(current[name]) != engine_settings(spec):
            kind = REPLACED
        elif name == spec.name and norm(current[name]) == norm(spec):
            continue                                    # SAME: the daemon keeps its objects
        else:
            kind = CHANGED
        out.changes.append((pos, kind, name))
        out.specs.append(pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL))
    out.names = "\n".join(s.name for s in plan.instances)
    out.removed = list(old.values())
    return out


def run(wfd: int, path: str, config_id: str | None, running: Plan,
        current: dict[str, InstanceSpec]) -> None:
    """The child's whole life after fork(): never returns."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in DAEMON_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        gc.disable()            # short-lived: do not dirty the shared pages
        # Only spare CPU, on any core: the daemon (maybe real-time, pinned by
        # vrrp_cpu_affinity) and its peers come first.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
        try:
            out = compute(path, config_id, running, current)
        except Exception:
            out = Outcome(errors=["reload failed: " + traceback.format_exc(limit=5)])
        data = pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(data)
        while view:
            view = view[os.write(wfd, view):]
        code = 0
    finally:
        os._exit(code)
