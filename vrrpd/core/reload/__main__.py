"""`python -m vrrpd.core.reload`: the configuration reader
(vrrpd.core.reload.child) that the daemon starts at start-up and per reload.
Started through the package rather than `-m vrrpd.core.reload.child`, which
runpy warns about: the package imports the child module before running it."""
import sys

from vrrpd.core.reload import child

sys.exit(child.main())
