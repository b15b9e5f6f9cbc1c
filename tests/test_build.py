"""Every pyx/*.pyx builds with Debian 12's cython3 0.29 and with Cython 3, and imports.

The Debian package builds with Debian's toolchain, developers with PyPI's
Cython 3; a construct only one of them accepts must fail here, not there.
Each .pyx is translated with the same directives as setup.py, compiled with
gcc against this Python's headers, and the whole set imported as the vrrpd
package from a scratch directory (extensions cimport one another).
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from children import child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYX = sorted(glob.glob(os.path.join(ROOT, "pyx", "*.pyx")))
DIRECTIVES = "language_level=3,cdivision=True"          # as setup.py

CYTHONS = {
    "debian-0.29": ["/usr/bin/cython3"],
    "cython-3": [sys.executable, "-m", "cython"],
}


def cython_available(name):
    if name == "debian-0.29" and not os.path.exists("/usr/bin/cython3"):
        pytest.skip("Debian's /usr/bin/cython3 is not installed (apt install cython3)")


def build(cython, pyx, outdir):
    name = os.path.splitext(os.path.basename(pyx))[0]
    c_file = os.path.join(outdir, name + ".c")
    so_file = os.path.join(outdir, "vrrpd", name + sysconfig.get_config_var("EXT_SUFFIX"))
    # --module-name: Cython finds vrrpd/<name>.pxd by the dotted name.
    r = subprocess.run([*cython, "-3", "-X", DIRECTIVES, "-I", ROOT,
                        "--module-name", "vrrpd." + name, "-o", c_file, pyx],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"{cython[-1]} failed on {pyx}:\n{r.stdout}{r.stderr}"
    # -O0: this checks that the C compiles, speed is measured elsewhere.
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-O0", "-w",
                        "-I", sysconfig.get_paths()["include"], c_file, "-o", so_file],
                       capture_output=True, text=True)
    assert r.returncode == 0, f"gcc failed on C from {cython[-1]} for {pyx}:\n{r.stderr}"


@pytest.mark.skipif(not PYX, reason="no pyx/*.pyx")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
@pytest.mark.parametrize("cython", sorted(CYTHONS))
def test_every_extension_builds_and_imports(cython, tmp_path):
    cython_available(cython)
    pkg = tmp_path / "vrrpd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for pyx in PYX:
        build(CYTHONS[cython], pyx, str(tmp_path))
    names = [os.path.splitext(os.path.basename(p))[0] for p in PYX]
    r = subprocess.run([sys.executable, child("import_extensions"), *names], cwd=tmp_path,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr


def test_codec_built_by_debian_cython_round_trips(tmp_path):
    """The 0.29 build is not only importable but behaves (a v3 IPv6 round trip)."""
    cython_available("debian-0.29")
    pkg = tmp_path / "vrrpd"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    build(CYTHONS["debian-0.29"], os.path.join(ROOT, "pyx", "_codec.pyx"), str(tmp_path))
    r = subprocess.run([sys.executable, child("codec_round_trip")], cwd=tmp_path,
                       capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr
