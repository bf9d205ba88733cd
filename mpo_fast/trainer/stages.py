"""The named stages of one MPO step, each a small function testable alone:

    render_prompts -> generate -> judge -> advantages -> update (trainer/update.py) -> evolve_rubric

A step's samples are all judged by one rubric version (the rubric only changes between steps),
so a group's advantages never mix two rubrics' scales.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import torch

from ..judges.meta import MetaSample
from ..judges.types import Judgement, JudgeRequest
from ..ops.advantages import GroupAdvantages, group_advantages
from ..rollout import Rollout, RolloutBackend, SamplingParams
from ..rubrics import Rubric
from ..tasks import Task, TaskExample
from . import reward_funcs as rf
from .data import prompt_messages, prompt_text

RunAsync = Callable[[Awaitable[Any]], Any]


# -- prompts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptItem:
    example: TaskExample
    text: str  # the task prompt as the policy's user turn shows it (what the judge sees as the prompt)
    ids: list[int]  # the full chat-templated prompt, ending with the assistant turn's opening


def render_prompts(examples: Sequence[TaskExample], task: Task, tokenizer, *, max_prompt_tokens: int) -> list[PromptItem]:
    """Chat-template each example with the task's messages. Too-long prompts are an error, not
    silently truncated: a cut essay prompt or bill is a different task."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat_template; use an instruct model's tokenizer or set "
            "tokenizer.chat_template to a Jinja template"
        )
    items = []
    for example in examples:
        messages = prompt_messages(example, task)  # a conversational row's own messages, else the task's
        # Text first, then ids: the return type of apply_chat_template(tokenize=True) differs
        # between transformers 4.x (list) and 5.x (BatchEncoding). A conversation ending with an
        # assistant turn is continued (a prefill), as TRL does.
        prefill = messages[-1]["role"] == "assistant"
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                                 **({"continue_final_message": True} if prefill else {}))
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if len(ids) > max_prompt_tokens:
            raise ValueError(
                f"example {example.id!r} renders to {len(ids)} prompt tokens, over task.max_prompt_tokens="
                f"{max_prompt_tokens}; raise task.max_prompt_tokens or drop long examples"
            )
        items.append(PromptItem(example=example, text=prompt_text(example, messages), ids=list(ids)))
    return items


# -- generate ---------------------------------------------------------------------------------


