"""The daemon's imports after service.defer_imports(): none of pyroute2's heavy parts
(its __init__ brings NDB and sqlite3) nor the configuration reader's modules; the
rest of pyroute2 still loads on demand.  Exits non-zero if not."""
import sys

from vrrpd.core import service

service.defer_imports()
import vrrpd.core.daemon  # noqa: E402,F401
import vrrpd.core.reload  # noqa: E402,F401
import vrrpd.net.routes  # noqa: E402,F401
import vrrpd.ops.control  # noqa: E402,F401
import vrrpd.ops.dumps  # noqa: E402,F401
import vrrpd.scripts.reporting  # noqa: E402,F401

heavy = sorted(m for m in ("pyroute2.ndb", "pyroute2.ipdb", "pyroute2.iproute", "sqlite3",
                           "vrrpd.config.build", "vrrpd.config.lexer")
               if m in sys.modules)
assert not heavy, heavy
import pyroute2  # noqa: E402
from pyroute2 import IPRoute  # noqa: E402

assert pyroute2.__version__ and IPRoute.__name__ == "IPRoute"
