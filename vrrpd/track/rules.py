"""The priority rules of tracked objects (keepalived.conf(5), vrrp_track.c).

* up/down objects (scripts, interfaces, processes) with weight w:
  w == 0: the instance is FAULT while the object is down ("weight 0
  reverse": while it is up).  w > 0: adds w while up.  w < 0: subtracts |w|
  while down.  `reverse` flips the sign of the adjustment (w > 0 reverse:
  subtracts w while up).
* track_file: the file holds an integer v.  w == 0: v != 0 means FAULT
  (reverse: v == 0).  Otherwise v * w (negated by reverse) is added; below
  -253 means FAULT, above 253 is capped at 253.  A missing or unparsable
  file reads as 0.  Entering that FAULT keeps the effective priority from
  before (keepalived does not recompute it then).
* effective priority = base + adjustments, clamped to 1..254; an address
  owner (255) never changes.
* sync-group members without `sync_group_tracking_weight`: a weighted
  track_script or track_file of the member's own is ignored altogether
  (keepalived 2.2.7 drops it: its failure changes nothing); interface and
  process weights stay in force, as in keepalived; the group's own track_*
  keep their weights.
"""
from __future__ import annotations

from typing import Iterable, NamedTuple

PRIO_OWNER = 255
MAX_FILE_ADJUST = 253

TRACK_KINDS = ("script", "interface", "file", "process")
# Weighted own tracks keepalived 2.2.7 removes from a sync-group member.
SYNC_DROPPED_KINDS = ("script", "file")


def bool_adjustment(up: bool, weight: int, reverse: bool = False) -> int | None:
    """Priority adjustment of an up/down tracked object; None means FAULT."""
    if weight == 0:
        return 0 if up != reverse else None
    applies = up if weight > 0 else not up
    return (-weight if reverse else weight) if applies else 0


def file_adjustment(value: int, weight: int, reverse: bool = False) -> int | None:
    """Priority adjustment from a track_file value; None means FAULT."""
    if weight == 0:
        return 0 if (value == 0) != reverse else None
    adj = value * weight * (-1 if reverse else 1)
    if adj < -MAX_FILE_ADJUST:
        return None
    return min(adj, MAX_FILE_ADJUST)


def effective_priority(base: int, adjustments: Iterable[int]) -> int:
    """base + adjustments clamped to 1..254; an owner (255) stays 255."""
    if base >= PRIO_OWNER:
        return PRIO_OWNER
    return max(1, min(PRIO_OWNER - 1, base + sum(adjustments)))


class Verdict(NamedTuple):
    """What an instance's tracked objects say, as the daemon applies it."""
    fault: bool          # some weight-0 object is down (or a file went below -253)
    priority: int        # effective priority
    pending: bool        # a weight-0 script has not reported yet: stay in INIT (keepalived)
