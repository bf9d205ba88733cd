"""Per-stage time accounting: busy, idle (waiting for input) and blocked (waiting on a full queue or the
staleness gate), so a report shows which stage sets the pace, not only the speedup.

A stage with many calls in flight (the judge pool) is busy whenever at least one is in flight;
`in_flight_seconds` integrates the number in flight, so in_flight_seconds / busy is the mean
concurrency the pool achieved.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

KINDS = ("busy", "idle", "blocked")


@dataclass(frozen=True)
class StageStats:
    name: str
    busy_s: float
    idle_s: float
    blocked_s: float
    wall_s: float
    items: int
    in_flight_s: float = 0.0

    @property
    def busy_fraction(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def not_busy_s(self) -> float:
        """Everything but work: waiting for input, on back-pressure, or between tasks."""
        return max(0.0, self.wall_s - self.busy_s)

    def to_dict(self) -> dict:
        d = {
            "busy_s": round(self.busy_s, 3),
            "idle_s": round(self.idle_s, 3),
            "blocked_s": round(self.blocked_s, 3),
            "not_busy_s": round(self.not_busy_s, 3),
            "busy_fraction": round(self.busy_fraction, 3),
            "items": self.items,
        }
        if self.in_flight_s:
            d["mean_concurrency"] = round(self.in_flight_s / self.busy_s, 2) if self.busy_s > 0 else 0.0
        return d


class StageClock:
    def __init__(self, name: str):
        self.name = name
        self._lock = threading.Lock()
        self._totals = dict.fromkeys(KINDS, 0.0)
        self.items = 0
        # concurrent work (judge pool): busy = union of intervals with >= 1 in flight
        self._in_flight = 0
        self._in_flight_since = 0.0
        self._busy_since = 0.0
        self._in_flight_s = 0.0

    def add(self, kind: str, seconds: float) -> None:
        with self._lock:
            self._totals[kind] += max(0.0, seconds)

    @contextmanager
    def busy(self, items: int = 0):
        start = time.monotonic()
        try:
            yield
        finally:
            with self._lock:
                self._totals["busy"] += time.monotonic() - start
                self.items += items

    def enter(self) -> None:
        """One more concurrent unit of work started (judge call)."""
        now = time.monotonic()
        with self._lock:
            self._in_flight_s += self._in_flight * (now - self._in_flight_since)
            self._in_flight_since = now
            if self._in_flight == 0:
                self._busy_since = now
            self._in_flight += 1

    def leave(self, items: int = 1) -> None:
        now = time.monotonic()
        with self._lock:
            self._in_flight_s += self._in_flight * (now - self._in_flight_since)
            self._in_flight_since = now
            self._in_flight -= 1
            self.items += items
            if self._in_flight == 0:
                self._totals["busy"] += now - self._busy_since

    def stats(self, wall_s: float) -> StageStats:
        now = time.monotonic()
        with self._lock:
            busy = self._totals["busy"]
            in_flight_s = self._in_flight_s
            if self._in_flight:  # still running at report time: count the open interval
                busy += now - self._busy_since
                in_flight_s += self._in_flight * (now - self._in_flight_since)
            return StageStats(self.name, busy, self._totals["idle"], self._totals["blocked"], wall_s, self.items, in_flight_s)
