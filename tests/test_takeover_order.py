"""A mass takeover keeps each instance's order, observed from outside the daemon.

1,000 VRRPv3 instances at 100 ms adverts over 4 veth links (250 VRIDs each)
between a vrrpd master (priority 200) and the backup under test (priority 100:
vrrpd, and keepalived 2.2.7 as the reference), one /32 VIP each and, for every
tenth instance, an IPv6 /128 too (virtual_ipaddress_excluded, announced by
NA).  The master is killed -9, so the backup takes over all 1,000 at once.
keepalived's per-instance order (vrrp.c vrrp_state_become_master) is: VIP
added, then GARP/NA, then the MASTER notify.  For every instance and VIP:

    RTM_NEWADDR read - LAG_NS  <=  first GARP/NA sent  <=  fifo MASTER line read

Three observers in the backup's namespace, each a process of its own
(tests/observers.py) running SCHED_FIFO, all on CLOCK_MONOTONIC:

- netlink: a socket bound to RTMGRP_IPV4_IFADDR|RTMGRP_IPV6_IFADDR, on the
  CPU the backup is kept on (vrrp_cpu_affinity).  For IPv4 the kernel queues
  RTM_NEWADDR inside the add itself (before the daemon's ACK) and wakes the
  observer, which, above the daemon on its CPU, runs as soon as the add's
  system call returns and before the daemon's next step: a daemon's GARP sent
  after its add is stamped after the read, one sent before it, before.  A
  vCPU taken away stops both alike.  (On another CPU the read waits for that
  CPU to be woken, which on a VM can take longer than keepalived's step from
  its ACK to its GARP: keepalived then looked out of order.)  LAG_NS only
  covers the capture's clock conversion.  A daemon that sends a chunk's GARPs
  before adding its VIPs misses it by up to the chunk's netlink time (checked
  by moving vrrpd's announce before its VIPs: every VIP is flagged).  nlmon,
  which would give the kernel's own order, is not in this kernel.
- capture (on the other CPU, as the fifo reader): one packet socket on every
  interface, filtered in the kernel to outgoing ARP and NA frames and stamped
  by the kernel as each frame is handed to the device, in the daemon's send
  call: exact (CLOCK_REALTIME, converted with an offset sampled in the
  observer; a clock step fails the test).
- fifo: the backup's vrrp_notify_fifo, each line stamped when read: late
  only, so a correct order always passes, and a line written before its GARP
  fails when the reader is quicker than the gap (checked by moving vrrpd's
  fifo lines before its announce).

IPv6: the kernel completes an address added with IFA_F_NODAD (local route,
RTM_NEWADDR) in its addrconf work, after the ACK, so a daemon that sends the
NA once the add is ACKed (keepalived and vrrpd) may have its NA go out before
the RTM_NEWADDR.  For IPv6 VIPs the add may therefore follow the NA
by up to IPV6_COMPLETION_NS; each such instance's IPv4 VIP, added in the same
netlink send, is held to the strict order.

Every instance must have all three observations.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import time

import pytest

from daemons import DaemonProc
from netns import P2P, sh, wait_for
from observers import Observer, fifo_records

pytestmark = [pytest.mark.netns, pytest.mark.slow]

LINKS = 4
PER_LINK = 250
N = LINKS * PER_LINK
V6_EVERY = 10             # every tenth instance also holds an IPv6 VIP (NA)
LAG_NS = 100_000          # the capture's CLOCK_REALTIME conversion (see the docstring)
IPV6_COMPLETION_NS = 50_000_000     # how long after its NA an IPv6 VIP may complete
# The backup and the netlink observer on one CPU, the other observers on another.
DAEMON_CPU, OBSERVER_CPU = (0, 1) if len(os.sched_getaffinity(0)) >= 2 else (None, None)


def name(n: int, vrid: int) -> str:
    return f"VI_{n * PER_LINK + vrid - 1}"


def vip4(vrid: int) -> str:
    # 1,000 distinct /32s do not fit the documentation ranges: each link
    # reuses 198.51.100.1-250 (an address is per interface; observers key by both).
    return f"198.51.100.{vrid}"


def vip6(n: int, vrid: int) -> str | None:
    i = n * PER_LINK + vrid - 1
    return str(ipaddress.IPv6Address(f"2001:db8:1:{n}::{vrid:x}")) if i % V6_EVERY == 0 else None


def config(priority: int, fifo: str, cpu: int | None = None) -> str:
    lines = ["global_defs {", "    vrrp_garp_master_delay 0", "    vrrp_garp_master_repeat 1",
             f"    vrrp_notify_fifo {fifo}"]
    if cpu is not None:
        lines.append(f"    vrrp_cpu_affinity {cpu}")
    lines.append("}")
    for n in range(LINKS):
        for vrid in range(1, PER_LINK + 1):
            lines += [f"vrrp_instance {name(n, vrid)} {{", "    state BACKUP",
                      f"    interface eth{n}", f"    virtual_router_id {vrid}",
                      f"    priority {priority}", "    advert_int 0.1", "    version 3",
                      "    virtual_ipaddress {", f"        {vip4(vrid)}/32 dev eth{n}", "    }"]
            if vip6(n, vrid):
                lines += ["    virtual_ipaddress_excluded {",
                          f"        {vip6(n, vrid)}/128 dev eth{n}", "    }"]
            lines.append("}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def p2p():
    made = []

    def make(**kw):
        net = P2P(**kw)
        made.append(net)
        return net

    yield make
    for net in made:
        net.delete()


def first_after(t0: int, events) -> dict:
    """key -> time of its first event at or after t0."""
    first: dict = {}
    for t, key in events:
        if t >= t0 and key not in first:
            first[key] = t
    return first


@pytest.mark.parametrize("kind", ["vrrpd",
                                  pytest.param("keepalived", marks=pytest.mark.keepalived)])
def test_mass_takeover_keeps_vip_garp_notify_order(p2p, tmp_path, kind):
    """kind: the backup under test; keepalived 2.2.7, the reference, must pass as well
    (which checks that LAG_NS and the IPv6 rule do not reject keepalived's own order)."""
    t_kill, nl, cap, ff = takeover(p2p, tmp_path, kind)
    assert nl["realtime"] and cap["realtime"] and ff["realtime"], "observers without SCHED_FIFO"
    assert nl["overruns"] == 0, "the netlink observer lost notifications (ENOBUFS)"
    # The capture's kernel timestamps are CLOCK_REALTIME; the other observers'
    # CLOCK_MONOTONIC.  While something adjusts the realtime clock against the
    # monotonic one faster than a disciplined clock slews, the microsecond order
    # cannot be judged (keepalived fails then too): the machine, not the daemon.
    if abs(cap["clock_slew_ppm"]) > 1000:
        pytest.skip(f"CLOCK_REALTIME moved {cap['clock_step_ns'] / 1e6:.1f} ms against "
                    f"CLOCK_MONOTONIC during the capture ({cap['clock_slew_ppm']:.0f} ppm)")
    added = first_after(t_kill, [(t, (dev, addr)) for t, what, dev, addr in nl["events"]
                                 if what == "new"])
    sent = first_after(t_kill, [(t, (dev, addr)) for t, _, dev, addr in cap["frames"]])
    told = first_after(t_kill, [(t, line.split('"')[1]) for t, line in ff["lines"]
                                if line.startswith("INSTANCE") and line.endswith(" MASTER 100")])
    missing, wrong = [], []
    margins = {4: [], 6: []}            # GARP/NA time - RTM_NEWADDR read time
    for n in range(LINKS):
        for vrid in range(1, PER_LINK + 1):
            inst = name(n, vrid)
            t_told = told.get(inst)
            for family, addr in ((4, vip4(vrid)), (6, vip6(n, vrid))):
                if addr is None:
                    continue
                key = (f"eth{n}", addr)
                t_add, t_sent = added.get(key), sent.get(key)
                if None in (t_add, t_sent, t_told):
                    missing.append((inst, addr, t_add, t_sent, t_told))
                    continue
                margins[family].append(t_sent - t_add)
                lag = LAG_NS if family == 4 else IPV6_COMPLETION_NS
                if not (t_add <= t_sent + lag and t_sent <= t_told):
                    wrong.append((inst, addr, (t_add - t_kill) / 1e6, (t_sent - t_kill) / 1e6,
                                  (t_told - t_kill) / 1e6))
    n_v6 = sum(1 for n in range(LINKS) for v in range(1, PER_LINK + 1) if vip6(n, v))
    assert len(margins[4]) + len(margins[6]) + len(missing) == N + n_v6
    print(f"{kind}: last MASTER line {(max(told.values(), default=t_kill) - t_kill) / 1e6:.0f} ms "
          f"after the kill; GARP/NA - RTM_NEWADDR read: "
          + "; ".join(f"IPv{f} min {min(m, default=0) / 1e3:.0f} us, {sum(x < 0 for x in m)} of "
                      f"{len(m)} < 0" for f, m in margins.items()))
    assert not missing, f"{len(missing)} VIPs without all three observations " \
                        f"(instance, VIP, add, GARP/NA, line): {missing[:10]}"
    assert not wrong, f"{len(wrong)} VIPs out of order (instance, VIP, ms after the kill: " \
                      f"added, GARP/NA, fifo line): {wrong[:10]}"


def takeover(p2p, tmp_path, kind: str):
    """Master and backup up, observers on, kill -9 the master, all 1,000 MASTER on the
    backup.  -> (the kill's CLOCK_MONOTONIC ns, netlink, capture and fifo records)."""
    net = p2p(nics=LINKS, addresses=False)
    for i, host in enumerate(net.hosts):
        # The links' own addresses: one /28 of 192.0.2.0/24 per link.
        sh("ip", "-n", host.name, "-batch", "-", input="".join(
            f"addr add 192.0.2.{16 * n + 1 + i}/28 dev eth{n}\n" for n in range(LINKS)))
    master_host, backup_host = net.hosts
    fifo = str(tmp_path / "backup.fifo")
    procs, observers = [], []
    try:
        master = DaemonProc(master_host, "vrrpd", config(200, "@FIFO@"), str(tmp_path),
                            detail=False)
        procs.append(master.start())
        names = [name(n, v) for n in range(LINKS) for v in range(1, PER_LINK + 1)]
        master.wait_all(names, "MASTER", timeout=40)

        fifo_obs = Observer(backup_host, "fifo", str(tmp_path / "fifo.out"), fifo,
                            cpu=OBSERVER_CPU)
        observers.append(fifo_obs)
        backup = DaemonProc(backup_host, kind, config(100, fifo, DAEMON_CPU), str(tmp_path),
                            tag="b", detail=False)
        procs.append(backup.start())

        def backup_lines(state: str, since: int = 0) -> set[str]:
            backup.check_alive()
            return {line.split('"')[1] for t, line in fifo_records(fifo_obs.out)["lines"]
                    if t >= since and line.startswith("INSTANCE")
                    and line.endswith(f" {state} 100")}

        wait_for(lambda: len(backup_lines("BACKUP")) == N, 40, interval=0.2,
                 what="all instances BACKUP on the backup")
        time.sleep(0.5)
        assert not backup_lines("MASTER"), "the backup took over before the fault"

        nl_obs = Observer(backup_host, "netlink", str(tmp_path / "netlink.json"),
                          cpu=DAEMON_CPU, priority=20)
        observers.append(nl_obs)
        cap_obs = Observer(backup_host, "capture", str(tmp_path / "capture.json"),
                           cpu=OBSERVER_CPU)
        observers.append(cap_obs)

        t_kill = time.monotonic_ns()
        os.kill(master.main_pid(), signal.SIGKILL)
        wait_for(lambda: len(backup_lines("MASTER", t_kill)) == N, 20, interval=0.1,
                 what="all instances MASTER on the backup")
        time.sleep(0.3)         # GARPs/notifications still on their way to the observers
        return (t_kill, *(o.stop() for o in (nl_obs, cap_obs, fifo_obs)))
    finally:
        for o in observers:
            if o.proc.poll() is None:
                o.proc.kill()
                o.proc.wait()
        for d in procs:
            d.stop()
