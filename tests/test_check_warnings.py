"""`vrrpd -t` warns (or errs) wherever `keepalived -t` (2.2.7) rejects or
changes a value: over every config in tests/configs, Debian's samples and
the values keepalived reads as whole seconds.

keepalived's messages for a value it will not take: "invalid number",
"outside range", "must be between", "invalid - ignoring", "invalid,
defaulting".  Each such line must have a vrrpd problem on the same line.
Both checks run in a fresh network namespace (unshare -n): a config test only.
"""
from __future__ import annotations

import glob
import os
import re
import subprocess

import pytest

from daemons import KEEPALIVED, VENV_BIN

pytestmark = pytest.mark.skipif(not os.path.exists(KEEPALIVED) or os.geteuid() != 0,
                                reason="needs keepalived and root for unshare -n")

HERE = os.path.dirname(__file__)
SAMPLES = "/usr/share/doc/keepalived/samples"
REJECTED = re.compile(r"invalid number|outside range|must be between|invalid - ignoring|"
                      r"invalid, defaulting|must be in \[")
LINE = re.compile(r"\((?:(?P<file>[^:()]+): )?Line (?P<line>\d+)\)")

FRACTIONS = """
global_defs {
    vrrp_garp_master_delay 0.5
    vrrp_garp_lower_prio_delay 1.5
    vrrp_garp_master_refresh 0.5
}
vrrp_script chk {
    script /bin/true
    interval 0.2
    timeout 0.5
}
vrrp_instance VI_1 {
    interface lo
    virtual_router_id 1
    priority 100
    garp_master_delay 0.5
    garp_lower_prio_delay 0.5
    garp_master_refresh 2.5
    virtual_ipaddress {
        192.0.2.1/32
    }
    track_script {
        chk
    }
}
"""


def _configs() -> list[str]:
    out = sorted(glob.glob(os.path.join(HERE, "configs", "*", "*.conf")))
    out += sorted(p for p in glob.glob(os.path.join(SAMPLES, "keepalived.conf*")))
    return out


def keepalived_rejects(path: str) -> set[tuple[str, int]]:
    r = subprocess.run(["unshare", "-n", KEEPALIVED, "-t", "-l", "-f", path],
                       capture_output=True, text=True, timeout=30)
    out = set()
    for line in (r.stdout + r.stderr).splitlines():
        m = LINE.search(line)
        if m and REJECTED.search(line):
            out.add((os.path.basename(m["file"] or path), int(m["line"])))
    return out


def vrrpd_problems(path: str) -> set[tuple[str, int]]:
    r = subprocess.run(["unshare", "-n", os.path.join(VENV_BIN, "vrrpd"), "-t", "-f", path],
                       capture_output=True, text=True, timeout=60)
    out = set()
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"(?P<file>[^:\s]+):(?P<line>\d+): ", line)
        if m:
            out.add((os.path.basename(m["file"]), int(m["line"])))
    return out


@pytest.mark.parametrize("path", _configs(), ids=os.path.basename)
def test_vrrpd_t_says_where_keepalived_rejects(path):
    missing = keepalived_rejects(path) - vrrpd_problems(path)
    assert not missing, f"keepalived -t rejects a value at {sorted(missing)}; vrrpd -t is silent"


def test_whole_seconds_values_warned(tmp_path):
    path = str(tmp_path / "fractions.conf")
    with open(path, "w") as f:
        f.write(FRACTIONS)
    rejected = keepalived_rejects(path)
    assert len(rejected) == 8                   # every fractional value above
    assert rejected <= vrrpd_problems(path)
