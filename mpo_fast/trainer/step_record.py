"""What one MPO step writes, whatever the schedule: its metrics.jsonl row and its samples.jsonl records.

    row = metrics_row(StepFacts(...), update=result, counters=trainer.counters(), evolution=meta_result)
    records = sample_records(step, prompts, rollouts, scored, advantages, rubric_version, staleness=0)

The serial loop (MPOTrainer.train_step), the pipelined schedules (pipeline/trainer_stages.py) and the
data-parallel trainer all build their rows and records here, so a run's files have the same keys
whether its stages ran one after another, overlapped, or on several ranks. A value a schedule
cannot measure is written as None, never left out.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from ..judges.types import Judgement, judgement_metrics
from ..parsing.spec import ScoreStatus
from ..process_memory import peak_rss_mb
from ..rubrics import Rubric, RubricVersion
from .reward_funcs import func_metrics
from .stages import PromptItem, ScoredRollouts, item_score_stats
from .update import UpdateResult


def _mean(values: Sequence[float]) -> float:
    return float(statistics.fmean(values)) if values else float("nan")


def _std(values: Sequence[float]) -> float:
    return float(statistics.pstdev(values)) if len(values) > 1 else 0.0


@dataclass(frozen=True)
class RunCounters:
    """The run's cumulative tallies as the trainer holds them (read-only here)."""

    judged: int
    judge_failed: int
    skipped_nonfinite: int

    @property
    def judge_failure_rate(self) -> float:
        return self.judge_failed / max(self.judged, 1)


@dataclass(frozen=True)
class StepTimings:
    """Seconds per stage of one step. Pipelined: generate_s and judge_s are the step's own
    generation time and the span of its judge calls (they overlap other steps' work), evolve_s the
    meta-judge call reported on this row (the first row written after it finished; it ran in the
    background), step_seconds the time since the previous row."""

    generate_s: float
    judge_s: float
    update_s: float
    evolve_s: float
    step_seconds: float


@dataclass(frozen=True)
class StepFacts:
    """What a step was, in the terms every schedule knows."""

    step: int  # 1-based
    rubric_version: RubricVersion  # the rubric that scored the step's samples
    scored: ScoredRollouts
    lengths: list[int]  # completion tokens per sample
    finished: list[bool]  # per sample: ended with EOS
    degenerate_groups: int
    policy_version: int  # the weights version after the step's update
    staleness: int  # update step - the oldest policy version that sampled the batch (serial: 0)
    schedule: str  # "serial" | "overlapped"
    signals: list[str]
    rubric_next: int  # the rubric version in force after the step's boundary
    timings: StepTimings
    wall_s: float  # since the run (or resume) started
    lr: float  # the learning rate now (used when no update ran)


def evolution_metrics(result: Any) -> dict[str, Any]:
    """The meta-judge's call this step (an Evolution, a bare Rubric or None), the same keys always:
    counts are None when it did not run (or returned a bare Rubric and so said nothing more)."""
    if result is None or isinstance(result, Rubric):
        return {"meta_calls": None, "meta_failures": None, "meta_proposals": None, "meta_rejections": None,
                "meta_gate_notes": []}
    rejections = getattr(result, "rejections", ()) or ()
    return {
        "meta_calls": getattr(result, "calls", None),
        "meta_failures": len(getattr(result, "failures", ()) or ()),
        "meta_proposals": len(getattr(result, "proposals", ()) or ()),
        # quality-gate refusals (rubrics/gates.py), each {gate, item, reason, action}
        "meta_rejections": len([r for r in rejections if r.action != "flagged"]),
        "meta_gate_notes": [r.to_dict() for r in rejections],
    }


