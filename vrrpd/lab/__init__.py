"""vrrpd-lab: routers in network namespaces, a demo, and the failover benchmark.

    vrrpd-lab demo                      two routers, three VIPs, a failover and preemption
    vrrpd-lab failover --daemon ...     steady-state cost and failover latency, as JSON
    vrrpd-lab cleanup                   remove what a killed lab left behind
    vrrpd-lab config --host 0|1 ...     the lab's keepalived.conf, for two real machines
    vrrpd-lab observe --fifo PATH ...   the lab's takeover observers, on a real backup

The lab runs in namespaces named vlab*, never in the host's own.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys

from vrrpd.lab.conf import LabSpec
from .testbed import OBSERVE, SCENARIOS, TOPOLOGIES, cleanup


def _list(choices):
    def parse(text: str) -> list[str]:
        items = [x for x in text.split(",") if x]
        bad = [x for x in items if x not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vrrpd-lab", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="two routers, a failover and preemption, live")
    d.add_argument("--daemon", choices=("vrrpd", "keepalived"), default="vrrpd")
    d.add_argument("--advert-int", type=float, default=0.1, metavar="S")
    d.add_argument("--vrrpd-binary", metavar="PATH",
                   help="vrrpd executable (default: beside python)")

    f = sub.add_parser("failover", help="measure CPU, memory and failover time")
    f.add_argument("--daemon", type=_list(("vrrpd", "keepalived")), default=["vrrpd"],
                   help="vrrpd, keepalived or vrrpd,keepalived")
    f.add_argument("--instances", type=int, default=100, metavar="N")
    f.add_argument("--advert-int", type=float, default=0.1, metavar="S")
    f.add_argument("--version", type=int, choices=(2, 3), default=3)
    f.add_argument("--family", type=int, choices=(4, 6), default=4)
    f.add_argument("--scenario", type=_list(SCENARIOS), default=["crash"],
                   help="crash (kill -9), graceful (SIGTERM), link-down, vip-delete (every VIP "
                        "deleted on the master from outside); a comma list runs each")
    f.add_argument("--topology", choices=TOPOLOGIES, default="p2p",
                   help="p2p: the routers joined directly by veth pairs (default); "
                        "switch: a bridge between them")
    f.add_argument("--observe", choices=OBSERVE, default="all",
                   help="all: the backup's notify fifo, its addresses (ip monitor) and the "
                        "wire (default); fifo: the fifo alone, the observers' own CPU "
                        "left to the daemons")
    f.add_argument("--repeat", type=int, default=1, metavar="K")
    f.add_argument("--window", type=float, default=5.0, metavar="S",
                   help="steady-state measuring window")
    f.add_argument("--json", required=True, metavar="OUT")
    f.add_argument("--plot", metavar="OUT.png", help="CDF of per-instance failover times")
    f.add_argument("--vrrpd-binary", metavar="PATH",
                   help="vrrpd executable (default: beside python)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("cleanup", help="remove every vlab* namespace and the daemons in it")

    c = sub.add_parser("config", help="print the lab's keepalived.conf for one of two routers")
    c.add_argument("--host", type=int, choices=(0, 1), required=True,
                   help="0: the master (priority 150), 1: the backup (100)")
    _spec_args(c)
    c.add_argument("--interfaces", type=lambda t: [x for x in t.split(",") if x], metavar="A,B",
                   help="NICs (or VLANs) to use for eth0, eth1, ...: 255 VRIDs fit on one")
    c.add_argument("--fifo", metavar="PATH", help="vrrp_notify_fifo (for `observe`)")

    o = sub.add_parser("observe", help="time a takeover on a real backup (fifo + netlink)")
    o.add_argument("--fifo", required=True, metavar="PATH", help="the config's vrrp_notify_fifo")
    o.add_argument("--instances", type=int, required=True, metavar="N")
    o.add_argument("--family", type=int, choices=(4, 6), default=4)
    o.add_argument("--fault", type=float, metavar="UNIX_TIME",
                   help="when the master was faulted (date +%%s.%%N there; synchronised clocks)")
    o.add_argument("--timeout", type=float, default=60.0, metavar="S")
    o.add_argument("--json", required=True, metavar="OUT")
    return p


def _spec_args(p) -> None:
    p.add_argument("--instances", type=int, default=100, metavar="N")
    p.add_argument("--advert-int", type=float, default=0.1, metavar="S")
    p.add_argument("--version", type=int, choices=(2, 3), default=3)
    p.add_argument("--family", type=int, choices=(4, 6), default=4)


def config_command(args) -> int:
    from vrrpd.lab.conf import LabSpec, host_config
    from .testbed import BACKUP_PRIORITY, MASTER_PRIORITY

    spec = LabSpec(instances=args.instances, version=args.version, advert_int=args.advert_int,
                   family=args.family, notify_fifo=args.fifo, balanced=True)
    text = host_config(spec, args.host, priority=(MASTER_PRIORITY, BACKUP_PRIORITY)[args.host])
    if args.interfaces:
        if len(args.interfaces) < spec.nics:
            print(f"vrrpd-lab: {args.instances} instances need {spec.nics} interfaces",
                  file=sys.stderr)
            return 2
        text = re.sub(r"\beth(\d+)\b", lambda m: args.interfaces[int(m[1])], text)
    sys.stdout.write(text)
    return 0


def _exit_on_signal(signum, frame):
    # SystemExit unwinds through every finally: namespaces and daemons are removed.
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "config":
        return config_command(args)
    if os.geteuid() != 0:
        print("vrrpd-lab: needs root (network namespaces): run it with sudo", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _exit_on_signal)
    try:
        if args.command == "cleanup":
            gone = cleanup()
            print(f"removed {len(gone)} namespace(s)" + (": " + " ".join(gone) if gone else ""))
            return 0
        if args.command == "observe":
            from .observe import observe_command
            return observe_command(args)
        if args.command == "demo":
            from .demo import demo
            return demo(args.daemon, args.advert_int, args.vrrpd_binary)
        return failover_command(args)
    except KeyboardInterrupt:
        print("\nvrrpd-lab: interrupted, lab removed", file=sys.stderr)
        return 130


def failover_command(args) -> int:
    from . import failover
    from .report import PlotUnavailable, plot_result, require_matplotlib

    if args.plot:
        try:
            require_matplotlib()
        except PlotUnavailable as e:
            print(f"vrrpd-lab: {e}", file=sys.stderr)
            return 2

    spec = LabSpec(instances=args.instances, version=args.version, advert_int=args.advert_int,
                   family=args.family)
    if args.version == 2 and (args.family == 6 or args.advert_int != int(args.advert_int)):
        print("vrrpd-lab: VRRPv2 is IPv4-only with whole-second adverts", file=sys.stderr)
        return 2
    result = failover.run(args.daemon, spec, args.scenario, args.repeat, args.window,
                          args.vrrpd_binary, progress=not args.quiet, topology=args.topology,
                          observe=args.observe)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)
    failover.print_summary(result)
    if args.plot:
        plot_result(result, args.plot)
    return 0
