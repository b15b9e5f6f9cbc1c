"""Child of tests/test_reload_api.py, run inside a test namespace (a lone
host: tests/netns.py veth_host).  A Daemon runs the configuration in argv[1];
once every instance is MASTER, argv[2]'s text replaces it and
vrrpd.core.reload.Reloader applies it (the reader process, then prepare and
apply, which drive the Daemon only through its public API).  Prints as JSON
what the test checks: the reload's summary, and per instance its object
identity, engine slot, state and priority before and after."""
import asyncio
import json
import shutil
import subprocess
import sys
import time

from vrrpd.core.daemon import Daemon, now_us
from vrrpd.core.reload import Reloader
from vrrpd.core.service import read_config


async def settle(daemon: Daemon, names, timeout: float = 5.0) -> None:
    """Until each named instance is MASTER (or the timeout: the test sees it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        insts = [daemon.instances.get(n) for n in names]
        if all(i is not None and daemon.is_master(i) for i in insts):
            return
        await asyncio.sleep(0.02)


async def view(daemon: Daemon) -> dict:
    out = {name: {"id": id(inst), "idx": inst.idx, "master": daemon.is_master(inst),
                  "priority": daemon.engine.priority(inst.idx),
                  "vips": [v.address for v in inst.vips], "next_advert_ms": 0.0}
           for name, inst in daemon.instances.items()}
    # A master's timer is its next advert: the longest wait seen is about advert_int.
    for _ in range(30):
        for name, inst in daemon.instances.items():
            wait = (daemon.engine.deadline(inst.idx) - now_us()) / 1000
            out[name]["next_advert_ms"] = max(out[name]["next_advert_ms"], wait)
        await asyncio.sleep(0.01)
    return out


def addresses() -> list[str]:
    out = subprocess.run(["ip", "-j", "addr", "show", "dev", "eth0"], check=True,
                         capture_output=True, text=True).stdout
    return sorted(a["local"] for link in json.loads(out) for a in link["addr_info"]
                  if a["family"] == "inet")


async def main(path: str, new: str) -> dict:
    startup = read_config(path, None)
    assert not startup.errors, startup.errors
    daemon = Daemon(startup.plan)
    await daemon.start()
    try:
        await settle(daemon, daemon.instances)
        out = {"before": await view(daemon), "addresses_before": addresses(),
               "slots_before": sorted(daemon.by_idx)}
        shutil.copyfile(new, path)
        reloader = Reloader(daemon, path, None, startup.fingerprints)
        out["reload"] = await reloader()
        await settle(daemon, daemon.instances)
        await asyncio.sleep(0.1)            # the reload's own address changes are awaited: done
        out.update(after=await view(daemon), addresses_after=addresses(),
                   slots_after=sorted(daemon.by_idx), plan=[s.name for s in daemon.plan.instances])
    finally:
        await daemon.stop()
    out["addresses_stopped"] = addresses()
    return out


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))))
