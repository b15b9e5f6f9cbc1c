"""The reload's heavy part, in a process of its own: read the new
configuration, resolve it and diff it against the running one -- off the
daemon's GIL and out of its memory.

Parsing thousands of instances is long pure Python: in a thread of the
daemon it would compete with the loop for the GIL and delay adverts.  In a
forked child every page the daemon writes while the child lives is a
copy-on-write fault, which slows the loop's work for that while.  So
the reader is exec'd afresh (`python -m vrrpd.core.reload`, spawned with
vfork: no page tables copied) and compares against fingerprints of the
running configuration instead of the objects themselves: a digest of each
instance's settings, of its engine settings, and of everything global.
It sends back (one pickle on stdout) only what the loop needs: the
instances in their new order, each either "the running one, unchanged" (the
daemon keeps its objects) or the new InstanceSpec, pickled on its own so
the daemon can unpickle a large change in slices; where every instance now
is in the file (the fingerprints ignore `where`, so an unchanged instance
may have moved); and the fingerprints of the new configuration, for the
next reload.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import os
import pickle
import resource
import sys
import traceback
from dataclasses import dataclass, field

from vrrpd.config import Config, load
from vrrpd.core.plan import InstanceSpec, Plan, Positions, build_plan, lean_plan, lean_spec

CHANGED, REPLACED, ADDED = "changed", "replaced", "added"


@dataclass
class Outcome:
    """What the child found.  names: the new configuration's instance names
    in order, one string ("\\n"-joined: one object to unpickle, not 1,000);
    positions: where each one's block is, in the same order; changes:
    (position in names, kind, running name or None) of each instance that
    is not SAME, with its pickled InstanceSpec in specs."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    skeleton: Plan | None = None          # the new plan without its instances
    names: str = ""
    positions: Positions = field(default_factory=Positions)
    changes: list[tuple[int, str, str | None]] = field(default_factory=list)
    specs: list[bytes] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)    # running names
    globals_same: bool = False            # everything but the instances is unchanged
    # Of the new configuration (main: pickled).
    fingerprints: "Fingerprints | bytes | None" = None


@dataclass
class Fingerprints:
    """What the reader compares a new configuration with.  instances: name ->
    (Config.instance_key, digest of the engine settings, digest of the spec)."""
    globals: bytes
    instances: dict


def digest(obj) -> bytes:
    """The same in every process for equal settings: repr of norm() (sets
    sorted, no `where`), never Python's per-process string hashing."""
    return hashlib.blake2b(repr(norm(obj)).encode(), digest_size=16).digest()


def fingerprints(plan: Plan, specs) -> Fingerprints:
    """specs: the running InstanceSpecs (the plan's, or the daemon's by name)."""
    return Fingerprints(digest(skeleton(plan)), {
        s.name: (Config.instance_key(s.conf), digest(engine_settings(s)), digest(s))
        for s in specs})


def engine_settings(spec: InstanceSpec) -> tuple:
    """What Engine.add_instance() fixes; a change means replacing the instance.
    (Not the advert's address list: Engine.set_advert_addrs; nor the
    destinations: Engine.set_peers; nor version, timing and election
    settings: Engine.retune, see plan.engine_tunables.)"""
    return (spec.advert_interface, spec.src_ip, spec.auth_type, spec.auth_pass,
            spec.v3_checksum_as_v2, spec.priority == 255)


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
    if isinstance(obj, (set, frozenset)):
        return ("set",) + tuple(sorted((norm(v) for v in obj), key=repr))
    return obj


def skeleton(plan: Plan) -> Plan:
    return dataclasses.replace(plan, instances=[], positions=Positions(),
                               config=dataclasses.replace(plan.config, instances={}, files=()))


