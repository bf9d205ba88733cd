"""Pieces both schedules share: checks on a finished batch, the meta-judge's sample snapshot, and the
call into a possibly-async stage method."""
from __future__ import annotations

import collections
import inspect
import threading
from typing import Any, Callable

from .errors import JudgeFailureError
from .protocol import ScoredBatch, ScoredSample


def evolve_due(stages: Any, evolve_every: int, done: int, end: int) -> bool:
    """After `done` updates of a run ending at `end`: is meta-refinement due? Every `evolve_every`
    updates, or earlier when the stages ask for it (their optional `evolve_requested(done)`); never
    after the last update (its rubric would score nothing) and never when evolution is off."""
    if not evolve_every or done >= end:
        return False
    if done % evolve_every == 0:
        return True
    requested = getattr(stages, "evolve_requested", None)
    return bool(requested is not None and requested(done))


def check_batch(batch: ScoredBatch, *, group_size: int, max_failed_fraction: float) -> None:
    n = len(batch.samples)
    if n == 0 or n % group_size:
        raise ValueError(f"step {batch.step}: {n} samples is not a whole number of groups of {group_size}")
    failed = batch.num_failed
    if failed > max_failed_fraction * n:
        errors = collections.Counter(
            s.judge_error or getattr(s.judgement, "error", None) or "judgement not ok" for s in batch.samples if s.reward is None
        )
        worst = "; ".join(f"{msg} (x{k})" for msg, k in errors.most_common(3))
        raise JudgeFailureError(
            "judge",
            f"step {batch.step}: {failed} of {n} judgements failed (> max_failed_fraction {max_failed_fraction}); "
            f"most common: {worst}. Check that the judge endpoint is up and answers in the expected format",
        )


class RecentSamples:
    """Recent scored samples for the meta-judge; appended from the judge side, read by the trainer.

    Samples are kept per step for the last `keep_steps` steps (every step has at least one sample,
    so keep_steps >= wanted samples + max_staleness + 1 always covers a snapshot), and a snapshot
    orders them by (step, prompt slot, sample index) whatever order the judges finished in, so the
    meta-judge reads the same samples in both schedules.
    """

    def __init__(self, keep_steps: int):
        self._lock = threading.Lock()
        self._keep = max(1, keep_steps)
        self._by_step: dict[int, list[ScoredSample]] = {}

    def add(self, sample: ScoredSample) -> None:
        # Masked samples are kept: a judge that cannot score some answers is evidence about the rubric.
        with self._lock:
            self._by_step.setdefault(sample.step, []).append(sample)
            newest = max(self._by_step)
            for old in [k for k in self._by_step if k <= newest - self._keep]:
                del self._by_step[old]

    def snapshot(self, rubric_version: int, n: int, up_to_step: int) -> list[ScoredSample]:
        """The newest `n` samples of steps <= up_to_step scored under `rubric_version`."""
        with self._lock:
            same = [s for k, v in self._by_step.items() if k <= up_to_step for s in v if s.rubric_version == rubric_version]
        same.sort(key=lambda s: (s.step, s.slot, s.sample_index))
        return same[-n:]

    def state(self, encode: Callable[[ScoredSample], Any], *, up_to_step: int) -> list[Any]:
        """The window's samples of steps <= up_to_step, each through `encode`, for a checkpoint (later
        steps may be half judged: a resumed run draws them again)."""
        with self._lock:
            kept = [s for k in sorted(self._by_step) if k <= up_to_step for s in self._by_step[k]]
        kept.sort(key=lambda s: (s.step, s.slot, s.sample_index))
        return [encode(s) for s in kept]

    def load_state(self, rows: list[Any], decode: Callable[[Any], ScoredSample]) -> None:
        """Replace the window by a checkpoint's samples (see state)."""
        with self._lock:
            self._by_step = {}
        for row in rows:
            self.add(decode(row))


def returns_awaitable(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))
