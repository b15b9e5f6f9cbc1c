"""Logging never holds the loop: records are queued and a thread writes them
(vrrpd.ops.logs), so a stderr nobody reads (journald behind, a full pipe) blocks
only that thread, and nothing is lost or reordered once it drains."""
from __future__ import annotations

import select
import subprocess
import sys

import children


def test_logging_does_not_wait_for_a_stalled_stderr():
    n = 5000            # ~600 KB: ten times what a pipe holds
    child = subprocess.Popen([sys.executable, children.child("log_flood"), str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([child.stdout], [], [], 30)
        assert ready and child.stdout.readline() == "returned\n", \
            "logging blocked while stderr was not read"
        _, err = child.communicate("go\n", timeout=30)
    finally:
        child.kill()
        child.wait()
    lines = err.splitlines()
    assert lines == [f"INFO vrrpd.test: line {i} {'x' * 100}" for i in range(n)]
