"""Adds instance V's virtual_routes and virtual_rules from the configuration at argv[1]
(twice: the second finds them all there), prints READY and the counts, waits for a
line on stdin, removes them and prints DONE and the counts."""
import asyncio
import sys

import uvloop

from vrrpd.config import load
from vrrpd.net.links import LinkMonitor
from vrrpd.net.routes import RouteManager


async def main():
    inst = load(sys.argv[1]).config.instances["V"]
    links = LinkMonitor()
    await links.start()
    m = RouteManager(links.ifindex)
    r = await m.add(inst.virtual_routes, inst.virtual_rules)
    again = await m.add(inst.virtual_routes, inst.virtual_rules)
    print("READY", len(r.done), len(r.failed), len(again.already), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    r = await m.remove_all()
    print("DONE", len(r.done), len(r.failed), flush=True)
    m.close()
    links.close()


uvloop.run(main())
