"""A running daemon under attack from outside the protocol's happy path:
a control-socket fuzzer (hypothesis), hostile configurations, malformed
packets.  The daemon must answer every request, reject every bad input with
an error (counted, logged, no traceback) and keep its adverts on time."""
from __future__ import annotations

import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from test_ctl import two_hosts

pytestmark = [pytest.mark.netns]

COMMANDS = ["status", "show", "stats"]      # not reload: each would fork a child
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=20)
requests = st.one_of(
    # Well-formed envelopes with every kind of wrong field.
    st.fixed_dictionaries({"cmd": st.sampled_from(COMMANDS) | json_values},
                          optional={"args": json_values | st.lists(st.text(max_size=40),
                                                                   max_size=4),
                                    "extra": json_values}).map(json.dumps),
    json_values.map(json.dumps),
    # Deep nesting, up to what fits in one request line.
    st.integers(1, 30000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 20000).map(lambda n: '{"cmd":' * n + '"status"' + "}" * n),
    # Anything at all on one line.
    st.binary(max_size=200).map(lambda b: b.replace(b"\n", b" ").decode("latin-1")),
)


def ask(path: str, line: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(line + b"\n")
        f = s.makefile("rb")
        return json.loads(f.readline())


def log_problems(d) -> list[str]:
    with open(d.log_path, errors="replace") as f:
        return [line for line in f if "Traceback" in line or "Unhandled exception" in line
                or "Error:" in line]


def test_control_socket_fuzzer(lan, tmp_path):
    """Thousands of hostile requests: each gets a well-formed reply, the
    daemon logs no traceback and still answers vrrpctl status."""
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=1)
    try:
        seen = {"ok": 0, "error": 0}

        @settings(max_examples=3000, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(requests)
        def one(text):
            if "reload" in text:
                return
            reply = ask(m.sock, text.encode("utf-8", "surrogatepass"))
            assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), (text, reply)
            if not reply["ok"]:
                assert isinstance(reply.get("error"), str)
            seen["ok" if reply["ok"] else "error"] += 1
        one()
        assert seen["error"] > 1000, seen
        m.check_alive()
        assert m.ctl("status").returncode == 0
        assert log_problems(m) == []
    finally:
        m.stop()
        b.stop()
