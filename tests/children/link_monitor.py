"""A LinkMonitor on the namespace's links, speaking JSON lines: one per link or
address event, "synced" once it has veth0; on stdin, "hold"/"release" call those,
any other line asks for stats.  argv[1]: its socket's receive buffer.  Runs under
uvloop where installed, else plain asyncio (Debian's python3)."""
import asyncio
import json
import os
import sys

# Debian's python3 has no vrrpd installed: the repository's tree (built in place).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
from vrrpd.net.links import LinkMonitor  # noqa: E402


def out(**kw):
    print(json.dumps(kw), flush=True)


async def main():
    loop = asyncio.get_running_loop()
    m = LinkMonitor(
        on_link=lambda link, e, o: out(ev=e.value, name=link.name, old=o and o.name,
                                       up=link.is_up),
        on_address=lambda link, a, add: out(ev="addr", name=link.name, address=a.address,
                                            plen=a.prefixlen, added=add),
        rcvbuf=int(sys.argv[1]))
    await m.start()
    veth = m.by_name("veth0")
    out(ev="synced", loop=type(loop).__module__, index=veth.index, mac=veth.mac.hex(":"),
        up=veth.is_up, ipv4=veth.primary_ipv4(), ll=veth.ipv6_link_local())

    def command():
        line = sys.stdin.readline()
        if not line:
            loop.stop()
            return
        if line.strip() in ("hold", "release"):
            getattr(m, line.strip())()
            out(ev=line.strip())
            return
        out(ev="stats", stats=m.stats, addrs={link.name: sorted(a for _, a in link.addresses)
                                              for link in m.links.values()})
    loop.add_reader(sys.stdin.fileno(), command)
    await asyncio.Event().wait()

try:
    asyncio.run(main())
except RuntimeError:
    pass
