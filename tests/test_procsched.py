"""keepalived's vrrp_* process settings (vrrpd/ops/procsched.py), applied in a
child interpreter so the test run itself keeps its scheduling."""
import json
import os
import subprocess
import sys

import pytest

from children import child
from vrrpd.config.model import GlobalDefs


def apply_in_child(**settings) -> dict:
    r = subprocess.run([sys.executable, child("procsched_apply"), json.dumps(settings)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_nothing_configured_changes_nothing():
    out = apply_in_child()
    assert out["done"] == [] and out["policy"] == os.SCHED_OTHER and out["locked_kb"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="realtime and mlockall need root")
def test_realtime_with_reset_on_fork_and_rttime():
    out = apply_in_child(vrrp_rt_priority=7, vrrp_rlimit_rttime=20000, vrrp_no_swap=True)
    assert out["policy"] == os.SCHED_RR | os.SCHED_RESET_ON_FORK and out["rtprio"] == 7
    # Soft limit as configured; over it is a logged SIGXCPU, never a SIGKILL.
    assert out["rttime"] == [20000, -1]
    # Scripts and the spawner are forked: normal scheduling again.
    assert out["child"] == [os.SCHED_OTHER, 0]
    assert out["locked_kb"] > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="negative nice needs root")
def test_nice_and_cpu_affinity():
    out = apply_in_child(vrrp_priority=-5, vrrp_cpu_affinity=[0])
    assert out["nice"] == -5 and out["affinity"] == [0]
    # No realtime: nice is inherited, as keepalived's.
    assert out["child"] == [os.SCHED_OTHER, -5]


def test_default_rttime_is_keepalived_s():
    from vrrpd.ops import procsched
    assert procsched.DEFAULT_RLIMIT_RTTIME_US == 10_000
    assert GlobalDefs().vrrp_rt_priority is None
