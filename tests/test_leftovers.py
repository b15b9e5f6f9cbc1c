"""The record of addresses a daemon may add (vrrpd.core.leftovers), which the
next start reads to remove a crashed predecessor's leftovers."""
from __future__ import annotations

import asyncio
import json
import types

from vrrpd.core import leftovers


def plan(*vips):
    """A stand-in Plan: one instance on eth0 per (dev, address/prefixlen)."""
    specs = [types.SimpleNamespace(interface="eth0", vips=[types.SimpleNamespace(
        dev=dev, with_prefixlen=addr)]) for dev, addr in vips]
    return types.SimpleNamespace(instances=specs, static_vips=[])


def test_saved_record_reads_back(tmp_path):
    path = str(tmp_path / "run" / "vrrpd.ctl.vips")
    old = plan((None, "192.0.2.1/32"), ("eth1", "2001:db8::1/128"))
    new = plan((None, "192.0.2.2/24"))
    asyncio.run(leftovers.save(path, [old, new]))
    assert leftovers.read(path) == {("eth0", "192.0.2.1/32"), ("eth1", "2001:db8::1/128"),
                                    ("eth0", "192.0.2.2/24")}
    asyncio.run(leftovers.save(path, [new]))
    assert leftovers.read(path) == {("eth0", "192.0.2.2/24")}
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["vrrpd.ctl.vips"]


def test_json_record_of_earlier_versions_reads(tmp_path):
    path = tmp_path / "vrrpd.ctl.vips"
    path.write_text(json.dumps([["eth0", "192.0.2.1/32"], ["eth2", "198.51.100.7/32"]]))
    assert leftovers.read(str(path)) == {("eth0", "192.0.2.1/32"), ("eth2", "198.51.100.7/32")}


def test_damaged_record_removes_nothing(tmp_path, caplog):
    path = tmp_path / "vrrpd.ctl.vips"
    path.write_text("eth0 192.0.2.1/32\neth0\n")
    assert leftovers.read(str(path)) == set()
    assert "no leftover addresses removed" in caplog.text
    assert leftovers.read(str(tmp_path / "missing")) == set()
    assert leftovers.read(None) == set()
