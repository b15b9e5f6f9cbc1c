"""The kernel floor in batched sends: the run's VIPs added, then deleted, by
vrrpd's own netlink requester (vrrpd.net.nlbatch: many messages per
sendmsg(), sized by its time budget), the messages encoded beforehand, so
that only the kernel's work and the ACKs are timed.  `ip -batch` (the lab's
other floor) sends one message per sendmsg() and waits for its ACK.

    python -m vrrpd.lab.nlfloor PREFIXLEN < lines of "ADDRESS DEVICE"   (backup's namespace)

prints one JSON object {"vip_add_s", "vip_del_s", "failed"} (failed: messages
the kernel refused, EEXIST and EADDRNOTAVAIL included).
"""
from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

from vrrpd.net import netlink as nl
from vrrpd.net.addresses import AddressManager, Vip


async def _floor(vips: list[Vip]) -> dict:
    am = AddressManager()
    out: dict = {"failed": 0}
    try:
        for op, mtype in (("add", nl.RTM_NEWADDR), ("del", nl.RTM_DELADDR)):
            msgs = [am.encode(mtype, v) for v in vips]
            t = time.monotonic()
            codes = await am.requester.errnos(msgs)
            out[f"vip_{op}_s"] = round(time.monotonic() - t, 4)
            out["failed"] += sum(1 for c in codes if c)
    finally:
        am.close()
    return out


def main(argv: list[str]) -> None:
    prefixlen = int(argv[0])
    index: dict[str, int] = {}
    vips = []
    for line in sys.stdin.read().splitlines():
        address, dev = line.split()
        if dev not in index:
            index[dev] = socket.if_nametoindex(dev)
        vips.append(Vip.parse(f"{address}/{prefixlen}", index[dev]))
    print(json.dumps(asyncio.run(_floor(vips))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
