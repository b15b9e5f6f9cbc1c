"""Pauses of Python's cyclic collector while the loop allocates in a burst
that leaves no garbage cycles: a reload, a mass failover (a tuple or two per
instance, so dozens of young-generation passes that find nothing, each one
on the loop between a takeover's slices).  Pauses nest: the collector comes
back when the last one ends, and only if it ran before the first began."""
from __future__ import annotations

import gc

_depth = 0
_was_enabled = False


def pause() -> None:
    global _depth, _was_enabled
    if _depth == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _depth += 1


def resume() -> None:
    """End one pause()."""
    global _depth
    if _depth == 0:
        raise RuntimeError("collector.resume() without pause()")
    _depth -= 1
    if _depth == 0 and _was_enabled:
        gc.enable()


def paused() -> bool:
    return _depth > 0
