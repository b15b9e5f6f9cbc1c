"""Test harness for running daemons on namespace hosts: a re-export of vrrpd.labrun."""
from vrrpd.labrun import (KEEPALIVED, VENV_BIN, DaemonProc, FifoReader,  # noqa: F401
                          vips_on)
