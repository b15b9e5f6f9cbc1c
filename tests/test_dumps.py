"""keepalived's signal dumps: SIGUSR1 data, SIGUSR2 stats, SIGRTMIN+2 JSON,
written where --data-dump/--stats-dump/--json-dump say (keepalived's /tmp
paths by default) and consistent with vrrpctl."""
from __future__ import annotations

import json
import os
import signal

import pytest

from daemons import two_hosts
from netns import wait_for
from vrrpd.core.service import build_parser

pytestmark = [pytest.mark.netns]


def test_default_paths_are_keepalived_s():
    a = build_parser().parse_args([])
    assert (a.data_dump, a.stats_dump, a.json_dump) == (
        "/tmp/keepalived.data", "/tmp/keepalived.stats", "/tmp/keepalived.json")
    assert a.control_socket == "/run/vrrpd/control.sock" and a.metrics is None


def test_signal_dumps(lan, tmp_path):
    paths = {k: str(tmp_path / f"dump.{k}") for k in ("data", "stats", "json")}
    extra = ("--data-dump", paths["data"], "--stats-dump", paths["stats"],
             "--json-dump", paths["json"])
    net, spec, (m, b) = two_hosts(lan, tmp_path, instances=2, extra=extra)
    try:
        for sig, key in ((signal.SIGUSR1, "data"), (signal.SIGUSR2, "stats"),
                         (signal.SIGRTMIN + 2, "json")):
            m.signal(sig)
            wait_for(lambda: os.path.exists(paths[key]), 5, what=f"{key} dump")
        data = open(paths["data"]).read()
        assert "VRRP Instance = VI_0" in data and "VRRP Instance = VI_1" in data
        assert data.count("State = MASTER") == 2 and "Effective priority = 200" in data
        stats = open(paths["stats"]).read()
        assert "VRRP Instance: VI_0" in stats and "Became master: 1" in stats
        dump = json.load(open(paths["json"]))
        assert [v["name"] for v in dump["status"]["instances"]] == ["VI_0", "VI_1"]
        assert {v["state"] for v in dump["status"]["instances"]} == {"MASTER"}
        now = m.ctl_json("stats")["instances"]["VI_0"]
        assert 0 < dump["stats"]["instances"]["VI_0"]["adverts_sent"] <= now["adverts_sent"]
        assert oct(os.stat(paths["json"]).st_mode & 0o777) == "0o600"
        m.check_alive()
    finally:
        m.stop()
        b.stop()
