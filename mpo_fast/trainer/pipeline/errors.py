"""Errors raised by the pipeline, and the shared record of the first stage failure."""
from __future__ import annotations

import threading
import time


class PipelineError(RuntimeError):
    """A stage failed and the pipeline shut down; `stage` names it and __cause__ is its exception."""

    def __init__(self, stage: str, message: str):
        super().__init__(f"[{stage}] {message}")
        self.stage = stage


class StageStalled(PipelineError):
    """A stage made no progress within stall_timeout_s (a hung judge, a wedged generator)."""


class StalenessViolation(PipelineError):
    """A batch would train a policy more than max_staleness updates newer than the one that sampled it."""


class RubricMixError(PipelineError):
    """A group would be scored by two rubric versions."""


class JudgeFailureError(PipelineError):
    """Too many judgements of one batch failed (timeouts, parse failures, server errors)."""


class ShutdownRequested(Exception):
    """Raised inside a stage waiting on a queue or gate when another stage stopped the run."""


class FailureBoard:
    """The first failure of any stage wins; setting it sets `stop` so every other stage unwinds."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.stage: str | None = None
        self.error: BaseException | None = None
        self.at: float | None = None

    def fail(self, stage: str, error: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.stage, self.error, self.at = stage, error, time.monotonic()
        self.stop.set()

    def check(self) -> None:
        """Raise ShutdownRequested once any stage failed or shutdown began."""
        if self.stop.is_set():
            raise ShutdownRequested()

    def as_pipeline_error(self) -> PipelineError | None:
        if self.error is None:
            return None
        if isinstance(self.error, PipelineError):
            return self.error
        err = PipelineError(self.stage or "?", f"{type(self.error).__name__}: {self.error}")
        err.__cause__ = self.error
        return err
