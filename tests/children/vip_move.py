"""Prebuilt VIP messages (vrrpd._effects) through the Requester's thread, as a
takeover moves them: argv[1] instances of two VIPs each on veth0, plus one
whose VIP is already there (EEXIST: harmless) and one on a missing device
(ENODEV), every chunk submitted at once; prints the result as JSON, then,
after a line on stdin, removes them the same way and prints that."""
import asyncio
import json
import socket
import sys

import uvloop

from vrrpd._effects import Effects
from vrrpd.net import netlink as nl
from vrrpd.net.addresses import AddressManager, Vip

CHUNK = 700


async def move(m, effects, idxs, add):
    moves = [effects.vip_move(idxs[k:k + CHUNK], add) for k in range(0, len(idxs), CHUNK)]
    futures = [m.requester.submit(mv) for mv in moves]       # all in flight at once
    errs, failed, acked = [], [], 0
    for k, (mv, fut) in enumerate(zip(moves, futures)):
        errs.append(await fut)
        acked += mv.acked
        failed += [(idxs[k * CHUNK + pos], e) for pos, e in effects.finish(mv)]
    vips_on = sorted(i for i in idxs if effects.vips_on(i))
    print(json.dumps(dict(errs=errs, failed=failed, acked=acked, vips_on=len(vips_on),
                          chunk=m.requester.chunk)), flush=True)


async def main():
    n = int(sys.argv[1])
    idx = socket.if_nametoindex("veth0")
    m = AddressManager()
    effects = Effects(n + 2)
    for i in range(n + 2):
        if i == n:
            vips = [Vip.parse("192.0.2.1/24", idx)]              # there already
        elif i == n + 1:
            vips = [Vip.parse("192.0.2.99/32", 999999)]          # no such device
        else:
            vips = [Vip.parse(f"10.{i >> 8 & 255}.{i & 255}.1/32", idx),
                    Vip.parse(f"2001:db8:1::{i + 1:x}/128", idx)]
        effects.set_instance(
            i, nl_add=b"".join(m.encode(nl.RTM_NEWADDR, v) for v in vips),
            nl_del=b"".join(m.encode(nl.RTM_DELADDR, v) for v in vips),
            nmsgs=len(vips), frames=[], repeat=0, name=b'"VI_%d"' % i)
    idxs = list(range(n + 2))
    await move(m, effects, idxs, True)
    sys.stdin.readline()
    await move(m, effects, idxs[:n], False)
    m.close()

uvloop.install()
asyncio.run(main())
