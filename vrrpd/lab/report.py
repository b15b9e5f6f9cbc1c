"""Summaries, a plain progress bar and the CDF plot of failover times."""
from __future__ import annotations

import math
import statistics
import sys
import time


def summary(values) -> dict:
    """first / median / p99 / last / count of a list of seconds (nearest-rank p99)."""
    v = sorted(values)
    if not v:
        return {"count": 0, "first": None, "median": None, "p99": None, "last": None}
    return {"count": len(v), "first": v[0], "median": statistics.median(v),
            "p99": v[max(0, math.ceil(0.99 * len(v)) - 1)], "last": v[-1]}


class Progress:
    """`label [#####.....] n/total` on stderr; redrawn in place on a terminal,
    a line per 10 % step otherwise (logs and CI)."""

    def __init__(self, label: str, total: int, stream=sys.stderr, width: int = 30):
        self.label, self.total, self.stream, self.width = label, max(1, total), stream, width
        self.tty = stream.isatty()
        self.shown = -1
        self.t0 = time.monotonic()

    def __call__(self, n: int) -> None:
        step = n * (self.width if self.tty else 10) // self.total
        if step == self.shown:
            return
        self.shown = step
        fill = n * self.width // self.total
        text = (f"{self.label} [{'#' * fill}{'.' * (self.width - fill)}] {n}/{self.total}"
                f" {time.monotonic() - self.t0:5.1f}s")
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.shown >= 0:
            self.stream.write("\n")
            self.stream.flush()


PLOT_EXTRA_MISSING = ("--plot needs matplotlib, which vrrpd's lab extra brings: "
                      "pip install 'vrrpd[lab]'")


class PlotUnavailable(RuntimeError):
    pass


def require_matplotlib() -> None:
    """Before a lab runs for minutes: plots need the `lab` extra."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(PLOT_EXTRA_MISSING) from None


def plot_cdf(curves: dict[str, list[float]], path: str, title: str) -> None:
    """One step curve per label: fraction of instances MASTER with VIP vs time since fault."""
    require_matplotlib()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in curves.items():
        v = sorted(values)
        if v:
            ax.step([x * 1000 for x in v], [(i + 1) / len(v) for i in range(len(v))],
                    where="post", label=f"{label} (n={len(v)})")
    ax.set_xscale("log")            # keeps 100 ms and 10 s failovers readable on one plot
    ax.set_xlabel("time from fault to MASTER with VIP (ms, log scale)")
    ax.set_ylabel("fraction of instances")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_result(result: dict, path: str) -> None:
    """The CDF plot of a `vrrpd-lab failover` result: one curve per daemon and scenario."""
    curves = {f"{k} {s}": [t for fo in d["failovers"] if fo["scenario"] == s
                           for t in fo["times"] if t is not None]
              for k, d in result["daemons"].items() for s in result["scenarios"]}
    spec = result["spec"]
    plot_cdf(curves, path, f"{spec['instances']} instances, VRRPv{spec['version']}, "
             f"advert {spec['advert_int']:g} s, IPv{spec['family']}")
