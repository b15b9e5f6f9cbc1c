"""vrrpd: the daemon's command line.  Runs in the foreground under uvloop
(systemd style); keepalived's flags are accepted where they make sense."""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from vrrpd import __version__
from vrrpd.core import leftovers

if TYPE_CHECKING:
    from vrrpd.core.reload import Reloader
    from vrrpd.ops.control import ControlServer
    from vrrpd.ops.metrics import Metrics
    from vrrpd.ops.sdnotify import Watchdog

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
    p.add_argument("-i", "--config-id",
                   help="config id for @id conditional lines (default: hostname)")
    p.add_argument("-P", "--vrrp", action="store_true",
                   help="accepted for keepalived compatibility")
    from vrrpd.ops.control import DEFAULT_PATH
    from vrrpd.ops.dumps import DATA_PATH, JSON_PATH, STATS_PATH
    p.add_argument("--control-socket", metavar="PATH", default=DEFAULT_PATH,
                   help=f"vrrpctl's unix socket (default {DEFAULT_PATH}; 'none' disables it)")
    p.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics over HTTP there (off by default)")
    p.add_argument("--data-dump", metavar="PATH", default=DATA_PATH,
                   help=f"SIGUSR1 data dump (default {DATA_PATH})")
    p.add_argument("--stats-dump", metavar="PATH", default=STATS_PATH,
                   help=f"SIGUSR2 stats dump (default {STATS_PATH})")
    p.add_argument("--json-dump", metavar="PATH", default=JSON_PATH,
                   help=f"SIGRTMIN+2 JSON dump (default {JSON_PATH})")
    p.add_argument("--reload-timeout", metavar="SECONDS", type=float, default=30.0,
                   help="a reload's configuration reader is stopped after this long "
                        "(the reload is rejected; default 30)")
    p.add_argument("--reload-memory", metavar="MIB", type=int, default=2048,
                   help="address space the reload's configuration reader may use "
                        "(default 2048; 0: no limit)")
    p.add_argument("--advert-tx", choices=("frame", "ip"), default="frame",
                   help="multicast adverts on Ethernet links: prebuilt frames on a packet "
                        "socket (default; they skip netfilter OUTPUT/POSTROUTING), or the "
                        "kernel's IP output like unicast ones")
    return p


def defer_imports() -> None:
    """Only the parts of libraries the daemon uses (vrrpd.ops.lazyinit)."""
    from vrrpd.ops import lazyinit
    lazyinit.defer("pyroute2")


def main(argv: list[str] | None = None) -> int:
    defer_imports()
    args = build_parser().parse_args(argv)
    if args.config_test:
        return config_test(args.config, args.config_id)
    from vrrpd.ops import logs
    logs.setup(console=args.log_console or not args.log_facility, detail=args.log_detail,
               syslog_facility=args.log_facility)
    return run(args)


def config_test(path: str, config_id: str | None = None) -> int:
    """`vrrpd -t`: print every problem as FILE:LINE: message; 0 if valid."""
    from vrrpd.config import load

    try:
        result = load(path, config_id=config_id)
    except MemoryError:             # under a memory limit (ulimit -v, the reload child's)
        print(f"{path}:0: out of memory reading the configuration", file=sys.stderr)
        return 1
    for w in result.warnings:
        print(f"{w}", file=sys.stderr)
    for e in result.errors:
        print(f"{e}", file=sys.stderr)
    return 1 if result.errors else 0


def read_config(path: str, config_id: str | None):
    """The configuration read, resolved and fingerprinted (for reloads) by
    the reload's reader, `python -m vrrpd.core.reload --plan`, and received
    as one pickle (reloadchild.Startup): what the daemon keeps is unpickled
    in one piece, without the parsing's garbage in between."""
    import pickle
    import subprocess
    from vrrpd.core.reload.child import Startup, share_numbers

    request = pickle.dumps((path, config_id), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        proc = subprocess.run([sys.executable, "-m", "vrrpd.core.reload", "--plan"],
                              input=request, stdout=subprocess.PIPE)
    except OSError as e:
        return Startup(errors=[f"cannot start the configuration reader: {e}"])
    if proc.returncode or not proc.stdout:
        return Startup(errors=[f"the configuration reader failed (exit {proc.returncode})"])
    out = pickle.loads(proc.stdout)
    if out.plan is not None:
        share_numbers(out.plan)
    return out


def run(args) -> int:
    from vrrpd.ops import procsched

    result = read_config(args.config, args.config_id)
    for w in result.warnings:
        log.warning("%s", w)
    if result.errors:
        for e in result.errors:
            log.error("%s", e)
        return 1
    plan = result.plan
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        import uvloop
        # asyncio.Runner rather than uvloop.run(): Debian 12's uvloop 0.17 lacks the latter.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(serve(plan, args, result.fingerprints))
    finally:
        procsched.release()
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass


async def serve(plan, args=None, running=None) -> int:
    """running: the plan's reloadchild.fingerprints, if the reader made them."""
    from vrrpd.ops import memtrim, procsched

    args = args or build_parser().parse_args([])
    # The other threads (log writer, netlink senders, track_process's /proc scan, the
    # metrics server's) must not hold the GIL for 5 ms when the loop needs it for adverts.
    sys.setswitchinterval(0.0005)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    applied = procsched.apply(plan.config.global_defs)
    if applied:
        log.info("process settings: %s", ", ".join(applied))
    if running is None:
        from vrrpd.core.reload.child import fingerprints
        running = fingerprints(plan, plan.instances)   # for reloads; before adverts start
    # The configuration's garbage goes before adverts start; what start-up builds
    # is frozen out of the collector's sight afterwards: a full collection over it
    # would hold the loop (and the adverts) longer the more instances.  Likewise
    # no collections while start-up runs, as in a reload.
    gc.collect()
    gc.disable()
    memtrim.trim()          # start-up's garbage (the reader's pickle) is gone now
    try:
        return await _serve(plan, args, running, stop)
    finally:
        gc.enable()


async def _serve(plan, args, running, stop: asyncio.Event) -> int:
    from vrrpd.ops import memtrim, sdnotify
    from vrrpd.scripts.reporting import Reporter
    from vrrpd.core.daemon import Daemon

    daemon = Daemon(plan, advert_tx=args.advert_tx)
    daemon.hooks.append(Reporter(plan.config, daemon.runner))
    record = leftovers.state_path(args.control_socket)
    previous = leftovers.read(record)
    # Known before anything is added.  Made again afterwards rather than held
    # through start-up: one entry per VIP, while start-up's own temporaries
    # are at their peak.
    leftovers.write(record, previous | leftovers.entries([plan]))
    try:
        await daemon.start()
    except (RuntimeError, OSError) as e:
        log.error("start-up failed: %s", e)
        return 1
    # Adverts run from here on: the record's work goes to threads (see leftovers.save).
    wanted = await asyncio.to_thread(leftovers.entries, [plan])
    await _remove_leftovers(daemon, previous - wanted)
    await asyncio.to_thread(leftovers.write, record, wanted)
    del previous, wanted        # one entry per VIP: not kept for the daemon's life
    try:
        ops = await Operations.start(daemon, args, running)
    except (OSError, ValueError) as e:          # socket path, metrics port in use...
        log.error("start-up failed: %s", e)
        await daemon.stop()
        return 1
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _on_stop_signal, daemon, ops.reloader, stop)
    log.info("vrrpd %s running %d instances", __version__, len(daemon.instances))
    memtrim.trim()          # and start-up's own temporaries
    gc.freeze()
    gc.enable()
    sdnotify.notify("READY=1", f"MAINPID={os.getpid()}")
    await stop.wait()
    log.info("stopping")
    sdnotify.notify("STOPPING=1")
    await ops.close()
    await daemon.stop()
    return 0


