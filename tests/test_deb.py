"""The Debian package.

Fast checks of the packaging sources run every time: the example config is
valid (also with every optional line enabled) and the man page lists exactly
the daemon's options.

TestInstalledPackage builds the .deb with packaging/build-deb, checks it with
dpkg-deb and lintian, installs it with apt on this machine, runs the installed
/usr/sbin/vrrpd (Debian's python3, pyroute2, uvloop) on the example, on
keepalived's samples and in a two-namespace failover, then purges it.  It
needs root and takes a minute or more, so it runs only with VRRPD_TEST_DEB=1.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import signal
import subprocess

import pytest

from daemons import DaemonProc, vips_on
from keepalived_samples import SAMPLES, SAMPLES_BROKEN
from vrrpd import __version__
from vrrpd.config import load
from vrrpd.core.service import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "packaging")
EXAMPLE = os.path.join(PKG, "vrrpd.conf")
UNIT = os.path.join(PKG, "vrrpd.service")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"     # what systemd gives a service
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "PATH": SYSTEM_PATH}


def run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"})
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def unit_setting(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


# -- packaging sources (fast, no root) ---------------------------------------------------

def enable_optional_lines(text: str) -> str:
    """The example marks optional settings with '#' (prose uses '!')."""
    return re.sub(r"(?m)^(\s*)# ?", r"\1", text)


def test_example_config_is_valid(tmp_path):
    r = load(EXAMPLE)
    assert r.errors == [] and list(r.config.instances) == ["VI_1"]
    full = tmp_path / "full.conf"
    full.write_text(enable_optional_lines(open(EXAMPLE).read()))
    r = load(str(full))
    assert r.errors == [], [str(e) for e in r.errors]
    assert "chk_haproxy" in r.config.scripts
    assert r.config.instances["VI_1"].notify_master is not None
    assert r.config.global_defs.vrrp_notify_fifo is not None


def test_unit_waits_for_readiness():
    text = open(os.path.join(PKG, "vrrpd.service")).read()
    assert unit_setting(text, "Type") == ["notify"]
    assert unit_setting(text, "NotifyAccess") == ["main"]
    assert "/bin/kill -HUP $MAINPID" in " ".join(unit_setting(text, "ExecReload"))


def test_man_page_lists_exactly_the_options():
    text = open(os.path.join(PKG, "man", "vrrpd.8")).read().replace("\\-", "-")
    options = text.split(".SH OPTIONS", 1)[1].split("\n.SH ", 1)[0]
    documented = set(re.findall(r"^\.BR (-[a-zA-Z]) \", \" (--[a-z-]+)", options, re.M))
    documented |= {(o,) for o in re.findall(r"^\.BR (--[a-z-]+)", options, re.M)}
    actual = {tuple(a.option_strings) for a in build_parser()._actions}
    assert documented == actual


def test_unit_runs_the_default_config():
    unit = open(UNIT).read()
    default = build_parser().get_default("config")
    for cmd in unit_setting(unit, "ExecStart") + unit_setting(unit, "ExecStartPre"):
        assert cmd.split()[0] == "/usr/sbin/vrrpd" and cmd.endswith(f"--use-file {default}")


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db not installed")
def test_man_pages_render_without_warnings():
    for page in glob.glob(os.path.join(PKG, "man", "*.[58]")):
        p = run("man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", page)
        assert p.stderr == "", (page, p.stderr)


# -- the built and installed package (slow, root, VRRPD_TEST_DEB=1) ----------------------

def ensure_tool(cmd: str, package: str) -> str:
    if shutil.which(cmd, path=SYSTEM_PATH) is None:
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", package, env=APT_ENV)
    return shutil.which(cmd, path=SYSTEM_PATH)


def installed() -> bool:
    p = run("dpkg-query", "-W", "-f=${Status}", "vrrpd", check=False)
    return p.returncode == 0 and "ok installed" in p.stdout


def purge() -> None:
    run("apt-get", "purge", "-y", "-q", "vrrpd", env=APT_ENV)


@pytest.fixture(scope="module")
def deb() -> str:
    p = run(os.path.join(PKG, "build-deb"), check=False, env=APT_ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    # The file build-deb made, not a name rebuilt from `dpkg --print-architecture`
    # (once empty in CI, though the package was there).
    built = glob.glob(os.path.join(REPO, "dist", f"vrrpd_{__version__}_*.deb"))
    assert len(built) == 1, (built, p.stdout[-3000:])
    return built[0]


@pytest.fixture(scope="module")
def package(deb):
    """The package installed with apt; dpkg -L's list of its paths."""
    if installed():
        purge()
    run("apt-get", "install", "-y", "-q", deb, env=APT_ENV, cwd=REPO)
    files = run("dpkg", "-L", "vrrpd").stdout.split()
    yield files
    if installed():
        purge()