def generate(
    backend: RolloutBackend, prompts: Sequence[PromptItem], *, n: int, sampling: SamplingParams, policy_version: int
) -> list[Rollout]:
    rollouts = backend.generate([p.ids for p in prompts], n=n, sampling=sampling, policy_version=policy_version)
    if len(rollouts) != n * len(prompts):
        raise RuntimeError(
            f"rollout backend {type(backend).__name__} returned {len(rollouts)} samples for {len(prompts)} prompts x "
            f"n={n}; it must return exactly n per prompt, prompt-major"
        )
    for i, r in enumerate(rollouts):
        if (r.prompt_index, r.sample_index) != (i // n, i % n):
            raise RuntimeError(
                f"rollout {i} is (prompt {r.prompt_index}, sample {r.sample_index}), expected ({i // n}, {i % n}); "
                "backends must return samples prompt-major"
            )
    return rollouts


# -- judge ------------------------------------------------------------------------------------


@dataclass
class ScoredRollouts:
    """Rewards of one step. rewards[i] is meaningful only where valid[i]; an invalid sample (its
    judgement failed) is excluded from the group statistics and the loss, never scored 0."""

    rewards: torch.Tensor  # [B] float32
    valid: torch.Tensor  # [B] bool
    judgements: list[Judgement]
    judge_rewards: list[float | None]
    rule_rewards: list[float | None]
    seconds: float = 0.0
    func_rewards: dict[str, list[float | None]] = field(default_factory=dict)  # reward_funcs' values (reward_funcs.py)

    @property
    def failures(self) -> int:
        return int((~self.valid).sum())


def combine_reward(
    judge_reward: float | None,
    rule_reward: float | None,
    *,
    rule_weight: float,
    finished: bool,
    missing_eos_penalty: float,
) -> float | None:
    """The sample's reward, or None (masked).

    Without a rule reward the judge's reward is used. With one, (1 - w) * judge + w * rule; a
    failed judgement masks the sample unless w == 1 (the judge is then not used at all).
    """
    if rule_reward is not None and not math.isfinite(rule_reward):
        raise ValueError(f"the task's rule_reward returned {rule_reward!r}; it must be finite or None")
    if judge_reward is not None and not math.isfinite(judge_reward):
        judge_reward = None  # a judge returning NaN/inf has failed, whatever it claims
    if rule_reward is None:
        reward = judge_reward
    elif rule_weight >= 1.0:
        reward = rule_reward
    elif judge_reward is None:
        reward = None
    else:
        reward = (1.0 - rule_weight) * judge_reward + rule_weight * rule_reward
    if reward is not None and not finished:
        reward -= missing_eos_penalty
    return reward


def judge(
    judge_model,
    run_async: RunAsync,
    rollouts: Sequence[Rollout],
    prompts: Sequence[PromptItem],
    rubric: Rubric,
    task: Task,
    *,
    rule_weight: float,
    missing_eos_penalty: float,
    reward_funcs=None,
) -> ScoredRollouts:
    """Judge the rollouts; each reward is the judge's (rule reward mixed in) combined with the
    reward functions' by reward_funcs.combine (None: the judge's alone)."""
    requests = [
        JudgeRequest(prompt=prompts[r.prompt_index].text, response=r.text, rubric=rubric,
                     reference=prompts[r.prompt_index].example.reference)
        for r in rollouts
    ]
    start = time.perf_counter()
    judgements = list(run_async(judge_model.judge(requests)))
    seconds = time.perf_counter() - start
    if len(judgements) != len(requests):
        raise RuntimeError(
            f"judge {type(judge_model).__name__} returned {len(judgements)} judgements for {len(requests)} requests; "
            "it must return one per request, in order"
        )
    judge_rewards: list[float | None] = []
    rule_rewards: list[float | None] = []
    components: list[float | None] = []
    for r, j in zip(rollouts, judgements):
        judged = j.reward if j.ok else None
        rule = task.rule_reward(prompts[r.prompt_index].example, r.text) if rule_weight > 0 else None
        components.append(combine_reward(judged, rule, rule_weight=rule_weight, finished=True, missing_eos_penalty=0.0))
        judge_rewards.append(judged)
        rule_rewards.append(rule)
    examples = [prompts[r.prompt_index].example for r in rollouts]
    per_func = rf.call_funcs(reward_funcs, rf.func_kwargs(examples, [r.text for r in rollouts],
                                                          [r.completion_ids for r in rollouts]), len(rollouts), run_async) \
        if reward_funcs is not None else {}
    combined = rf.combine(reward_funcs, components, per_func, finished=[r.finished for r in rollouts],
                          missing_eos_penalty=missing_eos_penalty)
    rewards = [0.0 if x is None else x for x in combined]
    valid = [x is not None for x in combined]
    return ScoredRollouts(
        rewards=torch.tensor(rewards, dtype=torch.float32),
        valid=torch.tensor(valid, dtype=torch.bool),
        judgements=judgements,
        judge_rewards=judge_rewards,
        rule_rewards=rule_rewards,
        seconds=seconds,
        func_rewards=per_func,
    )


# -- advantages -------------------------------------------------------------------------------


def advantages(scored: ScoredRollouts, *, group_size: int, mode: str, eps: float) -> GroupAdvantages:
    """Group-relative advantages with failed judgements masked (they get 0 and no say in the
    group's mean and std)."""
    return group_advantages(scored.rewards, group_size, mode=mode, eps=eps, valid=scored.valid)


# -- evolve -----------------------------------------------------------------------------------


def meta_sample_to_dict(sample: MetaSample) -> dict[str, Any]:
    return {**dataclasses.asdict(sample), "item_scores": list(sample.item_scores)}


def meta_sample_from_dict(data: dict[str, Any]) -> MetaSample:
    return MetaSample(**{**data, "item_scores": tuple(data["item_scores"])})


@dataclass
class MetaSampleBuffer:
    """Judged samples since the last MPO step, newest kept when over `capacity`, handed to the
    meta-judge (which picks the informative ones itself). Failed judgements are kept: a judge
    that cannot score some answers is evidence about the rubric too. Saved in checkpoints so a
    resumed run hands the meta-judge the same samples."""

    capacity: int
    samples: list[MetaSample] = field(default_factory=list)

    def add(self, items: Sequence[MetaSample]) -> None:
        self.samples.extend(items)
        del self.samples[: max(0, len(self.samples) - self.capacity)]

    def clear(self) -> None:
        self.samples.clear()

    def state(self) -> list[dict[str, Any]]:
        return [meta_sample_to_dict(s) for s in self.samples]

    def load_state(self, rows: list[dict[str, Any]]) -> None:
        self.samples = [meta_sample_from_dict(r) for r in rows]


def item_score_stats(judgements: Sequence[Judgement]) -> dict[str, list[float | None]]:
    """Per rubric item, the mean and population std of its scores over the step's successful
    judgements (the items of the rubric that scored them, in order), so a run shows which
    criteria move. Empty lists when nothing was scored."""
    ok = [j.item_scores for j in judgements if j.ok]
    k = len(ok[0]) if ok else 0
    columns = [[float(s[i]) for s in ok if len(s) == k and s[i] is not None] for i in range(k)]
    return {
        "item_score_mean": [statistics.fmean(c) if c else None for c in columns],
        "item_score_std": [statistics.pstdev(c) if c else None for c in columns],
    }


def _reference_of(example) -> str | None:
    """What the MRM is shown as the correct answer: the reference (math, summaries), else the label
    (ethics verdicts)."""
    if example.reference is not None:
        return example.reference
    return None if example.label is None else str(example.label)


def call_evolve(meta_judge, rubric, samples, step: int, initial):
    """meta_judge.evolve(rubric, samples, step), passing the task's initial rubric as `initial=` where
    that evolve takes it (MetaJudge's conservation gate needs it; a user's meta-judge may not)."""
    evolve = meta_judge.evolve
    try:
        params = inspect.signature(evolve).parameters.values()
    except (TypeError, ValueError):
        params = ()
    if any(p.name == "initial" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return evolve(rubric, samples, step, initial=initial)
    return evolve(rubric, samples, step)


def meta_samples(step: int, prompts: Sequence[PromptItem], rollouts: Sequence[Rollout], scored: ScoredRollouts,
                 rubric_hash: str) -> list[MetaSample]:
    out = []
    for i, r in enumerate(rollouts):
        j = scored.judgements[i]
        out.append(
            MetaSample(
                prompt=prompts[r.prompt_index].text, response=r.text, item_scores=tuple(j.item_scores),
                reward=float(scored.rewards[i]) if bool(scored.valid[i]) else None,
                rationale=j.rationale, rubric_hash=rubric_hash, step=step,
                reference=_reference_of(prompts[r.prompt_index].example),
            )
        )
    return out


# -- reward-hacking signals ---------------------------------------------------------------------


@dataclass
class SignalMonitor:
    """Feeds each step to a reward-hacking detector (judges.HackingDetector) and remembers the
    per-step means it was fed since its last rebaseline, so a resumed run can replay them into a
    fresh detector and reach the same state (the detector's public API is all this relies on)."""

    detector: Any
    observed: list[tuple[int, float, float | None, float | None]] = field(default_factory=list)

    def observe(self, step: int, rollouts: Sequence[Rollout], scored: ScoredRollouts) -> list[str]:
        lengths = [float(len(r.completion_ids)) for r in rollouts]
        rewards = [float(r) if v else None for r, v in zip(scored.rewards.tolist(), scored.valid.tolist())]
        rationales = [float(len(j.rationale)) for j in scored.judgements if j.ok]
        valid = [r for r in rewards if r is not None]
        self.observed.append((
            step, statistics.fmean(lengths), statistics.fmean(valid) if valid else None,
            statistics.fmean(rationales) if rationales else None,
        ))
        found = self.detector.observe(step, lengths, rewards, rationales)
        return [f"{s.name}: {s.detail}" for s in found]

    def rebaseline(self) -> None:
        self.detector.rebaseline()
        self.observed.clear()

    def state(self) -> list[list[Any]]:
        return [list(o) for o in self.observed]

    def load_state(self, rows: list[list[Any]]) -> None:
        self.rebaseline()
        for step, length, reward, rationale in rows:
            # One-element batches have the same means, so the detector ends in the same state.
            self.detector.observe(step, [length], [reward], [rationale] if rationale is not None else [])
            self.observed.append((step, length, reward, rationale))
