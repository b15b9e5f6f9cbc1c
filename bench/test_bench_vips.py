"""How long adding/removing N VIPs takes: AddressManager vs `ip -batch` (same kernel work,
iproute2 as the baseline), and our user-space share (encoding) alone.  Prints a table;
asserts nothing about speed.  Run: .venv/bin/python -m pytest -q -s bench/test_bench_vips.py
"""
import json
import os
import sys
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from netns import Netns, new_name  # noqa: E402

from vrrpd.net.addresses import AddressManager, Vip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = os.path.join(ROOT, ".venv/bin/python")


def addr(family, i):
    if family == 6:
        return f"2001:db8:1::{i:x}/128"
    return f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32"


CHILD = """
import asyncio, json, socket, sys
sys.path.insert(0, %(root)r)
import uvloop
from vrrpd.net.addresses import AddressManager, Vip
async def main():
    idx = socket.if_nametoindex("veth0")
    vips = [Vip.parse(a, idx) for a in open(%(path)r).read().split()]
    m = AddressManager()
    add = await m.add(vips)
    rem = await m.remove_all()
    print(json.dumps([add.seconds, rem.seconds, len(add.done), len(rem.done)]))
uvloop.install()
asyncio.run(main())
"""


def test_encode_10000_user_space_only():
    vips = [Vip.parse(addr(6 if i % 2 else 4, i), 2) for i in range(10000)]
    m = AddressManager()
    t = time.perf_counter()
    m._encode(20, vips)
    print(f"\nencode 10,000 RTM_NEWADDR: {(time.perf_counter() - t) * 1e3:.1f} ms")


@pytest.mark.netns
@pytest.mark.parametrize("family,n", [(4, 1000), (4, 10000), (6, 1000), (6, 4000)])
def test_add_remove_vs_ip_batch(family, n, tmp_path):
    ns = Netns(new_name("bv"))
    try:
        ns.run("ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        ns.run("ip", "link", "set", "veth0", "up")
        addrs = [addr(family, i) for i in range(n)]
        (tmp_path / "vips").write_text("\n".join(addrs))
        out = ns.run(PY, "-c", CHILD % dict(root=ROOT, path=str(tmp_path / "vips"))).stdout
        add_s, rem_s, added, removed = json.loads(out)
        assert added == removed == n
        batch = tmp_path / "b"
        extra = " nodad" if family == 6 else ""
        timings = []
        for verb in ("add", "del"):
            batch.write_text("".join(f"addr {verb} {a} dev veth0{extra if verb == 'add' else ''}\n"
                                     for a in addrs))
            t = time.perf_counter()
            ns.run("ip", "-batch", str(batch))
            timings.append(time.perf_counter() - t)
        print(f"\nIPv{family} x{n}: AddressManager add {add_s * 1e3:.0f} ms, remove "
              f"{rem_s * 1e3:.0f} ms | ip -batch add {timings[0] * 1e3:.0f} ms, "
              f"del {timings[1] * 1e3:.0f} ms")
    finally:
        ns.delete()
