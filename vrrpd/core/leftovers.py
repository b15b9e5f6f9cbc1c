"""Addresses a crashed predecessor may have left on the interfaces.

keepalived 2.2.7 removes at start-up only the VIPs of the instances in its
new configuration: after a kill -9, a restart with fewer instances leaves the
others' VIPs on their interfaces for good (measured, tests/test_semantics.py).
vrrpd records every address its configuration may add (each instance's VIPs
and static_ipaddress) in a small file under /run before it can add them, and
at start-up removes those of the previous record the new configuration no
longer has.  Removing an address that is not there is harmless (EADDRNOTAVAIL
is counted as done by AddressManager).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os

log = logging.getLogger(__name__)

Entry = tuple[str, str]          # (interface name, "address/prefixlen")


def state_path(control_socket: str | None) -> str | None:
    """One record per daemon, beside its control socket (default under
    /run/vrrpd); None without one: nothing tells two such daemons apart."""
    if control_socket and control_socket != "none":
        return control_socket + ".vips"
    return None


def entries(plans) -> set[Entry]:
    """Every address the plans' instances and static_ipaddress may add."""
    out: set[Entry] = set()
    for plan in plans:
        for spec in plan.instances:
            for v in spec.vips:
                out.add((v.dev or spec.interface, v.with_prefixlen))
        for v in plan.static_vips:
            if v.dev:
                out.add((v.dev, v.with_prefixlen))
    return out


def read(path: str | None) -> set[Entry]:
    """The record: a line "interface address/prefixlen" per entry (neither has
    whitespace), or a JSON list of pairs, as earlier versions wrote it (a
    record under /run outlives an upgrade)."""
    if path is None:
        return set()
    try:
        with open(path) as f:
            text = f.read()
        if text.startswith("["):
            return {(dev, addr) for dev, addr in json.loads(text)}
        out: set[Entry] = set()
        for line in text.splitlines():
            dev, addr = line.split()
            out.add((dev, addr))
        return out
    except FileNotFoundError:
        return set()
    except (OSError, ValueError, TypeError) as e:
        log.warning("cannot read %s (%s): no leftover addresses removed", path, e)
        return set()


def write(path: str | None, wanted: set[Entry]) -> None:
    """Atomically replace the record (a crash never leaves half a file)."""
    if path is None:
        return
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.writelines(f"{dev} {addr}\n" for dev, addr in wanted)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot record added addresses in %s: %s", path, e)


async def save(path: str | None, plans) -> None:
    """write(path, entries(plans)) in a thread, while adverts run: Python that
    grows with the VIPs, which a thread hands the GIL back from every switch
    interval instead of holding the loop (JSON's C encoder and sorted() would
    hold it throughout, hence lines in any order)."""
    if path is not None:
        await asyncio.to_thread(lambda: write(path, entries(plans)))
