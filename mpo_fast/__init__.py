"""mpo_fast: Meta Policy Optimization for LLMs, with fused kernels and batched judge-score parsing."""
from __future__ import annotations

__version__ = "0.1.0"

from ._backend import BackendInfo, BackendUnavailableError, backends
from .ops.advantages import GroupAdvantages, group_advantages

__all__ = [
    "__version__",
    "BackendInfo",
    "BackendUnavailableError",
    "backends",
    "GroupAdvantages",
    "group_advantages",
]
