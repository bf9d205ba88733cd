"""Rollout backends: sample completions for the trainer (in-process HF generate here)."""
from .base import Rollout, RolloutBackend, SamplingParams
from .hf import HFRollout

__all__ = ["HFRollout", "Rollout", "RolloutBackend", "SamplingParams"]
