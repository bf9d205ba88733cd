"""A bounded thread queue whose waits end when the run stops or a stage stalls.

Plain `queue.Queue.put` on a full queue blocks forever if the consumer died: the classic pipeline
deadlock. Every wait here is a loop of short timed waits (50 ms) that re-checks the stop flag, so a
stage blocked on a full or empty queue unwinds within ~50 ms of a failure anywhere.
"""
from __future__ import annotations

import queue
import time
from typing import Callable, Generic, TypeVar

from .clock import StageClock
from .errors import FailureBoard, ShutdownRequested, StageStalled

T = TypeVar("T")
POLL_S = 0.05


class BoundedQueue(Generic[T]):
    def __init__(self, name: str, maxsize: int, board: FailureBoard):
        if maxsize < 1:
            raise ValueError(f"queue {name!r}: maxsize {maxsize} must be >= 1")
        self.name = name
        self.maxsize = maxsize
        self._q: queue.Queue[T] = queue.Queue(maxsize)
        self._board = board
        self.high_water = 0

    def put(self, item: T, *, clock: StageClock | None = None) -> None:
        """Block while full (time counted as `blocked`), unless the run stops."""
        start = time.monotonic()
        try:
            while True:
                if self._board.stop.is_set():
                    raise ShutdownRequested()
                try:
                    self._q.put(item, timeout=POLL_S)
                    self.high_water = max(self.high_water, self._q.qsize())
                    return
                except queue.Full:
                    continue
        finally:
            if clock is not None:
                clock.add("blocked", time.monotonic() - start)

    def get(self, *, clock: StageClock | None = None, stall_timeout_s: float | None = None,
            waiting_for: Callable[[], str] | None = None) -> T:
        """Block while empty (time counted as `idle`); StageStalled after stall_timeout_s.

        waiting_for() names the stage blamed for a stall, asked at the moment the stall is declared.
        """
        start = time.monotonic()
        try:
            while True:
                if self._board.stop.is_set():
                    raise ShutdownRequested()
                try:
                    return self._q.get(timeout=POLL_S)
                except queue.Empty:
                    if stall_timeout_s is not None and time.monotonic() - start > stall_timeout_s:
                        raise StageStalled(
                            waiting_for() if waiting_for else self.name,
                            f"nothing arrived on queue {self.name!r} for {stall_timeout_s:.1f} s "
                            f"(stall_timeout_s); the upstream stage is hung or far too slow",
                        ) from None
        finally:
            if clock is not None:
                clock.add("idle", time.monotonic() - start)

    def qsize(self) -> int:
        return self._q.qsize()
