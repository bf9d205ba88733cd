"""Judged samples arrive in any order; this puts them back into groups and steps.

Groups are keyed by (step, prompt slot); each remembers the rubric version of its first member and
refuses a member judged under another version (RubricMixError), so advantages, which are
normalised within a group, are always normalised within one rubric version. A step is complete
when all its groups are; its samples are then ordered prompt-major (slot, sample index), exactly
as a serial run would order them, so both modes feed the update identical batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .errors import RubricMixError
from .protocol import ScoredBatch, ScoredSample


@dataclass
class _Group:
    rubric_version: int
    members: dict[int, ScoredSample] = field(default_factory=dict)


@dataclass
class _Step:
    num_prompts: int
    rubric_version: int
    rubric: object
    groups: dict[int, _Group] = field(default_factory=dict)
    complete_groups: int = 0


class BatchAssembler:
    def __init__(self, group_size: int):
        self.group_size = group_size
        self._steps: dict[int, _Step] = {}

    def open_step(self, step: int, num_prompts: int, rubric_version: int, rubric: object) -> None:
        """Called when the producer starts a step: how many groups to expect, and under which rubric."""
        if step in self._steps:
            raise ValueError(f"step {step} opened twice")
        self._steps[step] = _Step(num_prompts, rubric_version, rubric)

    def add(self, sample: ScoredSample) -> ScoredBatch | None:
        """Add one judged sample; returns the step's batch when this sample completes it."""
        st = self._steps.get(sample.step)
        if st is None:
            raise ValueError(f"sample for step {sample.step} arrived before the step was opened")
        if sample.rubric_version != st.rubric_version:
            raise RubricMixError(
                "judge",
                f"step {sample.step} was opened under rubric v{st.rubric_version} but a sample of it was "
                f"judged under v{sample.rubric_version}",
            )
        group = st.groups.setdefault(sample.slot, _Group(sample.rubric_version))
        if sample.rubric_version != group.rubric_version:
            raise RubricMixError(
                "judge",
                f"group (step {sample.step}, prompt {sample.prompt.index}) holds rubric v{group.rubric_version} "
                f"and v{sample.rubric_version}: a group is scored by one rubric version only",
            )
        if sample.sample_index in group.members:
            raise ValueError(f"duplicate sample {sample.sample_index} in group (step {sample.step}, slot {sample.slot})")
        if not 0 <= sample.sample_index < self.group_size:
            raise ValueError(f"sample_index {sample.sample_index} outside 0..{self.group_size - 1}")
        group.members[sample.sample_index] = sample
        if len(group.members) == self.group_size:
            st.complete_groups += 1
        if st.complete_groups < st.num_prompts:
            return None
        del self._steps[sample.step]
        return build_batch(sample.step, self.group_size, st.rubric_version, st.rubric,
                           [st.groups[slot].members[i] for slot in sorted(st.groups) for i in range(self.group_size)])

    @property
    def open_steps(self) -> list[int]:
        return sorted(self._steps)


def build_batch(step: int, group_size: int, rubric_version: int, rubric: object, samples: list[ScoredSample]) -> ScoredBatch:
    """A ScoredBatch from prompt-major samples; failed judgements become NaN rewards with valid=False."""
    rewards = [s.reward for s in samples]
    valid = torch.tensor([r is not None for r in rewards], dtype=torch.bool)
    values = torch.tensor([float("nan") if r is None else r for r in rewards], dtype=torch.float32)
    return ScoredBatch(step, group_size, rubric_version, rubric, samples, values, valid)
