"""Checks of the source as a whole."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules_with_all():
    """Dotted names of the vrrpd modules whose source declares __all__."""
    for dirpath, _, files in os.walk(os.path.join(ROOT, "vrrpd")):
        for f in sorted(files):
            if f.endswith(".py"):
                with open(os.path.join(dirpath, f)) as src:
                    if "__all__" not in src.read():
                        continue
                rel = os.path.relpath(os.path.join(dirpath, f[:-3]), ROOT).split(os.sep)
                yield ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


@pytest.mark.parametrize("module", sorted(modules_with_all()))
def test_star_import_works(module):
    """Every name in a module's __all__ exists, so `from vrrpd.config import *` works."""
    code = f"from {module} import *\n"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr


def test_config_star_import_gives_the_reader():
    ns = {}
    exec("from vrrpd.config import *", ns)
    assert {"load", "Config", "LoadResult", "Problem"} <= ns.keys()
