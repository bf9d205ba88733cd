"""The current rubric and the one waiting to replace it, swapped atomically at a step boundary.

The producer reads (version, rubric) once per step, under the lock, and stamps it on every sample
of that step; the meta-judge only ever stages a proposal; the trainer installs it between two
updates. So a step's samples, and therefore every group, see exactly one rubric version, and
versions only move forward.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RubricSwap:
    version: int
    step: int  # the boundary it was installed at: steps >= step + 1 are produced with it
    rubric: Any


class RubricBoard:
    def __init__(self, rubric: Any, version: int = 0):
        self._lock = threading.Lock()
        self._version = version
        self._rubric = rubric
        self._staged: Any = None
        self._initial = (version, rubric)
        self.history: list[RubricSwap] = []

    def current(self) -> tuple[int, Any]:
        with self._lock:
            return self._version, self._rubric

    def stage(self, rubric: Any) -> None:
        """Offer a new rubric; a later proposal before the next boundary replaces an earlier one."""
        with self._lock:
            self._staged = rubric

    @property
    def has_staged(self) -> bool:
        with self._lock:
            return self._staged is not None

    def swap_at_boundary(self, step: int) -> RubricSwap | None:
        """Install the staged rubric, if any; called only by the trainer between updates."""
        with self._lock:
            if self._staged is None:
                return None
            self._version += 1
            self._rubric, self._staged = self._staged, None
            swap = RubricSwap(self._version, step, self._rubric)
            self.history.append(swap)
            return swap

    def as_of(self, boundary: int) -> tuple[int, Any]:
        """The (version, rubric) in force after boundary `boundary` (swaps at later boundaries
        ignored): what a step produced under the staleness gate uses when every rank must pick the
        same rubric whatever its threads' timing (data parallel: see pipeline/overlapped.py)."""
        with self._lock:
            installed = [s for s in self.history if s.step <= boundary]
            if not installed:
                return self._initial
            return installed[-1].version, installed[-1].rubric

    def install(self, version: int, rubric: Any, step: int) -> RubricSwap:
        """Install rank 0's broadcast rubric as `version` at boundary `step` (a data-parallel rank
        other than 0 never stages: it installs exactly what rank 0 installed, at the same boundary)."""
        with self._lock:
            if version <= self._version:
                raise ValueError(f"rubric v{version} installed after v{self._version}: versions only move forward")
            self._version, self._rubric, self._staged = version, rubric, None
            swap = RubricSwap(version, step, rubric)
            self.history.append(swap)
            return swap
