"""Import a package's submodules without running the package's __init__ first.

pyroute2's __init__ imports the whole library (NDB with sqlite3, IPDB,
conntrack, ethtool, wireguard, ...: some 300 modules), while the daemon uses
four netlink message classes from pyroute2.netlink.rtnl.  defer() registers
the package unexecuted: importing one of its submodules loads only what that
submodule imports.  The first access to any other top-level name
(`pyroute2.IPRoute`, `from pyroute2 import NDB`) runs the package's __init__
then, so code that wants the whole library still gets it.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys


def defer(name: str) -> bool:
    """Register package `name` without running its __init__; False if it is
    already imported or not a package."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)

    def __getattr__(attr: str):
        # `from package import submodule` asks for the attribute first.
        if not attr.startswith("__") and importlib.util.find_spec(f"{name}.{attr}") is not None:
            return importlib.import_module(f"{name}.{attr}")
        del module.__getattr__
        assert spec.loader is not None      # checked above
        spec.loader.exec_module(module)
        return getattr(module, attr)

    module.__getattr__ = __getattr__    # type: ignore[method-assign]  # PEP 562
    sys.modules[name] = module
    return True