def metrics_row(facts: StepFacts, *, update: UpdateResult | None, counters: RunCounters,
                evolution: dict[str, Any] | None = None) -> dict[str, Any]:
    """The step's metrics.jsonl row. evolution: evolution_metrics() of the meta call reported on this
    row (None: no call)."""
    scored, rv, t = facts.scored, facts.rubric_version, facts.timings
    valid_rewards = [float(r) for r, v in zip(scored.rewards.tolist(), scored.valid.tolist()) if v]
    judge_rewards = [r for r in scored.judge_rewards if r is not None]
    rule_rewards = [r for r in scored.rule_rewards if r is not None]
    n = len(facts.lengths)
    row: dict[str, Any] = {
        "step": facts.step,
        "rubric_version": rv.version,
        "rubric_hash": rv.hash,
        "reward_mean": _mean(valid_rewards),
        "reward_std": _std(valid_rewards),
        "reward_min": min(valid_rewards) if valid_rewards else float("nan"),
        "reward_max": max(valid_rewards) if valid_rewards else float("nan"),
        "judge_reward_mean": _mean(judge_rewards),
        "rule_reward_mean": _mean(rule_rewards) if rule_rewards else None,
        "samples": n,
        "valid_samples": len(valid_rewards),
        "judge_failed": scored.failures,
        "judge_failed_total": counters.judge_failed,
        "judge_failure_rate": counters.judge_failure_rate,
        "judge_cache_hits": sum(1 for j in scored.judgements if j.cached),
        "judge_calls": sum(j.calls for j in scored.judgements),
        **judgement_metrics(scored.judgements),  # failures by cause, score-mass distribution
        "degenerate_groups": int(facts.degenerate_groups),
        "response_length_mean": _mean(facts.lengths),
        "response_length_max": max(facts.lengths),
        "eos_fraction": sum(facts.finished) / n,
        "policy_version": facts.policy_version,
        "staleness": facts.staleness,
        "pipeline": facts.schedule,
        "world_size": 1,  # data-parallel ranks gather first and write their number here
        "signals": list(facts.signals),
        # the version the meta-judge installed at this step's boundary (None: the rubric stayed)
        "rubric_evolved": facts.rubric_next if facts.rubric_next != rv.version else None,
        "rubric_version_next": facts.rubric_next,
        **(evolution if evolution is not None else evolution_metrics(None)),
        "generate_s": t.generate_s,
        "judge_s": t.judge_s,
        "update_s": t.update_s,
        "evolve_s": t.evolve_s,
        "step_seconds": t.step_seconds,
        "wall_s": facts.wall_s,
        "samples_per_s": n / max(t.step_seconds, 1e-9),
        "generated_tokens_per_s": sum(facts.lengths) / max(t.generate_s, 1e-9),
        "skipped_nonfinite_total": counters.skipped_nonfinite,
        "peak_rss_mb": round(peak_rss_mb(), 1),  # whole process, since start (VmHWM)
        **item_score_stats(scored.judgements),
        **func_metrics(scored.func_rewards),  # rewards/<func>/mean|std, as TRL logs them (reward_funcs.py)
    }
    if update is not None:
        row.update(loss=update.loss, grad_norm=update.grad_norm, lr=update.lr, **update.metrics)
    else:
        row.update(loss=float("nan"), grad_norm=float("nan"), lr=facts.lr)
    return row


def sample_records(step: int, prompts: Sequence[PromptItem], rollouts: Sequence[Any], scored: ScoredRollouts,
                   advantages: Sequence[float], rubric_version: RubricVersion, *, staleness: Sequence[int] | int,
                   limit: int | None) -> list[dict[str, Any]]:
    """samples.jsonl records of one step, the first `limit` samples (None: all). prompts[i] is sample
    i's prompt (one per sample); staleness per sample or one value for all."""
    n = len(rollouts) if limit is None else min(limit, len(rollouts))
    stale = [staleness] * len(rollouts) if isinstance(staleness, int) else list(staleness)
    rows = []
    for i in range(n):
        r, j, p = rollouts[i], scored.judgements[i], prompts[i]
        rows.append({
            "step": step,
            "prompt_id": p.example.id,
            "prompt": p.text,
            "sample_index": r.sample_index,
            "response": r.text,
            "reward": float(scored.rewards[i]) if bool(scored.valid[i]) else None,
            "judge_reward": scored.judge_rewards[i],
            "rule_reward": scored.rule_rewards[i],
            "valid": bool(scored.valid[i]),
            "advantage": float(advantages[i]),
            "item_scores": list(j.item_scores),
            "item_status": [getattr(s, "name", str(s)) for s in j.item_status],
            "rationale": j.rationale,
            "judge_error": j.error,
            "judge_mode": j.mode,
            "cached": j.cached,
            "rubric_version": rubric_version.version,
            "rubric_hash": rubric_version.hash,
            # the reward functions' values (reward_funcs.py); a run without them has no such field
            **({"func_rewards": {name: v[i] for name, v in scored.func_rewards.items()}} if scored.func_rewards else {}),
            "finished": r.finished,
            "length": len(r.completion_ids),
            "policy_version": r.policy_version,
            "staleness": stale[i],
        })
    return rows


def unanswered_judgement(rubric: Rubric, error: str) -> Judgement:
    """The Judgement of a call the schedule gave up on (a timeout): failed, masked, no scores."""
    k = len(rubric.items)
    return Judgement(item_scores=(None,) * k, item_status=(ScoreStatus.MISSING,) * k, reward=None, ok=False,
                     mode="unanswered", calls=0, latency_s=0.0, error=error, rubric_hash=rubric.content_hash)
