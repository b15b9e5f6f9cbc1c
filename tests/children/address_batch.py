"""AddressManager in one batch: adds argv[1] VIPs on veth0 (alternately IPv6 and IPv4)
plus three that must fail, prints the result as JSON; after a line on stdin removes
them all, then removes one that was never there, printing each result."""
import asyncio
import json
import socket
import sys

import uvloop

from vrrpd.net.addresses import AddressManager, Vip


def out(r):
    print(json.dumps(dict(done=len(r.done), already=[v.address for v in r.already],
                          failed=[(v.address, e) for v, e in r.failed], seconds=r.seconds)),
          flush=True)


async def main():
    idx = socket.if_nametoindex("veth0")
    vips = [Vip.parse(f"2001:db8:1::{i:x}/128" if i % 2 else
                      f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32", idx)
            for i in range(int(sys.argv[1]))]
    vips += [Vip.parse("192.0.2.1/24", idx),             # pre-existing: EEXIST
             Vip.parse("192.0.2.99/32", 999999),         # no such device
             Vip.parse("192.0.2.98/32", idx, label="bad label that is far too long")]
    m = AddressManager()
    out(await m.add(vips))
    sys.stdin.readline()
    out(await m.remove_all())
    out(await m.remove([Vip.parse("192.0.2.97/32", idx)]))   # never there: EADDRNOTAVAIL
    m.close()

uvloop.install()
asyncio.run(main())
