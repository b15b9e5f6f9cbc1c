"""vrrpd: the daemon's command line.  Runs in the foreground under uvloop
(systemd style); keepalived's flags are accepted where they make sense."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from . import __version__

log = logging.getLogger("vrrpd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vrrpd", description="VRRP daemon reading keepalived.conf")
    p.add_argument("-v", "--version", action="version", version=f"vrrpd {__version__}")
    p.add_argument("-f", "--use-file", dest="config", default="/etc/vrrpd/vrrpd.conf",
                   help="configuration file (keepalived.conf syntax)")
    p.add_argument("-t", "--config-test", action="store_true",
                   help="check the configuration and exit 0 if valid, 1 if not")
    p.add_argument("-l", "--log-console", action="store_true", help="log to the console (stderr)")
    p.add_argument("-D", "--log-detail", action="store_true", help="detailed (debug) log")
    p.add_argument("-S", "--log-facility", metavar="FACILITY",
                   help="log to syslog with this facility (e.g. daemon, local0)")
    p.add_argument("-p", "--pid", dest="pidfile", help="write the process id to this file")
    p.add_argument("-n", "--dont-fork", action="store_true",
                   help="accepted for keepalived compatibility; vrrpd never forks")
    p.add_argument("-i", "--config-id", help="config id for @id conditional lines (default: hostname)")
    p.add_argument("-P", "--vrrp", action="store_true", help="accepted for keepalived compatibility")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.config_test:
        return config_test(args.config, args.config_id)
    from . import logs
    logs.setup(console=args.log_console or not args.log_facility, detail=args.log_detail,
               syslog_facility=args.log_facility)
    return run(args)


def config_test(path: str, config_id: str | None = None) -> int:
    """`vrrpd -t`: print every problem as FILE:LINE: message; 0 if valid."""
    from .config import load

    result = load(path, config_id=config_id)
    for w in result.warnings:
        print(f"{w}", file=sys.stderr)
    for e in result.errors:
        print(f"{e}", file=sys.stderr)
    return 1 if result.errors else 0


def run(args) -> int:
    from .config import load
    from .plan import build_plan

    result = load(args.config, config_id=args.config_id)
    for w in result.warnings:
        log.warning("%s", w)
    if result.errors:
        for e in result.errors:
            log.error("%s", e)
        return 1
    plan = build_plan(result.config)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        import uvloop
        return uvloop.run(serve(plan))
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


async def serve(plan) -> int:
    from .runtime import Daemon

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    from .reporting import Reporter

    daemon = Daemon(plan)
    daemon.hooks.append(Reporter(plan.config, daemon.runner))
    try:
        await daemon.start()
    except (RuntimeError, OSError) as e:
        log.error("start-up failed: %s", e)
        return 1
    log.info("vrrpd %s running %d instances", __version__, len(daemon.instances))
    await stop.wait()
    log.info("stopping")
    await daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
