"""Build vrrpd: Cython extensions from pyx/ compiled into the vrrpd package.

Each extension's typed interface lives at vrrpd/<name>.pxd (Cython finds a
.pxd by the module's dotted name), its code at pyx/<name>.pyx.  The sources
keep to syntax that both Cython >= 3 (PyPI) and Debian 12's cython3 0.29
accept, so the Debian package can build with Debian's toolchain.

VRRPD_ONLY=_codec,_engine limits the build to some extensions (handy while
one of them is being written).
"""
import glob
import os

from setuptools import Extension, find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))

# Bounds and negative-index checks stay on by default; the hot functions
# (codec encode/decode/checksum, the engine's receive/timer/send loops, the
# effects' batch builders) turn them off with @cython.boundscheck(False) /
# @cython.wraparound(False).  tests/test_build.py uses the same directives.
DIRECTIVES = {"language_level": "3", "cdivision": True}


def read_version():
    with open(os.path.join(HERE, "vrrpd", "__init__.py")) as f:
        for line in f:
            if line.startswith("__version__"):
                return line.split("=")[1].strip().strip("\"'")
    raise RuntimeError("no __version__ in vrrpd/__init__.py")


def extensions():
    only = {n for n in os.environ.get("VRRPD_ONLY", "").split(",") if n}
    exts = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if only and name not in only:
            continue
        exts.append(Extension("vrrpd." + name, [path],
                              extra_compile_args=["-O2"]))
    from Cython.Build import cythonize
    return cythonize(exts, include_path=[HERE],
                     compiler_directives=DIRECTIVES)


setup(
    name="vrrpd",
    version=read_version(),
    description="VRRP router-redundancy daemon, keepalived-compatible, Cython hot path",
    python_requires=">=3.11",
    packages=find_packages(include=["vrrpd", "vrrpd.*"]),
    package_data={"vrrpd": ["*.pxd", "*.pyi", "py.typed"]},
    ext_modules=extensions(),
    install_requires=["uvloop", "pyroute2", "prometheus-client", "aiosmtplib"],
    extras_require={
        "lab": ["matplotlib"],          # vrrpd-lab failover --plot, bench/compare.py
        # ruff and mypy pinned: a new release's new checks must not fail the suite unasked.
        "test": ["pytest", "pytest-benchmark", "pytest-timeout", "hypothesis",
                 "scapy", "aiosmtpd", "matplotlib", "ruff==0.17.6", "mypy==2.4.1"],
    },
    entry_points={
        "console_scripts": [
            "vrrpd = vrrpd.core.service:main",
            "vrrpctl = vrrpd.ops.vrrpctl:main",
            "vrrpd-lab = vrrpd.lab:main",
        ],
    },
)
