"""Scheduling of the MPO stages: the reference serial schedule and the overlapped pipeline.

    from mpo_fast.trainer.pipeline import PipelineSettings, make_pipeline
    report = make_pipeline(stages, PipelineSettings(mode="overlapped", max_staleness=1), rubric=r).run(100)
"""
from __future__ import annotations

from typing import Any

from .clock import StageStats
from .errors import (
    JudgeFailureError,
    PipelineError,
    RubricMixError,
    StageStalled,
    StalenessViolation,
)
from .overlapped import OverlappedPipeline
from .protocol import PipelineStages, PromptItem, ScoredBatch, ScoredSample
from .report import PipelineReport, SampleRecord, StepRecord, compare_rewards
from .serial import SerialPipeline
from .settings import PipelineConfigError, PipelineSettings


def make_pipeline(stages: PipelineStages, settings: PipelineSettings, *, rubric: Any, rubric_version: int = 0,
                  start_step: int = 0, device: str | None = None) -> OverlappedPipeline | SerialPipeline:
    """The runner for settings.mode; start_step/rubric_version resume a run from its checkpoint."""
    cls = OverlappedPipeline if settings.mode == "overlapped" else SerialPipeline
    return cls(stages, settings, rubric=rubric, rubric_version=rubric_version, start_step=start_step, device=device)


__all__ = [
    "JudgeFailureError",
    "OverlappedPipeline",
    "PipelineConfigError",
    "PipelineError",
    "PipelineReport",
    "PipelineSettings",
    "PipelineStages",
    "PromptItem",
    "RubricMixError",
    "SampleRecord",
    "ScoredBatch",
    "ScoredSample",
    "SerialPipeline",
    "StageStalled",
    "StageStats",
    "StalenessViolation",
    "StepRecord",
    "compare_rewards",
    "make_pipeline",
]

__all__ += ["TrainerStages", "train_pipelined"]


def __getattr__(name: str):
    # The MPOTrainer adapter imports the trainer's modules (batch, update, config); loading it lazily
    # lets trainer/config.py import PipelineSettings from here without an import cycle.
    if name in ("TrainerStages", "train_pipelined"):
        from . import trainer_stages

        return getattr(trainer_stages, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
