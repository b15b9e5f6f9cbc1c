"""The source passes ruff (lint) and mypy (types), as ordinary tests.

Both read their configuration from pyproject.toml; they come with the `test`
extra (setup.py), so a skip means the environment lacks it, not that the code
is clean.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "pyproject.toml")


def run_tool(module, *args):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")
    r = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    # Notes (mypy's "unused section") exit 0 yet say the configuration is off.
    noisy = [ln for ln in (r.stdout + r.stderr).splitlines() if ": note: " in ln]
    assert r.returncode == 0 and not noisy, f"{module} reports:\n{r.stdout}{r.stderr}"


def test_ruff():
    run_tool("ruff", "check", "--no-cache", "--config", CONFIG,
             "vrrpd", "tests", "bench", "setup.py")


def test_mypy():
    # The cache goes away with the run: no .mypy_cache in the tree.
    run_tool("mypy", "--config-file", CONFIG, "--cache-dir", os.devnull)


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
