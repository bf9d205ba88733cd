"""What a rollout backend takes and returns: the contract between the trainer and generation.

The trainer renders prompts with the tokenizer's chat template and hands token ids over; a
backend (in-process HF generate, vLLM, a remote completions server) returns one `Rollout` per
sample, prompt-major: all n samples of prompt 0, then all of prompt 1, ...
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass
class SamplingParams:
    """How to sample. temperature 0 means greedy; top_k 0 and top_p 1.0 mean no truncation.

    seed: when set, the same prompts give the same samples whatever the global RNG state;
    when None, sampling draws from the global torch RNG (which checkpoints save and restore).
    """

    max_new_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens is {self.max_new_tokens!r}; it must be an integer >= 1, e.g. 128")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature is {self.temperature!r}; use 0 for greedy or a value > 0 such as 0.7")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p is {self.top_p!r}; it must be in (0, 1], 1.0 turns it off")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k is {self.top_k!r}; it must be an integer >= 0, 0 turns it off")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Rollout:
    """One sampled completion.

    completion_ids: the generated tokens up to and including the first EOS (padding removed).
    text: the completion decoded without special tokens.
    behaviour_logprobs: log-probs of each completion token under the sampling policy, at the
        sampling temperature and before top-k/top-p truncation (the same quantity the trainer
        computes, so the two can be compared); None when the backend did not record them.
    finished: the completion ended with EOS (False: cut at max_new_tokens).
    policy_version: the weights version that sampled it (off-policy bookkeeping).
    """

    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    behaviour_logprobs: list[float] | None
    finished: bool
    policy_version: int


@runtime_checkable
class RolloutBackend(Protocol):
    def generate(
        self, prompts: list[list[int]], *, n: int, sampling: SamplingParams, policy_version: int
    ) -> list[Rollout]:
        """n samples per prompt, prompt-major."""
        ...

    def sync_weights(self, model, version: int) -> None:
        """Make the backend sample from `model`'s current weights (no-op for in-process HF)."""
        ...

    def close(self) -> None: ...


def check_prompts(prompts: list[list[int]], n: int) -> None:
    """Boundary validation shared by every backend."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n is {n!r}; pass the number of samples per prompt as an integer >= 1")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts is empty; pass a list of token-id lists (one per prompt)")
    for i, p in enumerate(prompts):
        if not isinstance(p, (list, tuple)) or not p:
            raise ValueError(
                f"prompt {i} is {type(p).__name__} of length {len(p) if hasattr(p, '__len__') else '?'}; "
                "each prompt must be a non-empty list of token ids (render it with the chat template first)"
            )
