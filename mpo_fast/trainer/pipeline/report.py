"""What a pipeline run reports: throughput, per-stage busy/idle time, staleness, rubric swaps, and the
reward of every sample (so two schedules can be checked to score the same samples the same)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from .clock import StageStats
from .protocol import ScoredBatch


def text_digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def rubric_digest(rubric: object) -> str:
    """A rubric's identity for comparisons: its content hash when it has one, else a digest of its repr."""
    for attr in ("content_hash", "hash"):  # a Rubric, or a stored RubricVersion
        h = getattr(rubric, attr, None)
        if isinstance(h, str):
            return h
    return text_digest(repr(rubric))


@dataclass(frozen=True)
class SampleRecord:
    """One trained sample: enough to match it across runs without keeping its text."""

    step: int
    prompt_index: int
    sample_index: int
    text_digest: str
    rubric_digest: str
    rubric_version: int
    policy_version: int
    reward: float | None

    @property
    def key(self) -> tuple:
        return (self.step, self.prompt_index, self.sample_index, self.text_digest, self.rubric_digest)


@dataclass
class StepRecord:
    step: int
    behaviour_version: int
    staleness: int
    rubric_version: int
    num_samples: int
    num_failed: int
    judge_calls: int
    reward_mean: float | None
    metrics: dict
    finished_at_s: float


@dataclass
class PipelineReport:
    mode: str
    max_staleness: int
    wall_s: float
    steps: list[StepRecord] = field(default_factory=list)
    samples: list[SampleRecord] = field(default_factory=list)
    stages: dict[str, StageStats] = field(default_factory=dict)
    rubric_swaps: list[tuple[int, int]] = field(default_factory=list)  # (installed after step, version)
    meta_runs: int = 0
    meta_discarded: int = 0
    judge_timeouts: int = 0

    @property
    def num_samples(self) -> int:
        return len(self.samples)

    @property
    def judge_calls(self) -> int:
        return sum(s.judge_calls for s in self.steps)

    @property
    def samples_per_s(self) -> float:
        return self.num_samples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def steady_samples_per_s(self) -> float | None:
        """Samples/s once the pipeline is full: the steps after the first, over the time between the
        first and the last step finishing (a long run's throughput; None with fewer than 2 steps)."""
        if len(self.steps) < 2:
            return None
        span = self.steps[-1].finished_at_s - self.steps[0].finished_at_s
        return sum(s.num_samples for s in self.steps[1:]) / span if span > 0 else None

    @property
    def judge_calls_per_s(self) -> float:
        return self.judge_calls / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def max_observed_staleness(self) -> int:
        return max((s.staleness for s in self.steps), default=0)

    def record_batch(self, batch: ScoredBatch, staleness: int, metrics: dict, finished_at_s: float) -> None:
        rewards = [s.reward for s in batch.samples]
        ok = [r for r in rewards if r is not None]
        self.steps.append(StepRecord(
            batch.step, batch.behaviour_version, staleness, batch.rubric_version, len(batch.samples),
            batch.num_failed, batch.judge_calls, sum(ok) / len(ok) if ok else None,
            {k: float(v) for k, v in metrics.items()}, finished_at_s,
        ))
        rd = rubric_digest(batch.rubric)
        for s, r in zip(batch.samples, rewards):
            self.samples.append(SampleRecord(
                batch.step, s.prompt.index, s.sample_index, text_digest(s.rollout.text), rd,
                s.rubric_version, s.policy_version, r,
            ))

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "max_staleness": self.max_staleness,
            "steps": len(self.steps),
            "samples": self.num_samples,
            "wall_s": round(self.wall_s, 3),
            "samples_per_s": round(self.samples_per_s, 4),
            "steady_samples_per_s": round(self.steady_samples_per_s, 4) if self.steady_samples_per_s else None,
            "judge_calls": self.judge_calls,
            "judge_calls_per_s": round(self.judge_calls_per_s, 3),
            "max_observed_staleness": self.max_observed_staleness,
            "rubric_swaps": len(self.rubric_swaps),
            "meta_runs": self.meta_runs,
            "judge_timeouts": self.judge_timeouts,
            "failed_judgements": sum(s.num_failed for s in self.steps),
            "stages": {name: st.to_dict() for name, st in self.stages.items()},
        }


def compare_rewards(a: PipelineReport, b: PipelineReport, *, tol: float = 1e-6) -> dict:
    """Match samples with the same step, prompt, sample index, text and rubric; compare their rewards.

    Two schedules generate the same text only while their policies agree, so the matched set is the
    comparable part of the runs; on it the rewards must agree (both masked, or within tol).
    """
    by_key = {s.key: s.reward for s in b.samples}
    matched = mismatched = 0
    max_diff = 0.0
    for s in a.samples:
        if s.key not in by_key:
            continue
        matched += 1
        other = by_key[s.key]
        if (s.reward is None) != (other is None):
            mismatched += 1
            continue
        if s.reward is not None:
            d = abs(s.reward - other)
            max_diff = max(max_diff, d)
            if d > tol:
                mismatched += 1
    return {"matched": matched, "of": len(a.samples), "mismatched": mismatched, "max_abs_diff": max_diff}
