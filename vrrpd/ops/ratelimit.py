"""Per-key rate limiting of what a storm of packets would otherwise repeat
without bound (log lines, script runs): at most one event per key per
interval; the rest are counted, per key and in total, never lost silently."""
from __future__ import annotations

import time


class PerKey:
    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.suppressed = 0                       # in total
        self._last: dict = {}                     # key -> time of the last allowed event
        self._held: dict = {}                     # key -> suppressed since then

    def allow(self, key, interval: float) -> bool:
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < interval:
            self.suppressed += 1
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        return True

    def take_held(self, key) -> int:
        """How many were suppressed for key since its last allowed event (reset)."""
        return self._held.pop(key, 0)

    def forget(self, key) -> None:
        self._last.pop(key, None)
        self._held.pop(key, None)
