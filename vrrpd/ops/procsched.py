"""keepalived's process settings for the VRRP process (global_defs):
vrrp_priority (nice), vrrp_rt_priority (realtime SCHED_RR), vrrp_rlimit_rttime,
vrrp_no_swap (mlockall) and vrrp_cpu_affinity.

Why an operator sets them: on a busy router the daemon competes for the CPU
with everything else, scripts included: at normal priority the daemon may
wait for a CPU when an advert is due, with SCHED_RR it runs when it wakes
(figures with 1,000 instances and hanging scripts: bench/results/NOTES.md).

Realtime is set with SCHED_RESET_ON_FORK, as keepalived does, so the script
spawner and the scripts run at normal priority and cannot starve anything.
RLIMIT_RTTIME (default 10 ms, keepalived's) bounds CPU time between blocking
calls; a Python daemon has longer legitimate stretches than keepalived's C
(starting thousands of instances, a burst of transitions), so exceeding the
soft limit is logged, not fatal: the hard limit is left unlimited.
"""
from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import time

log = logging.getLogger("vrrpd")

DEFAULT_RLIMIT_RTTIME_US = 10_000       # keepalived's default vrrp_rlimit_rttime
_MCL_CURRENT, _MCL_FUTURE = 1, 2
_XCPU_LOG_EVERY = 60.0                   # s between SIGXCPU warnings


def apply(g) -> list[str]:
    """Apply the GlobalDefs settings to this process; returns what was set
    (for the start-up log).  A setting the kernel refuses is logged and
    skipped, as keepalived does."""
    done: list[str] = []
    if g.vrrp_cpu_affinity:
        _try(done, f"cpu affinity {sorted(g.vrrp_cpu_affinity)}",
             os.sched_setaffinity, 0, set(g.vrrp_cpu_affinity))
    if g.vrrp_priority:
        _try(done, f"nice {g.vrrp_priority}", os.setpriority, os.PRIO_PROCESS, 0, g.vrrp_priority)
    if g.vrrp_rt_priority:
        rttime = g.vrrp_rlimit_rttime or DEFAULT_RLIMIT_RTTIME_US
        if _try(done, f"rlimit rttime {rttime} us", resource.setrlimit, resource.RLIMIT_RTTIME,
                (rttime, resource.RLIM_INFINITY)):
            signal.signal(signal.SIGXCPU, _XcpuWarning(rttime))
        _try(done, f"realtime SCHED_RR {g.vrrp_rt_priority}", os.sched_setscheduler, 0,
             os.SCHED_RR | os.SCHED_RESET_ON_FORK, os.sched_param(g.vrrp_rt_priority))
    if g.vrrp_no_swap:
        _try(done, "locked in memory", _mlockall)
    return done


def release() -> None:
    """Back to normal scheduling before exiting: interpreter shutdown runs
    long without blocking, and a SIGXCPU after our handler is gone would
    turn a clean stop into death by signal."""
    if os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK in (os.SCHED_RR, os.SCHED_FIFO):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def _try(done: list[str], what: str, fn, *args) -> bool:
    try:
        fn(*args)
    except OSError as e:
        log.warning("cannot set %s: %s", what, e.strerror or e)
        return False
    done.append(what)
    return True


def _mlockall() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


class _XcpuWarning:
    """SIGXCPU: the realtime daemon ran past RLIMIT_RTTIME without blocking."""

    def __init__(self, rttime_us: int):
        self.rttime_us = rttime_us
        self.count = 0
        self._logged = float("-inf")

    def __call__(self, signum, frame) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._logged >= _XCPU_LOG_EVERY:
            self._logged = now
            log.warning("ran over %d us of realtime CPU without blocking (SIGXCPU, %d so far); "
                        "raise vrrp_rlimit_rttime if this repeats", self.rttime_us, self.count)
