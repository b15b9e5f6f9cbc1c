"""The typed stubs vrrpd/<name>.pyi of every pyx/<name>.pyx say what the
compiled modules hold: the same public names, the same classes' public
members, and each function's parameters (names, kinds, defaults present) as
the built extension reports them.  A .pyx change the stub does not follow
fails here, not in a type checker's trust."""
import ast
import importlib
import inspect
import os
import socket
import types

import pytest

from vrrpd import engine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(f[:-len(".pyx")] for f in os.listdir(os.path.join(ROOT, "pyx"))
                 if f.endswith(".pyx"))


def stub(name):
    with open(os.path.join(ROOT, "vrrpd", name + ".pyi")) as f:
        return ast.parse(f.read())


def public(names):
    return {n for n in names if not n.startswith("_")}


def stub_names(body):
    """Names a stub body defines -> {name: ast node}."""
    out = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


def module_names(mod):
    return public(n for n in vars(mod)
                  if not isinstance(getattr(mod, n), types.ModuleType))


def stub_params(fn: ast.FunctionDef):
    a = fn.args
    pos = a.posonlyargs + a.args
    first_default = len(pos) - len(a.defaults)
    out = [(p.arg, "POSITIONAL_OR_KEYWORD", i >= first_default) for i, p in enumerate(pos)]
    out += [(p.arg, "KEYWORD_ONLY", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    return out


def real_params(fn):
    sig = inspect.signature(fn)
    return [(p.name, p.kind.name, p.default is not inspect.Parameter.empty)
            for p in sig.parameters.values()]


@pytest.mark.parametrize("name", MODULES)
def test_stub_names_are_the_modules_public_names(name):
    mod = importlib.import_module("vrrpd." + name)
    defined = public(stub_names(stub(name).body))
    assert defined == module_names(mod), "stub and module differ"


@pytest.mark.parametrize("name", MODULES)
def test_stub_classes_and_functions_match_the_compiled_ones(name):
    mod = importlib.import_module("vrrpd." + name)
    checked = 0
    for n, node in stub_names(stub(name).body).items():
        obj = getattr(mod, n, None)
        if isinstance(node, ast.FunctionDef) and not n.startswith("_"):
            assert stub_params(node) == real_params(obj), n
            checked += 1
        elif isinstance(node, ast.ClassDef) and not issubclass(obj, tuple):
            members = stub_names(node.body)
            assert public(members) == public(vars(obj)), n
            for m, fn in members.items():
                if isinstance(fn, ast.FunctionDef) and not m.startswith("_") \
                        and not fn.decorator_list:
                    assert stub_params(fn) == real_params(getattr(obj, m)), f"{n}.{m}"
                    checked += 1
    assert checked


def test_event_stub_has_the_engines_fields():
    node = stub_names(stub("_engine").body)["Event"]
    assert tuple(stub_names(node.body)) == engine.Event._fields


def test_engine_face_is_derived_from_the_engines_constants():
    _engine = importlib.import_module("vrrpd._engine")      # the compiled module itself
    assert [(s.name, s.value) for s in engine.State] == \
        [(n, getattr(_engine, n)) for n in ("INIT", "BACKUP", "MASTER", "FAULT")]
    assert {r.value: r.name for r in engine.Reason} == \
        {getattr(_engine, n): n[len("REASON_"):] for n in vars(_engine) if n.startswith("REASON_")}
    assert {k.value: k.name for k in engine.EventKind} == \
        {getattr(_engine, n): n[len("EV_"):] for n in vars(_engine) if n.startswith("EV_")}
    assert engine.STATE_NAMES[engine.MASTER] == "MASTER"
    assert engine.REASON_NAMES[engine.REASON_SYNC_GROUP] == "sync_group"


def test_pop_events_hands_out_events():
    e = engine.Engine(2)
    sid = e.add_socket(-1, socket.AF_INET, 1)
    idx = e.add_instance(sock_id=sid, vrid=1, version=3, priority=100, advert_int_cs=100,
                         src=bytes([192, 0, 2, 1]), dsts=[bytes([224, 0, 0, 18])],
                         vips=[bytes([192, 0, 2, 100])])
    e.start(idx, 1)
    [ev] = e.pop_events()
    assert type(ev) is engine.Event
    assert ev == (idx, engine.EventKind.STATE, engine.State.BACKUP, engine.Reason.STARTUP)
    assert (ev.idx, ev.kind, ev.code, ev.detail) == tuple(ev)
