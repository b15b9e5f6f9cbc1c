"""`vrrpd-lab demo`: two routers, three VIPs, a crash of the master and its return.

On a terminal the state of every instance on both routers is a table
redrawn in place; otherwise (a pipe, a log) every change is a plain line.
"""
from __future__ import annotations

import sys
import threading
import time

from vrrpd.lab.conf import LabSpec
from .testbed import BACKUP_PRIORITY, MASTER_PRIORITY, Testbed, master_down_interval

HOSTS = ("A", "B")


class View(threading.Thread):
    def __init__(self, tb: Testbed, out, title: str):
        super().__init__(daemon=True)
        self.tb, self.out, self.title = tb, out, title
        self.tty = out.isatty()
        self.t0 = time.monotonic()
        self.messages: list[str] = []
        self.seen: dict[tuple[str, str], str] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()

    def stamp(self) -> str:
        return f"+{time.monotonic() - self.t0:5.2f}s"

    def say(self, text: str) -> None:
        with self.lock:
            self.messages.append(f"{self.stamp()}  {text}")
            if not self.tty:
                print(self.messages[-1], file=self.out, flush=True)

    def snapshot(self) -> dict[tuple[str, str], str]:
        cells = {}
        for host, d in zip(HOSTS, self.tb.daemons):
            states = d.states()
            vips = set(d.ns.run("ip", "-o", "addr", "show", check=False).stdout.split())
            for name, addr in zip(self.tb.names, self.tb.vips):
                state = states.get(name, "-") if d.alive() else "(killed)"
                has_vip = any(w.split("/")[0] == addr for w in vips)
                cells[(host, name)] = state + (" +VIP" if has_vip else "")
        return cells

    def draw(self, cells) -> None:
        lines = [self.title, "",
                 f"  {'instance':<10}{'VIP':<14}{'A (prio %d)' % MASTER_PRIORITY:<18}"
                 f"{'B (prio %d)' % BACKUP_PRIORITY:<18}"]
        for name, addr in zip(self.tb.names, self.tb.vips):
            lines.append(f"  {name:<10}{addr:<14}{cells[('A', name)]:<18}{cells[('B', name)]:<18}")
        lines += ["", *self.messages[-8:]]
        self.out.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        self.out.flush()

    def run(self) -> None:
        while not self.halt.is_set():
            cells = self.snapshot()
            with self.lock:
                if self.tty:
                    self.draw(cells)
                else:
                    for key, value in cells.items():
                        if self.seen.get(key) != value:
                            print(f"{self.stamp()}    {key[0]}  {key[1]:<6} {value}",
                                  file=self.out, flush=True)
                self.seen = cells
            self.halt.wait(0.1)

    def stop(self) -> None:
        self.halt.set()
        if self.is_alive():
            self.join(2)


def demo(kind: str = "vrrpd", advert_int: float = 0.1, binary: str | None = None,
         out=sys.stdout) -> int:
    spec = LabSpec(instances=3, version=3, advert_int=advert_int)
    mdi = master_down_interval(spec, BACKUP_PRIORITY)
    title = (f"vrrpd-lab demo: {kind} on routers A and B, {spec.instances} VIPs, VRRPv3, "
             f"adverts every {1000 * advert_int:.0f} ms")
    tb = Testbed(spec, kind, binary, tag="d")
    view = View(tb, out, title)
    try:
        if not view.tty:
            print(title, file=out, flush=True)
        view.start()
        view.say(f"starting {kind} on A (priority {MASTER_PRIORITY}), then on B "
                 f"(priority {BACKUP_PRIORITY})")
        tb.start()
        view.say("A is MASTER with every VIP; B is BACKUP")
        time.sleep(2)
        view.say(f"kill -9 {kind} on A")
        t0 = tb.fault("crash")
        fifo, vips = tb.wait_takeover(t0, 10 + 10 * mdi)
        times = sorted(max(fifo[n], vips[n]) - t0 for n in tb.names if n in fifo and n in vips)
        if len(times) == len(tb.names):
            view.say(f"B took over all {len(times)} VIPs: first after {1000 * times[0]:.0f} ms, "
                     f"last after {1000 * times[-1]:.0f} ms (master-down interval "
                     f"{1000 * mdi:.0f} ms)")
        else:
            view.say(f"B took over only {len(times)} of {len(tb.names)} instances")
        time.sleep(2)
        view.say(f"restarting {kind} on A: its higher priority preempts B")
        back = tb.restore("crash")
        view.say(f"A is MASTER again after {back:.2f} s; B is BACKUP")
        time.sleep(1.5)
        view.say("done; removing the lab")
        return 0 if len(times) == len(tb.names) else 1
    finally:
        view.stop()
        tb.close()
        print("lab removed (namespaces and daemons)", file=out, flush=True)
