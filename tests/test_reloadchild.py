"""The reload's configuration reader (vrrpd/core/reload/child.py) is a process of
its own that compares against fingerprints of the running configuration:
they must be equal in every process for equal settings (no per-process
string hashing, no object addresses), and differ when a setting does."""
import glob
import os
import pickle
import subprocess
import sys

import pytest

from vrrpd.core.reload import child as reloadchild
from vrrpd.config import load
from vrrpd.core.plan import build_plan

SAMPLES = sorted(glob.glob("/usr/share/doc/keepalived/samples/keepalived.conf*"))
PRINT = """
import pickle, sys
from vrrpd.config import load
from vrrpd.core.plan import build_plan
from vrrpd.core.reload import child as reloadchild
out = []
for path in sys.argv[1:]:
    plan = build_plan(load(path).config)
    out.append(reloadchild.fingerprints(plan, plan.instances))
sys.stdout.buffer.write(pickle.dumps(out))
"""


def fingerprints_in_process(paths: list[str], seed: str) -> list:
    return pickle.loads(subprocess.run(
        [sys.executable, "-c", PRINT, *paths], capture_output=True, check=True,
        env={**os.environ, "PYTHONHASHSEED": seed}, timeout=120).stdout)


@pytest.mark.skipif(not SAMPLES, reason="needs Debian's keepalived samples")
def test_fingerprints_are_the_same_in_every_process():
    paths = [p for p in SAMPLES if not load(p).errors]
    assert len(paths) >= 15
    one, two = fingerprints_in_process(paths, "1"), fingerprints_in_process(paths, "2")
    for path, a, b in zip(paths, one, two):
        assert a == b, path


CONF = """
vrrp_script chk {{
    script "/bin/true"
    weight {weight}
}}
vrrp_instance A {{
    interface eth0
    virtual_router_id 1
    priority {prio}
    advert_int {adv}
    version {version}
    track_script {{
        chk
    }}
    virtual_ipaddress {{
        192.0.2.1/32
    }}
}}
vrrp_instance B {{
    interface eth0
    virtual_router_id 2
    priority 100
    virtual_ipaddress {{
        192.0.2.2/32
    }}
}}
"""


def _outcome(tmp_path, running_conf: dict, new_conf: dict, above: str = "") -> reloadchild.Outcome:
    """above: text put before vrrp_instance B in the new file."""
    old = tmp_path / "old.conf"
    old.write_text(CONF.format(**running_conf))
    plan = build_plan(load(str(old)).config)
    new = tmp_path / "new.conf"
    new.write_text(CONF.format(**new_conf).replace("vrrp_instance B", above + "vrrp_instance B"))
    # The reader's own entry point, in its own process, as the daemon runs it.
    r = subprocess.run([sys.executable, "-m", "vrrpd.core.reload"], capture_output=True,
                       input=pickle.dumps((str(new), None,
                                           reloadchild.fingerprints(plan, plan.instances), 0)),
                       timeout=60)
    assert not r.stderr, r.stderr.decode()       # e.g. runpy's warning about the entry module
    return pickle.loads(r.stdout)


def test_reader_reports_only_what_changed(tmp_path):
    base = dict(weight=-10, prio=100, adv=1, version=2)
    same = _outcome(tmp_path, base, base)
    assert same.errors == [] and same.changes == [] and same.globals_same
    prio = _outcome(tmp_path, base, {**base, "prio": 150})
    assert [(k, n) for _, k, n in prio.changes] == [("changed", "A")] and prio.globals_same
    adv = _outcome(tmp_path, base, {**base, "adv": 2})          # Engine.retune: kept
    assert [(k, n) for _, k, n in adv.changes] == [("changed", "A")]
    version = _outcome(tmp_path, base, {**base, "version": 3})  # Engine.retune: kept
    assert [(k, n) for _, k, n in version.changes] == [("changed", "A")]
    script = _outcome(tmp_path, base, {**base, "weight": -20})
    assert not script.globals_same          # a vrrp_script is global


def test_reader_reports_errors(tmp_path):
    ok = dict(weight=-10, prio=100, adv=1, version=2)
    out = _outcome(tmp_path, ok, {**ok, "prio": 999})
    assert out.errors and out.fingerprints is None


def _line_of(path, text: str) -> int:
    return path.read_text().splitlines().index(text) + 1


def test_reader_reports_where_unchanged_instances_moved(tmp_path):
    """Lines inserted above B: nothing changed (the fingerprints ignore
    `where`), but the reader says where every instance now is."""
    base = dict(weight=-10, prio=100, adv=1, version=2)
    above = "# moved down by a comment block\n" * 3 + "\n"
    out = _outcome(tmp_path, base, base, above=above)
    assert out.errors == [] and out.changes == [] and out.globals_same
    new = tmp_path / "new.conf"
    assert out.names.split("\n") == ["A", "B"]
    wheres = [out.positions[i] for i in range(len(out.positions))]
    assert wheres == [(str(new), _line_of(new, "vrrp_instance A {")),
                      (str(new), _line_of(new, "vrrp_instance B {"))]
    assert wheres[1][1] == _line_of(tmp_path / "old.conf", "vrrp_instance B {") + 4