def _on_stop_signal(daemon, reloader, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT once running: no reload starts from now on, and the
    masters' priority-0 adverts leave in this callback, before the loop runs
    anything else (the rest of the stop waits for the tasks in between).
    A reload under way keeps its instances running until it is through."""
    reloader.abort()
    if not reloader.busy:
        daemon.resign()
    stop.set()


async def _remove_leftovers(daemon, stale) -> None:
    """A crashed predecessor's addresses this configuration no longer has."""
    from vrrpd.net.addresses import Vip
    vips = []
    for dev, address in sorted(stale):
        index = daemon.links.ifindex(dev)
        if index is not None:
            vips.append(Vip.parse(address, index))
    if vips:
        r = await daemon.addresses.remove(vips)
        log.info("removed %d address(es) of instances no longer configured: %s", len(r.done),
                 ", ".join(f"{v.address}/{v.prefixlen}" for v in r.done))


class Operations:
    """What operators reach the running daemon through: the control socket,
    signals (HUP reload, USR1/USR2/RTMIN+2 dumps), metrics, the watchdog."""

    reloader: Reloader
    control: ControlServer | None
    metrics: Metrics | None
    watchdog: Watchdog | None
    _tasks: set[asyncio.Task]

    @classmethod
    async def start(cls, daemon, args, running) -> "Operations":
        from vrrpd.ops import sdnotify
        from vrrpd.ops.control import ControlServer
        from vrrpd.ops.dumps import Dumps, show, stats, status
        from vrrpd.core.reload import Reloader

        self = cls()
        loop = asyncio.get_running_loop()
        self.reloader = Reloader(daemon, args.config, args.config_id, running,
                                 timeout=args.reload_timeout, memory=args.reload_memory << 20)
        self.reloader.vips_record = leftovers.state_path(args.control_socket)
        dumps = Dumps(daemon, self.reloader, args.data_dump, args.stats_dump, args.json_dump)
        self.control = self.metrics = self.watchdog = None
        self._tasks = set()
        loop.add_signal_handler(signal.SIGHUP, self._spawn, self.reloader)
        loop.add_signal_handler(signal.SIGUSR1, dumps.data)
        loop.add_signal_handler(signal.SIGUSR2, dumps.stats)
        loop.add_signal_handler(signal.SIGRTMIN + 2, dumps.json)     # keepalived's SIGJSON
        if args.control_socket and args.control_socket != "none":
            self.control = ControlServer(args.control_socket, {
                "status": lambda: status(daemon),
                "show": lambda name: show(daemon, name),
                "stats": lambda: stats(daemon, self.reloader),
                "reload": self.reloader})
            await self.control.start()
        if args.metrics:
            from vrrpd.ops.metrics import Metrics, parse_addr
            self.metrics = Metrics(daemon, *parse_addr(args.metrics))
            self.metrics.start()
        interval = sdnotify.watchdog_interval()
        if interval:
            self.watchdog = sdnotify.Watchdog(interval)
            self.watchdog.start()
        return self

    def _spawn(self, coro_fn) -> None:
        task = asyncio.create_task(coro_fn())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGRTMIN + 2):
            loop.remove_signal_handler(sig)
        # A reload still reading its configuration is cut short (its reader
        # killed, the reload rejected); one already applying finishes first.
        self.reloader.abort()
        for t in list(self._tasks):
            await t
        if self.control is not None:
            await self.control.close()
        for part in (self.metrics, self.watchdog):
            if part is not None:
                part.stop()


if __name__ == "__main__":
    sys.exit(main())
