"""Test harness for running daemons on namespace hosts: vrrpd.lab.run's DaemonProc
and friends, and a vrrpd with its control socket on a settled pair of hosts (what
the vrrpctl, dumps, metrics and hostile-input tests start from)."""
from __future__ import annotations

import json
import os
import subprocess

from netns import wait_for
from vrrpd.lab.conf import LabSpec, host_config
from vrrpd.lab.run import KEEPALIVED, VENV_BIN, DaemonProc, FifoReader, vips_on

__all__ = ["KEEPALIVED", "VENV_BIN", "VRRPCTL", "DaemonProc", "FifoReader", "OpsDaemon",
           "two_hosts", "reconfigure", "vips_on"]

VRRPCTL = os.path.join(VENV_BIN, "vrrpctl")


class OpsDaemon(DaemonProc):
    """vrrpd with its control socket (and any extra flags) under the test's tmp dir."""

    def __init__(self, ns, config_text, workdir, tag="", extra=(), sockdir=None):
        super().__init__(ns, "vrrpd", config_text, str(workdir), tag)
        self.sock = os.path.join(str(sockdir or workdir), f"{ns.name}{tag}.ctl")
        self.extra = ["--control-socket", self.sock, *extra]

    def argv(self) -> list[str]:
        return super().argv() + self.extra

    def ctl(self, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run([*prefix, VRRPCTL, "--socket", self.sock, *args],
                              capture_output=True, text=True, timeout=60)

    def ctl_json(self, *args: str):
        r = self.ctl(*args, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def wait_socket(self) -> None:
        wait_for(lambda: self.check_alive() or os.path.exists(self.sock), 15,
                 what=f"control socket {self.sock}\n{self.log_tail()}")


def two_hosts(lan, tmp_path, instances=2, extra=(), sockdir=None, **spec_kw):
    """host 0 (priority 200) and host 1 (100), both started; every instance settled."""
    spec = LabSpec(instances=instances, version=3, advert_int=0.1, notify_fifo="@FIFO@", **spec_kw)
    net = lan(hosts=2, nics=spec.nics)
    names = [f"VI_{i}" for i in range(instances)]
    procs = []
    for i, prio in enumerate((200, 100)):
        d = OpsDaemon(net.hosts[i], host_config(spec, i, priority=prio), tmp_path, extra=extra,
                      sockdir=sockdir)
        procs.append(d.start())
    procs[0].wait_all(names, "MASTER", timeout=30)
    procs[1].wait_all(names, "BACKUP", timeout=30)
    for d in procs:
        d.wait_socket()
    return net, spec, procs


def reconfigure(d, text: str) -> None:
    """Write a new configuration for the daemon d (@FIFO@: its notify fifo),
    to be read by its next reload."""
    with open(d.conf, "w") as f:
        f.write(text.replace("@FIFO@", d.fifo_path))
