"""Per-instance aggregation: an instance's tracked objects -> its Verdict.

An instance's tracks are (kind, Track) pairs: the kind one of TRACK_KINDS,
the Track the config model's track_* line with its weight resolved (never
None: an omitted weight already replaced by the object's own).  Memory is
shared across instances, which matters at thousands of instances tracking
the same few objects: equal track lists, the (kind, name) keys, the values
mappings and the Verdicts are one object each, never changed in place.
"""
from __future__ import annotations

import functools
import weakref
from typing import Callable, Iterable, Iterator

from vrrpd.config.model import Track
from vrrpd.track.rules import (
    SYNC_DROPPED_KINDS,
    TRACK_KINDS,
    Verdict,
    bool_adjustment,
    effective_priority,
    file_adjustment,
)

Tracked = tuple[str, Track]


def track_entry(kind: str, name: str, weight: int = 0, reverse: bool = False) -> Tracked:
    """One track_* entry of an instance or sync group, its weight resolved."""
    if kind not in TRACK_KINDS:
        raise ValueError(f"unknown track kind {kind!r}")
    return kind, Track(name=name, weight=weight, reverse=reverse)


_KEYS: dict[tuple[str, str], tuple[str, str]] = {}


def track_key(kind: str, name: str) -> tuple[str, str]:
    """(kind, name) of a tracked object, one tuple for all the instances
    that track it (thousands of instances tracking their interface)."""
    key = (kind, name)
    return _KEYS.setdefault(key, key)


class _Values(dict):
    """A TrackedInstance's tracked values, shared by every instance with
    equal ones (thousands of instances tracking one interface): never
    changed in place, replaced by _values_with() / _values_without()."""
    __slots__ = ("__weakref__",)


_VALUES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _shared_values(items: dict) -> _Values:
    # The value's type is part of the key: True == 1 would merge a bool with an int.
    key = tuple(sorted((k, type(v), v) for k, v in items.items()))
    values = _VALUES.get(key)
    if values is None:
        values = _VALUES[key] = _Values(items)
    return values


NO_VALUES = _shared_values({})


def _values_with(values: dict, key: tuple[str, str], value) -> _Values:
    return _shared_values({**values, key: value})


def _values_without(values: dict, key: tuple[str, str]) -> _Values:
    return _shared_values({k: v for k, v in values.items() if k != key})


@functools.lru_cache(maxsize=None)
def _verdict(fault: bool, priority: int, pending: bool) -> Verdict:
    # Few distinct verdicts (priority is 1..255): one object each, shared.
    return Verdict(fault, priority, pending)


class TrackedInstance:
    """Combines an instance's tracked objects into (fault, priority, pending).

    The caller feeds states with update(kind, name, value): bool for
    script/interface/process, int for file.  An object not yet reported
    contributes nothing, except a weight-0 script which keeps the instance
    pending (keepalived holds it in INIT until its scripts have run).
    on_change(Verdict) fires whenever the verdict changes; or, with
    named=True, on_change(name, Verdict): one callable for all instances
    instead of a closure each.
    """

    __slots__ = ("name", "base_priority", "tracks", "on_change", "named", "_values", "verdict")

    def __init__(self, name: str, priority: int, tracks: Iterable[Tracked] = (),
                 group_tracks: Iterable[Tracked] = (), *, sync_group: bool = False,
                 sync_group_tracking_weight: bool = False,
                 on_change: Callable[..., None] | None = None, named: bool = False):
        self.name = name
        self.base_priority = priority
        own = tuple(tracks)
        if sync_group and not sync_group_tracking_weight:
            own = tuple((k, t) for k, t in own if not (t.weight and k in SYNC_DROPPED_KINDS))
        self.tracks: tuple[Tracked, ...] = own + tuple(group_tracks)
        self.on_change = on_change
        self.named = named
        self._values: dict[tuple[str, str], bool | int] = NO_VALUES    # shared, read-only
        self.verdict = self.evaluate()

    def update(self, kind: str, name: str, value: bool | int) -> Verdict:
        if self._values.get((kind, name)) == value and (kind, name) in self._values:
            return self.verdict             # nothing new (a re-dump, a reload)
        self.set_value(kind, name, value)
        verdict = self.evaluate()
        if kind == "file" and self._file_faults(name, value):
            # keepalived (vrrp_track.c) takes the file's old share out of its
            # total on the way into FAULT without recomputing the effective
            # priority: FAULT is reported with the priority from before.
            verdict = verdict._replace(priority=self.verdict.priority)
        return self._changed(verdict)

    def set_value(self, kind: str, name: str, value: bool | int) -> None:
        """Record a value without evaluating (the caller re-evaluates)."""
        self._values = _values_with(self._values, track_key(kind, name), value)

    def value(self, kind: str, name: str) -> bool | int | None:
        """The last value reported for a tracked object; None: none yet."""
        return self._values.get((kind, name))

    def states(self) -> Iterator[tuple[str, Track, bool | int | None]]:
        """(kind, track, value) of each track, for status dumps."""
        for kind, t in self.tracks:
            yield kind, t, self._values.get((kind, t.name))

    def _file_faults(self, name: str, value) -> bool:
        """Whether this value of file `name` puts the instance in FAULT by its weight."""
        return any(k == "file" and t.name == name and t.weight and
                   file_adjustment(int(value), t.weight, t.reverse) is None
                   for k, t in self.tracks)

    def _changed(self, verdict: Verdict) -> Verdict:
        if verdict != self.verdict:
            self.verdict = verdict
            if self.on_change is not None:
                if self.named:
                    self.on_change(self.name, verdict)
                else:
                    self.on_change(verdict)
        return verdict

    def remove(self, kind: str, name: str) -> Verdict:
        """Stop tracking an object (keepalived drops a disabled script)."""
        self.tracks = tuple((k, t) for k, t in self.tracks if not (k == kind and t.name == name))
        self._values = _values_without(self._values, (kind, name))
        return self._changed(self.evaluate())

    def tracks_object(self, kind: str, name: str) -> bool:
        return any(k == kind and t.name == name for k, t in self.tracks)

    def evaluate(self) -> Verdict:
        """The verdict of the values known now (not stored, not reported)."""
        adjustments, fault, pending = [], False, False
        for kind, t in self.tracks:
            weight: int = t.weight  # type: ignore[assignment]  # resolved: never None
            value = self._values.get((kind, t.name))
            if value is None:
                pending |= kind == "script" and weight == 0
                continue
            if kind == "file":
                adj = file_adjustment(int(value), weight, t.reverse)
            else:
                adj = bool_adjustment(bool(value), weight, t.reverse)
            if adj is None:
                fault = True
            else:
                adjustments.append(adj)
        return _verdict(fault, effective_priority(self.base_priority, adjustments), pending)
