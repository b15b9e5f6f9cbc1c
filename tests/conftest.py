import os
import shutil
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from netns import PREFIX, Lan, Netns, new_name, our_namespaces  # noqa: E402
from scenario_bench import Bench  # noqa: E402


@pytest.fixture(params=["asyncio", "uvloop"])
def aio(request):
    """aio(coro) runs a coroutine to completion on a fresh loop of the given kind."""
    import asyncio
    import uvloop
    return uvloop.run if request.param == "uvloop" else asyncio.run


def _can_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def pytest_collection_modifyitems(config, items):
    if _can_netns():
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 for network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


def _host_netns_view() -> tuple[str, str]:
    """The host namespace's links and addresses (tests must never change them)."""
    links, addrs = _ip_dump("link"), _ip_dump("addr")
    # Only names and addresses: counters and flags like LOWER_UP may change.
    return (" ".join(sorted(line.split(":")[1].strip() for line in links.splitlines())),
            " ".join(sorted(line.split()[3] for line in addrs.splitlines())))


def _ip_dump(what: str) -> str:
    """`ip -o <what> show`, retried while it fails: a dump that namespaces
    being torn down interrupt ends early ("Dump was interrupted")."""
    for _ in range(10):
        r = subprocess.run(["ip", "-o", what, "show"], capture_output=True, text=True)
        if r.returncode == 0 and "interrupted" not in r.stderr:
            return r.stdout
        time.sleep(0.5)
    raise RuntimeError(f"ip -o {what} show: {r.returncode} {r.stderr.strip()}")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """Fail the run if a test leaves a namespace or process of ours behind, or
    changed the host's own namespace (links, addresses: VIPs must never land there)."""
    if not _can_netns():
        yield
        return
    before = _host_netns_view()
    yield
    left = our_namespaces()
    assert not left, f"tests left network namespaces behind: {sorted(left)}"
    # Every daemon a test starts has a config path with its namespace's name in it.
    stray = subprocess.run(["pgrep", "-af", f"{PREFIX}{os.getpid() % 10000}"],
                           capture_output=True, text=True).stdout.strip()
    assert not stray, f"tests left processes behind:\n{stray}"
    after = _host_netns_view()
    assert after == before, f"tests changed the host's links or addresses: {before} -> {after}"


@pytest.fixture
def netns():
    """Factory: netns() -> Netns, deleted after the test."""
    made = []

    def make(tag="n"):
        ns = Netns(new_name(tag))
        made.append(ns)
        return ns

    yield make
    for ns in made:
        ns.delete()


@pytest.fixture
def lan():
    """Factory: lan(hosts=2, nics=1) -> Lan, deleted after the test."""
    made = []

    def make(**kw):
        net = Lan(**kw)
        made.append(net)
        return net

    yield make
    for net in made:
        net.delete()


@pytest.fixture(params=["vrrpd", "keepalived"])
def bench(request, lan, tmp_path):
    """The differential bench (scenario_bench.Bench), once per daemon under test;
    eth1 on both hosts is a second link to track."""
    b = Bench(request.param, lan(hosts=2, nics=2), str(tmp_path))
    yield b
    b.close()
