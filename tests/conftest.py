import os
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from netns import Lan, Netns, new_name, our_namespaces  # noqa: E402


def _can_netns() -> bool:
    return os.geteuid() == 0 and shutil.which("ip") is not None


def pytest_collection_modifyitems(config, items):
    if _can_netns():
        return
    skip = pytest.mark.skip(reason="needs root and iproute2 for network namespaces")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """Fail the run if any test leaves a namespace of ours behind."""
    yield
    left = our_namespaces()
    assert not left, f"tests left network namespaces behind: {sorted(left)}"


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
