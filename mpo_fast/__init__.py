"""mpo_fast: Meta Policy Optimization for LLMs, with fused kernels and batched judge-score parsing.

Public names are imported lazily (PEP 562): `import mpo_fast.rubrics` or reading a rubric costs no
torch import, and `mpo_fast.group_advantages` loads its op module on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._kernels_path import register_source_kernels as _register_source_kernels

__version__ = "0.1.0"
_register_source_kernels()

# public name -> module that defines it
_EXPORTS = {
    # backends
    "BackendInfo": "mpo_fast._backend",
    "BackendUnavailableError": "mpo_fast._backend",
    "backends": "mpo_fast._backend",
    # ops
    "GroupAdvantages": "mpo_fast.ops.advantages",
    "group_advantages": "mpo_fast.ops.advantages",
    # ops
    "TokenLogProbs": "mpo_fast.ops.selective_log_softmax",
    "selective_log_softmax": "mpo_fast.ops.selective_log_softmax",
    "fused_linear_logprob": "mpo_fast.ops.fused_linear_logprob",
    "fused_linear_policy_loss": "mpo_fast.ops.fused_linear_policy_loss",
    "policy_loss": "mpo_fast.ops.policy_loss",
    "PolicyLossOutput": "mpo_fast.ops.policy_loss",
    "gae": "mpo_fast.ops.gae",
    "GAEOutput": "mpo_fast.ops.gae",
    "expected_score": "mpo_fast.ops.expected_score",
    "ExpectedScores": "mpo_fast.ops.expected_score",
    # parsing
    "ParsedScores": "mpo_fast.parsing",
    "ScoreSpec": "mpo_fast.parsing",
    "ScoreStatus": "mpo_fast.parsing",
    "parse_scores": "mpo_fast.parsing",
    "parse_token_scores": "mpo_fast.parsing",
    "parse_scores_and_advantages": "mpo_fast.parsing",
    "token_byte_table": "mpo_fast.parsing",
    # judges
    "LocalJudge": "mpo_fast.judges",
    "OpenAIJudge": "mpo_fast.judges",
    "MetaJudge": "mpo_fast.judges",
    "JudgeRequest": "mpo_fast.judges",
    "Judgement": "mpo_fast.judges",
    "JudgeCache": "mpo_fast.judges",
    "HackingDetector": "mpo_fast.judges",
    # trainer and rollouts
    "MPOTrainer": "mpo_fast.trainer",
    "MPOConfig": "mpo_fast.trainer",
    "HFRollout": "mpo_fast.rollout",
    "SamplingParams": "mpo_fast.rollout",
    "Rollout": "mpo_fast.rollout",
    "load_embedded": "mpo_fast.models",
    # rubrics
    "Rubric": "mpo_fast.rubrics",
    "RubricItem": "mpo_fast.rubrics",
    "RubricStore": "mpo_fast.rubrics",
    "RubricVersion": "mpo_fast.rubrics",
    "load_rubric": "mpo_fast.rubrics",
    "merge_rubrics": "mpo_fast.rubrics",
    # tasks
    "TASKS": "mpo_fast.tasks",
    "TaskExample": "mpo_fast.tasks",
    "get_task": "mpo_fast.tasks",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mpo_fast' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this hook
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # static analysers see the real names
    from ._backend import BackendInfo, BackendUnavailableError, backends
    from .ops.advantages import GroupAdvantages, group_advantages
    from .rubrics import Rubric, RubricItem, RubricStore, RubricVersion, load_rubric, merge_rubrics
    from .tasks import TASKS, TaskExample, get_task
