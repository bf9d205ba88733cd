"""What both schedules share: their state (failure board, staleness gate, rubric board, stage clocks,
the meta-judge's sample window), one sample's trip through the judge, and the report's totals."""
from __future__ import annotations

import asyncio
from typing import Any

from .clock import StageClock
from .common import RecentSamples
from .errors import FailureBoard
from .protocol import PipelineStages, ScoredSample
from .report import PipelineReport
from .rubric_board import RubricBoard
from .settings import PipelineSettings
from .staleness import StalenessGate

STAGES = ("rollout", "judge", "trainer", "meta")


class PipelineBase:
    mode = ""  # the PipelineSettings.mode a subclass runs
    other = ""  # the class to use for the other mode (named in the error)

    def __init__(self, stages: PipelineStages, settings: PipelineSettings, *, rubric: Any, rubric_version: int = 0,
                 start_step: int = 0, device: str | None = None):
        if settings.mode != self.mode:
            raise ValueError(f"{type(self).__name__} needs settings.mode={self.mode!r}, got {settings.mode!r}; use {self.other}")
        self.stages = stages
        self.settings = settings
        self.start_step = start_step
        self.device = device
        self.board = FailureBoard()
        self.gate = StalenessGate(settings.max_staleness, start_step, self.board)
        self.rubrics = RubricBoard(rubric, rubric_version)
        self.clocks = {name: StageClock(name) for name in STAGES}
        self.recent = RecentSamples(settings.mpo_samples + settings.max_staleness + 1)
        self._timeouts = 0
        self._meta_runs = 0

    async def _judge_sample(self, sample: ScoredSample) -> None:
        """Judge one sample (timed on the judge clock); a call past judge_timeout_s is masked."""
        clock, timeout = self.clocks["judge"], self.settings.judge_timeout_s
        request = self.stages.judge_request(sample)
        clock.enter()
        calls = 0
        try:
            results = await asyncio.wait_for(self.stages.judge([request]), timeout=timeout)
            if len(results) != 1:
                raise ValueError(f"judge returned {len(results)} judgements for 1 request")
            sample.judgement = results[0]
            calls = sample.judge_calls
        except asyncio.TimeoutError:
            self._timeouts += 1
            sample.judge_error = f"judge call exceeded judge_timeout_s={timeout}"
        finally:
            clock.leave(calls)

    def _agree_rubric(self, step: int, swap):
        """The rubric swap at boundary `step` every rank makes: the stages' optional
        `agree_rubric(step, swap, board)` (data parallel: rank 0's swap, or none, broadcast and
        installed on every rank's board at this same boundary); one process: `swap` as is."""
        agree = getattr(self.stages, "agree_rubric", None)
        return swap if agree is None else agree(step, swap, self.rubrics)

    def _rubric_for_step(self, step: int):
        """(version, rubric) step `step` is produced with. Data parallel (`stages.lockstep_rubric`):
        the one in force after boundary step - max_staleness - 1, the newest the staleness gate
        guarantees every rank has installed when it starts the step, so all ranks pick the same
        whatever their threads' timing; one process: the newest installed."""
        if getattr(self.stages, "lockstep_rubric", False):
            return self.rubrics.as_of(step - self.settings.max_staleness - 1)
        return self.rubrics.current()

    def _finish_report(self, report: PipelineReport, wall_s: float) -> None:
        report.wall_s = wall_s
        report.stages = {name: c.stats(wall_s) for name, c in self.clocks.items()}
        report.rubric_swaps = [(s.step, s.version) for s in self.rubrics.history]
        report.judge_timeouts = self._timeouts
        report.meta_runs = self._meta_runs
