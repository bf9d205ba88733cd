"""Evaluation during training: every `train.eval_steps` steps the policy answers the eval prompts and
the same judge (with the rubric of the moment, and the reward functions) scores them. Nothing is
trained on them, nothing is counted toward judge.max_failure_rate, and the meta-judge never sees them.

    MPOTrainer(..., eval_dataset=rows, args=MPOConfig(train=TrainSettings(eval_steps=10)))

The step's metrics row gains `eval/reward_mean`, `eval/reward_std`, `eval/judge_reward_mean`,
`eval/valid_samples`, `eval/judge_failed`, `eval/response_length_mean`, `eval/eos_fraction`,
`eval/seconds`, `eval/rubric_version` and `eval/rewards/<func>/mean|std` (TRL's names with its `eval_` prefix as a folder).

Sampling is seeded per (run seed, step, chunk) inside a forked RNG, so an evaluation changes
neither the training samples that follow nor a resumed run.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time
from typing import Any, Sequence

from . import reward_funcs as rf
from . import stages
from .data import as_examples
from .prompt_stream import is_stream


def eval_prompts(eval_dataset, task, tokenizer, *, max_prompt_tokens: int) -> list[stages.PromptItem]:
    """Render the eval set once, up front (an iterable eval set is read to its end: it must be finite)."""
    rows = list(eval_dataset) if is_stream(eval_dataset) else eval_dataset
    if len(rows) == 0:
        raise ValueError("eval_dataset is empty; pass at least one example, or leave it None (no evaluation)")
    return stages.render_prompts(as_examples(rows), task, tokenizer, max_prompt_tokens=max_prompt_tokens)


class Evaluator:
    """Runs the evaluation for a trainer when a step is due (see the module docstring)."""

    def __init__(self, trainer, prompts: Sequence[stages.PromptItem], every: int) -> None:
        self.trainer = trainer
        self.prompts = list(prompts)
        self.every = every

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def maybe_run(self, step: int) -> dict[str, Any]:
        return self.run(step) if self.due(step) else {}

    def run(self, step: int, *, rollout=None, run_async=None, generate_lock=None) -> dict[str, Any]:
        """rollout / run_async / generate_lock: the overlapped schedule's (see pipeline_eval); by
        default the trainer's own rollout backend and event loop."""
        t, a = self.trainer, self.trainer.args
        rollout = rollout if rollout is not None else t.rollout
        run_async = run_async if run_async is not None else t._run_async
        start = time.perf_counter()
        group, chunk = a.rollout.num_generations, a.rollout.prompts_per_step
        rollouts, scored_parts = [], []
        rubric = t.rubric_version.rubric if t.rubric_version is not None else t.initial_rubric  # before train()
        for lo in range(0, len(self.prompts), chunk):
            prompts = self.prompts[lo:lo + chunk]
            sampling = dataclasses.replace(t.sampling, seed=(a.seed * 1_000_003 + step * 7919 + lo + 104_729) % 2**31)
            with generate_lock if generate_lock is not None else contextlib.nullcontext():
                part = stages.generate(rollout, prompts, n=group, sampling=sampling, policy_version=t.policy_version)
            with t._judging():
                scored = stages.judge(t.judge, run_async, part, prompts, rubric, t.task,
                                      rule_weight=a.task.rule_weight, missing_eos_penalty=a.rollout.missing_eos_penalty,
                                      reward_funcs=t.reward_funcs)
            rollouts += part
            scored_parts.append(scored)
        out = eval_metrics(rollouts, scored_parts, time.perf_counter() - start)
        # Rewards of two rubric versions are on different scales: say which one judged.
        out["eval/rubric_version"] = getattr(t.rubric_version, "version", 0)
        return out


def eval_metrics(rollouts, scored_parts: Sequence[stages.ScoredRollouts], seconds: float) -> dict[str, Any]:
    rewards = [float(r) for s in scored_parts for r, v in zip(s.rewards.tolist(), s.valid.tolist()) if v]
    judged = [r for s in scored_parts for r in s.judge_rewards if r is not None]
    per_func: dict[str, list] = {}
    for s in scored_parts:
        for name, values in s.func_rewards.items():
            per_func.setdefault(name, []).extend(values)
    lengths = [len(r.completion_ids) for r in rollouts]
    nan = float("nan")
    return {
        "eval/reward_mean": statistics.fmean(rewards) if rewards else nan,
        "eval/reward_std": statistics.pstdev(rewards) if len(rewards) > 1 else 0.0,
        "eval/judge_reward_mean": statistics.fmean(judged) if judged else nan,
        "eval/samples": len(rollouts),
        "eval/valid_samples": len(rewards),
        "eval/judge_failed": sum(s.failures for s in scored_parts),
        "eval/response_length_mean": statistics.fmean(lengths) if lengths else nan,
        "eval/eos_fraction": sum(r.finished for r in rollouts) / max(len(rollouts), 1),
        "eval/seconds": seconds,
        **rf.func_metrics(per_func, prefix="eval/"),
    }


def make_evaluator(trainer, eval_dataset) -> Evaluator | None:
    """The trainer's Evaluator: over eval_dataset, else task.eval_split of the task's data; None
    when train.eval_steps is 0 (an eval set without eval_steps is kept for `trainer.evaluate()`)."""
    a = trainer.args
    if eval_dataset is None and a.task.eval_split is not None:
        eval_dataset = trainer.task.load(a.task.data, a.task.eval_split, limit=a.task.eval_limit)
    if eval_dataset is None:
        if a.train.eval_steps > 0:
            raise ValueError(
                f"train.eval_steps is {a.train.eval_steps} but there is no eval set; pass eval_dataset=..., or set "
                "task.eval_split (e.g. test), or train.eval_steps: 0"
            )
        return None
    prompts = eval_prompts(eval_dataset, trainer.task, trainer.tokenizer, max_prompt_tokens=a.task.max_prompt_tokens)
    return Evaluator(trainer, prompts, a.train.eval_steps)


def pipeline_eval(stages_, step: int) -> dict[str, Any]:
    """The evaluation due after `step` on a pipelined schedule, from the trainer thread between updates.

    Generation takes the stages' generate_lock, so it never runs beside the producer's (the two
    would share a module, an engine, or the global RNG that seeded sampling forks); with a rollout
    copy (max_staleness > 0) it uses the trainer's own, current module. Judging runs on the loop
    the pipeline judges on (the judge's HTTP clients belong to it)."""
    t = stages_.trainer
    ev = getattr(t, "evaluator", None)
    if ev is None or not ev.due(step):
        return {}
    rollout = t.rollout if getattr(stages_, "copy", None) is not None else stages_.rollout

    def on_judge_loop(awaitable):
        loop = stages_.judge_loop
        if loop is None:
            return t._run_async(awaitable)

        async def wait():
            return await awaitable

        if loop.is_running():  # the overlapped schedule: the judge loop's own thread runs it
            return asyncio.run_coroutine_threadsafe(wait(), loop).result(timeout=stages_.settings.stall_timeout_s)
        return loop.run_until_complete(wait())  # the serial pipeline: its loop, idle between steps

    return ev.run(step, rollout=rollout, run_async=on_judge_loop, generate_lock=stages_.generate_lock)
