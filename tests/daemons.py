"""Test harness for running daemons on namespace hosts: a re-export of vrrpd.lab.run."""
from vrrpd.lab.run import KEEPALIVED, VENV_BIN, DaemonProc, FifoReader, vips_on

__all__ = ["KEEPALIVED", "VENV_BIN", "DaemonProc", "FifoReader", "vips_on"]