def compute(path: str, config_id: str | None, running: Fingerprints) -> Outcome:
    """Parse, plan and diff against the running configuration's fingerprints."""
    result = load(path, config_id=config_id)
    out = Outcome(errors=[str(e) for e in result.errors],
                  warnings=[str(w) for w in result.warnings])
    if result.errors:
        return out
    plan = build_plan(result.config)
    out.fingerprints = new = fingerprints(plan, plan.instances)
    out.skeleton = skeleton(plan)
    out.globals_same = new.globals == running.globals
    # keepalived matches instances by identity, not name (vrrp.c vrrp_exist).
    old = {key: name for name, (key, _, _) in running.instances.items()}
    for pos, spec in enumerate(plan.instances):
        name = old.pop(Config.instance_key(spec.conf), None)
        _, engine_fp, fp = new.instances[spec.name]
        if name is None:
            kind = ADDED
        elif running.instances[name][1] != engine_fp:
            kind = REPLACED
        elif name == spec.name and running.instances[name][2] == fp:
            continue                                    # SAME: the daemon keeps its objects
        else:
            kind = CHANGED
        out.changes.append((pos, kind, name))
        out.specs.append(pickle.dumps(lean_spec(spec, {}), protocol=pickle.HIGHEST_PROTOCOL))
    out.names = "\n".join(s.name for s in plan.instances)
    out.positions = plan.positions
    out.removed = list(old.values())
    return out


@dataclass
class Startup:
    """The daemon's start-up configuration (`--plan`): the plan (lean_plan)
    and its fingerprints, one pickle, so that the daemon's heap never holds the
    configuration's text, tokens and parse tree.  Freed among the long-lived
    objects they left holes that stayed resident for the daemon's life."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    plan: Plan | None = None
    fingerprints: Fingerprints | bytes | None = None    # main(): pickled


def share_numbers(root) -> None:
    """Equal floats and large ints in the dataclasses under `root` become
    one object each (fields of frozen dataclasses are set as their
    __init__ does): every instance repeats its advert_int, garp_* delays and
    the like, and pickle writes numbers by value, so the daemon runs this
    on what it unpickled."""
    canon: dict = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if isinstance(obj, (list, tuple)):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type) and id(obj) not in seen:
            seen.add(id(obj))       # an instance's conf is in the plan twice
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                kind = type(value)
                if kind is float or kind is int:
                    # float.hex(): -0.0 and 0.0 stay apart.
                    one = canon.setdefault((kind, value.hex() if kind is float else value), value)
                    if one is not value:
                        object.__setattr__(obj, f.name, one)
                else:
                    stack.append(value)


def startup(path: str, config_id: str | None) -> Startup:
    result = load(path, config_id=config_id)
    out = Startup(errors=[str(e) for e in result.errors],
                  warnings=[str(w) for w in result.warnings])
    if not result.errors:
        plan = build_plan(result.config)
        out.fingerprints = fingerprints(plan, plan.instances)
        out.plan = lean_plan(plan)
    return out


def main() -> int:
    """stdin: pickle of (path, config_id, Fingerprints or their pickle, memory
    limit in bytes or 0); stdout: pickle of the Outcome.  With --plan
    (start-up): stdin (path, config_id), stdout a Startup.  Either one's
    fingerprints go out pickled on their own.  Errors are single lines for
    vrrpctl: a traceback goes to stderr (the daemon's log) only."""
    gc.disable()                        # short-lived
    at_startup = "--plan" in sys.argv[1:]
    if not at_startup:
        # Only spare CPU, on any core: the daemon (maybe real-time, pinned by
        # vrrp_cpu_affinity) and its peers come first.  At start-up the
        # daemon waits for it.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        os.sched_setaffinity(0, range(os.cpu_count() or 1))
    memory = 0
    out: Startup | Outcome | None
    kind = Startup if at_startup else Outcome
    what = "reading the configuration" if at_startup else "reload"
    try:
        if at_startup:
            out = startup(*pickle.load(sys.stdin.buffer))
        else:
            path, config_id, running, memory = pickle.load(sys.stdin.buffer)
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if isinstance(running, bytes):
                running = pickle.loads(running)
            out = compute(path, config_id, running)
        # The daemon only hands its fingerprints back to the next reader:
        # it keeps them pickled, a fraction of the objects' memory.
        if out.fingerprints is not None:
            out.fingerprints = pickle.dumps(out.fingerprints, protocol=pickle.HIGHEST_PROTOCOL)
    except MemoryError:
        out = None
        gc.collect()
        out = kind(errors=[f"{what}: reading the configuration needs more than "
                           f"{memory >> 20} MiB (the reader's limit)"])
    except Exception as e:
        traceback.print_exc(limit=5)
        out = kind(errors=[f"{what} failed: {type(e).__name__}: {str(e)[:200]}"])
    sys.stdout.buffer.write(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    # Run as vrrpd.core.reload.child, not as __main__: the daemon unpickles its classes.
    from vrrpd.core.reload import child as reloadchild
    sys.exit(reloadchild.main())
