"""mpo_fast: Meta Policy Optimization for LLMs, with fused kernels and batched judge-score parsing.

Public names are imported lazily (PEP 562): `import mpo_fast.rubrics` or reading a rubric costs no
torch import, and `mpo_fast.group_advantages` loads its op module on first use.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # backends
    "BackendInfo": "mpo_fast._backend",
    "BackendUnavailableError": "mpo_fast._backend",
    "backends": "mpo_fast._backend",
    # ops
    "GroupAdvantages": "mpo_fast.ops.advantages",
    "group_advantages": "mpo_fast.ops.advantages",
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
