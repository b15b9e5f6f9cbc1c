"""A GarpScheduler announcing instance VI_1 as master on eth0 (no delay, two repeats):
argv[1], argv[2] the IPv4 and IPv6 VIPs as JSON lists; prints its stats as JSON."""
import asyncio
import json
import socket
import sys

import uvloop

from vrrpd.net.garp import Announce, GarpConfig, GarpScheduler


async def main():
    v4, v6 = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    idx = socket.if_nametoindex("eth0")
    mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
    s = GarpScheduler()
    s.master("VI_1", Announce(idx, "eth0", mac,
             [socket.inet_aton(a) for a in v4],
             [socket.inet_pton(socket.AF_INET6, a) for a in v6],
             GarpConfig(master_delay=0, master_repeat=2), router=True))
    await asyncio.sleep(0.3)
    print(json.dumps(s.stats))
    s.close()

uvloop.install()
asyncio.run(main())
