"""What the pipeline schedules: the stage protocol and the records that flow between stages.

The serial and the overlapped runner call the same `PipelineStages` methods, so the update code is
one and the same in both modes; only the schedule differs. Which thread calls what:

    producer thread : step_prompts, sync_rollout_weights, generate
    judge loop      : judge_request, judge (async), advantages
    trainer thread  : update, publish_weights, checkpoint
    meta-judge      : evolve (async: on the judge loop; sync: its own thread)

Optional: `preflight()` (called once before anything starts: check endpoints, raise on bad
configuration), `async aclose_judge()` (called on the judge loop as it shuts down),
`meta_launched(step)` (a refinement was launched at boundary `step`) and `resume_meta_step()`
(a boundary whose refinement a resumed run must launch again before its first step, or None).

`publish_weights(v)` runs on the trainer thread right after update v-1 -> v; with max_staleness > 0
the producer may be generating at that moment, so it must copy what the rollout side needs (a
snapshot) rather than hand out the live parameters; `sync_rollout_weights(v)` later runs on the
producer thread, before the first generation with version v.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Mapping, Protocol, Sequence, runtime_checkable

import torch

if TYPE_CHECKING:  # the judges and rollout packages only provide the record types
    from ...rubrics import Rubric


@dataclass(frozen=True)
class PromptItem:
    """One prompt of a step: token ids for the policy, text (and reference) for the judge.

    index: a stable id (dataset position) used for keying groups and seeding generation.
    """

    index: int
    prompt_ids: list[int]
    prompt_text: str
    reference: str | None = None
    example: Any = None


@dataclass
class ScoredSample:
    """A rollout on its way through the pipeline; `judgement` is None until the judge answered.

    rubric_version is fixed when the producer starts the sample's step, so every member of a group
    is scored against the same rubric.
    """

    step: int
    slot: int  # position of the prompt within its step (0 .. prompts_per_step - 1)
    prompt: PromptItem
    rollout: Any  # mpo_fast.rollout.Rollout
    rubric_version: int
    rubric: "Rubric"
    judgement: Any = None  # mpo_fast.judges.Judgement
    judge_error: str | None = None  # set when the pipeline itself gave up on the call (timeout)

    @property
    def policy_version(self) -> int:
        return int(self.rollout.policy_version)

    @property
    def sample_index(self) -> int:
        return int(self.rollout.sample_index)

    @property
    def reward(self) -> float | None:
        """The judge's reward, or None when the judgement failed (masked, never 0)."""
        j = self.judgement
        if j is None or not getattr(j, "ok", False) or j.reward is None:
            return None
        r = float(j.reward)
        return r if math.isfinite(r) else None

    @property
    def judge_calls(self) -> int:
        return int(getattr(self.judgement, "calls", 0) or 0)


@dataclass
class ScoredBatch:
    """Every sample of one step, prompt-major (slot, then sample index), all scored.

    rewards: float32 [P * G], NaN where the judgement failed; valid: bool [P * G].
    advantages: set by the judge loop from `PipelineStages.advantages`; on CUDA it is computed on
    a side stream and `ready` is the event the trainer's stream waits on before reading it.
    """

    step: int
    group_size: int
    rubric_version: int
    rubric: "Rubric"
    samples: list[ScoredSample]
    rewards: torch.Tensor
    valid: torch.Tensor
    advantages: torch.Tensor | None = None
    ready: Any = None  # torch.cuda.Event or None
    extras: dict = field(default_factory=dict)

    @property
    def policy_versions(self) -> list[int]:
        return [s.policy_version for s in self.samples]

    @property
    def behaviour_version(self) -> int:
        """The oldest policy version that generated any sample of the batch (staleness is measured from it)."""
        return min(self.policy_versions)

    @property
    def num_failed(self) -> int:
        return int((~self.valid).sum())

    @property
    def judge_calls(self) -> int:
        return sum(s.judge_calls for s in self.samples)


@runtime_checkable
class PipelineStages(Protocol):
    """The five MPO stages (generate -> judge -> advantages -> update -> evolve) plus weight plumbing."""

    group_size: int

    def step_prompts(self, step: int) -> Sequence[PromptItem]: ...

    def generate(self, prompts: Sequence[PromptItem], *, step: int, policy_version: int) -> list[Any]:
        """Rollouts for `prompts`, prompt-major, `group_size` per prompt; rollout.prompt_index indexes `prompts`."""

    def sync_rollout_weights(self, version: int) -> int | None:
        """Load published weights >= version on the rollout side; may return the version actually loaded."""

    def publish_weights(self, version: int) -> None: ...

    def judge_request(self, sample: ScoredSample) -> Any:
        """The JudgeRequest for one sample (prompt, response, sample.rubric, reference)."""

    def judge(self, requests: list[Any]) -> Awaitable[list[Any]]: ...

    def advantages(self, batch: ScoredBatch) -> torch.Tensor: ...

    def update(self, batch: ScoredBatch) -> Mapping[str, float]: ...

    def evolve(self, rubric: "Rubric", samples: list[ScoredSample], step: int) -> "Rubric | None | Awaitable[Rubric | None]": ...

    def checkpoint(self, step: int, rubric_version: int, rubric: "Rubric") -> None: ...

    # Optional: `evolve_requested(step) -> bool`, asked after update `step` (1-based), brings the
    # meta-judge forward (e.g. on a reward-hacking signal). See common.evolve_due.
