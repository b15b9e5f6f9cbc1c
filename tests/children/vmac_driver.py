"""Creates the vmacs for the instances of the configuration at argv[1], prints READY,
waits for a line on stdin, removes them and prints DONE."""
import asyncio
import sys

import uvloop

from vrrpd.config import load
from vrrpd.net.links import LinkMonitor
from vrrpd.net.vmac import VmacManager, VmacSpec, create_all


async def main():
    cfg = load(sys.argv[1]).config
    links = LinkMonitor()
    await links.start()
    manager = VmacManager()
    specs = [VmacSpec.for_instance(i, cfg.global_defs) for i in cfg.instances.values()]
    made = await create_all(manager, specs, links.by_name)
    print("READY", sorted(made), manager.stats, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await manager.close()
    print("DONE", manager.stats, flush=True)
    links.close()


uvloop.run(main())