def bounded_vrrpd(tmp_path) -> str:
    """The installed vrrpd with only the unit's capabilities and a service's environment."""
    unit = open(installed_unit()).read()
    caps = unit_setting(unit, "CapabilityBoundingSet")[0].split()
    bound = ",".join(["-all"] + ["+" + c.lower().removeprefix("cap_") for c in caps])
    wrapper = tmp_path / "vrrpd-as-unit"
    wrapper.write_text("#!/bin/sh\n"
                       f"exec env -i PATH={SYSTEM_PATH} setpriv --bounding-set={bound} "
                       '/usr/sbin/vrrpd "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def installed_unit() -> str:
    for d in ("/lib/systemd/system", "/usr/lib/systemd/system"):
        if os.path.exists(f"{d}/vrrpd.service"):
            return f"{d}/vrrpd.service"
    raise AssertionError("vrrpd.service not installed")


FAILOVER_CONF = """
global_defs {
    vrrp_notify_fifo @FIFO@
}
vrrp_instance VI_1 {
    state BACKUP
    interface eth0
    virtual_router_id 42
    version 3
    priority %d
    advert_int 0.1
    virtual_ipaddress {
        192.0.2.200/24
    }
}
"""


@pytest.mark.slow
@pytest.mark.deb
@pytest.mark.timeout(1200)
@pytest.mark.skipif(os.environ.get("VRRPD_TEST_DEB") != "1", reason="set VRRPD_TEST_DEB=1")
@pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root")
class TestInstalledPackage:
    """In file order: build, inspect, install, run, purge."""

    def test_metadata(self, deb):
        info = run("dpkg-deb", "-I", deb).stdout
        field = dict(re.findall(r"^ (\S+): (.*)$", info, re.M))
        assert field["Package"] == "vrrpd" and field["Version"] == __version__
        # dpkg printed nothing once in a CI run (exit 0): fall back to the kernel's name.
        host = run("dpkg", "--print-architecture").stdout.strip() or \
            {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine())
        assert field["Architecture"] == host
        depends = {d.strip().split()[0] for d in field["Depends"].split(",")}
        assert {"python3-pyroute2", "python3-uvloop", "python3-prometheus-client"} <= depends
        assert field["Section"] == "net"
        # Every file under /etc is a conffile: kept on remove, deleted on purge.
        assert run("dpkg-deb", "-I", deb, "conffiles").stdout.split() == ["/etc/vrrpd/vrrpd.conf"]

    def test_contents(self, deb):
        paths = {line.split()[5].removeprefix(".") for line in
                 run("dpkg-deb", "-c", deb).stdout.splitlines()}
        site = "/usr/lib/python3/dist-packages/vrrpd"
        want = {"/usr/sbin/vrrpd", "/usr/bin/vrrpctl", "/usr/bin/vrrpd-lab",
                "/lib/systemd/system/vrrpd.service", "/etc/vrrpd/vrrpd.conf",
                "/usr/share/man/man8/vrrpd.8.gz", "/usr/share/man/man8/vrrpctl.8.gz",
                "/usr/share/man/man5/vrrpd.conf.5.gz", "/usr/share/doc/vrrpd/changelog.gz",
                "/usr/share/doc/vrrpd/copyright", f"{site}/core/daemon.py",
                f"{site}/config/__init__.py"}
        assert want <= paths, want - paths
        for ext in (f[:-len(".pyx")] for f in os.listdir(os.path.join(REPO, "pyx"))
                    if f.endswith(".pyx")):
            assert any(p.startswith(f"{site}/{ext}.") and p.endswith(".so") for p in paths), ext
        stray = [p for p in paths if p.endswith((".c", ".pyx", ".pyc")) or "/tests/" in p]
        assert stray == []

    def test_lintian_clean(self, deb):
        lintian = ensure_tool("lintian", "lintian")
        p = run(lintian, "--fail-on", "error,warning", deb, check=False)
        assert p.returncode == 0, p.stdout + p.stderr

    def test_installed_version_and_disabled(self, package):
        assert "/usr/sbin/vrrpd" in package
        assert run("/usr/sbin/vrrpd", "--version").stdout.strip() == f"vrrpd {__version__}"
        # Runs on Debian's interpreter, not a venv's.
        assert open("/usr/sbin/vrrpd").readline().strip() == "#!/usr/bin/python3"
        # Installed disabled: no WantedBy symlink made by postinst.
        assert glob.glob("/etc/systemd/system/*.wants/vrrpd.service") == []

    def test_unit_verifies(self, package):
        analyze = ensure_tool("systemd-analyze", "systemd")
        p = run(analyze, "verify", installed_unit(), check=False)
        assert p.returncode == 0 and p.stderr == "", p.stderr

    def test_config_test_on_example_and_samples(self, package):
        run("/usr/sbin/vrrpd", "-t", "-f", "/etc/vrrpd/vrrpd.conf")
        samples = sorted(glob.glob(os.path.join(SAMPLES, "keepalived.conf.*")))
        assert samples, "keepalived's samples are not installed"
        for path in samples:
            p = run("/usr/sbin/vrrpd", "-t", "-f", path, check=False)
            expected = 1 if os.path.basename(path) in SAMPLES_BROKEN else 0
            assert p.returncode == expected, (path, p.stderr)
            assert "Traceback" not in p.stderr, (path, p.stderr)

    def test_clis_start(self, package):
        # vrrpctl and vrrpd-lab: their modules import under Debian's python3.
        for cli in ("/usr/bin/vrrpctl", "/usr/bin/vrrpd-lab"):
            p = run(cli, "--help", check=False)
            assert "Traceback" not in p.stderr, (cli, p.stderr)

    @pytest.mark.netns
    def test_failover_with_installed_binary(self, package, lan, tmp_path):
        binary = bounded_vrrpd(tmp_path)
        net = lan(hosts=2)
        a, b = (DaemonProc(h, "vrrpd", FAILOVER_CONF % prio, str(tmp_path), binary=binary)
                for h, prio in zip(net.hosts, (200, 100)))
        try:
            a.start(), b.start()
            a.wait_state("VI_1", "MASTER")
            b.wait_state("VI_1", "BACKUP")
            cmdline = open(f"/proc/{a.main_pid()}/cmdline").read().split("\0")
            assert cmdline[:2] == ["/usr/bin/python3", "/usr/sbin/vrrpd"], cmdline
            assert "192.0.2.200/24" in vips_on(net.hosts[0])
            a.signal(signal.SIGKILL)
            b.wait_state("VI_1", "MASTER")
            assert "192.0.2.200/24" in vips_on(net.hosts[1])
            b.signal(signal.SIGTERM)
            assert b.wait_exit() == 0, b.log_tail()
            assert "192.0.2.200/24" not in vips_on(net.hosts[1])
            assert "Traceback" not in b.log_tail(200)
        finally:
            a.stop(), b.stop()

    def test_purge_leaves_nothing(self, package):
        purge()
        assert not installed()
        assert run("dpkg", "-L", "vrrpd", check=False).returncode != 0
        left = [p for p in package if os.path.lexists(p) and not os.path.isdir(p)]
        assert left == []
        for d in ("/etc/vrrpd", "/usr/lib/python3/dist-packages/vrrpd", "/usr/share/doc/vrrpd"):
            assert not os.path.exists(d), d
        traces = glob.glob("/etc/systemd/system/**/vrrpd*", recursive=True) + \
            glob.glob("/var/lib/systemd/deb-systemd-helper-*/**/vrrpd*", recursive=True)
        assert traces == []
