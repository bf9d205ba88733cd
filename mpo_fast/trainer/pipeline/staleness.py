"""The staleness gate: the producer may start step j only once policy version >= j - max_staleness.

Versions count updates: version v is the policy after v optimizer steps, and step j's update turns
version j into j + 1. A batch for step j generated with version w is therefore j - w updates stale
when it is trained on; the gate makes w >= j - max_staleness, and the trainer re-checks it on every
batch (`check`), so the bound holds even if a stage misbehaves.
"""
from __future__ import annotations

import threading
import time

from .clock import StageClock
from .errors import FailureBoard, ShutdownRequested, StalenessViolation
from .bounded_queue import POLL_S


class StalenessGate:
    def __init__(self, max_staleness: int, initial_version: int, board: FailureBoard):
        if max_staleness < 0:
            raise ValueError(f"max_staleness {max_staleness} must be >= 0")
        self.max_staleness = max_staleness
        self._version = initial_version
        self._cond = threading.Condition()
        self._board = board
        self.max_seen = 0  # the largest staleness any trained batch had

    @property
    def version(self) -> int:
        with self._cond:
            return self._version

    def publish(self, version: int) -> None:
        """The trainer finished the update that produced `version`."""
        with self._cond:
            if version < self._version:
                raise ValueError(f"policy version went back from {self._version} to {version}")
            self._version = version
            self._cond.notify_all()

    def wait_to_start(self, step: int, *, clock: StageClock | None = None) -> int:
        """Block until step `step` may be generated; returns the newest published version."""
        need = step - self.max_staleness
        start = time.monotonic()
        try:
            with self._cond:
                while self._version < need:
                    if self._board.stop.is_set():
                        raise ShutdownRequested()
                    self._cond.wait(POLL_S)
                return self._version
        finally:
            if clock is not None:
                clock.add("blocked", time.monotonic() - start)

    def check(self, step: int, behaviour_version: int) -> int:
        """Raise StalenessViolation unless 0 <= step - behaviour_version <= max_staleness."""
        staleness = step - behaviour_version
        if not 0 <= staleness <= self.max_staleness:
            raise StalenessViolation(
                "trainer",
                f"step {step} would train on samples from policy version {behaviour_version} "
                f"(staleness {staleness}, allowed 0..{self.max_staleness}); the producer ran ahead of the gate",
            )
        self.max_seen = max(self.max_seen, staleness)
        return staleness
