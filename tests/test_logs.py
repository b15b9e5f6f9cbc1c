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


def test_rows_are_one_record_written_line_by_line(capfd):
    """A Rows message costs its caller one queued record, however many rows;
    the writer thread writes a line per row, each with the handler's prefix."""
    import logging

    from vrrpd.ops import logs
    logs.setup()
    root = logging.getLogger("vrrpd")
    queue_handler = root.handlers[0]
    queued = []
    enqueue = queue_handler.enqueue
    queue_handler.enqueue = lambda record: (queued.append(record), enqueue(record))
    try:
        rows = [(f"VI_{i}", i) for i in range(500)]
        logging.getLogger("vrrpd.test").warning(logs.Rows("(%s) line %d", rows))
        logs.stop()
    finally:
        root.handlers.clear()
    assert len(queued) == 1
    assert capfd.readouterr().err.splitlines() == [
        f"WARNING vrrpd.test: (VI_{i}) line {i}" for i in range(500)]


def test_rows_under_any_handler_are_lines():
    import logging

    from vrrpd.ops.logs import Rows
    record = logging.makeLogRecord({"msg": Rows("%s=%d", [("a", 1), ("b", 2)])})
    assert record.getMessage() == "a=1\nb=2"
