"""Adds the VIPs given on the command line to the firewall, READY, line, removes them,
READY, line, closes."""
import asyncio
import socket
import sys

import uvloop

from vrrpd.net.addresses import Vip
from vrrpd.net.firewall import VipFirewall


async def main():
    index = socket.if_nametoindex("eth0")
    vips = [Vip.parse(a, index) for a in sys.argv[1:]]
    fw = VipFirewall()
    print("READY", await fw.add_vips(vips), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("READY", await fw.remove_vips(vips), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    print("DONE", await fw.close(), fw.stats, flush=True)


uvloop.run(main())
