"""Group-relative advantages, the readable way (the oracle for every backend)."""
from __future__ import annotations

import torch

MODES = ("grpo", "dr_grpo", "rloo")


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    mode: str = "grpo",
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages [num_prompts * group_size] and each group's count of valid members [num_prompts].

    grpo:    (r - mean) / (std + eps), std unbiased over the valid members (as TRL's GRPO)
    dr_grpo: r - mean
    rloo:    r - mean of the *other* valid members = (r - mean) * n / (n - 1)
    Invalid members (failed judgements) are left out of the statistics and get 0; a group with
    fewer than two valid members gets 0 everywhere (no baseline to compare against).
    Math in float32, or float64 for float64 rewards; the result has that dtype.
    """
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} unknown; expected one of {MODES}")
    acc = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    r = rewards.to(acc).reshape(-1, group_size)
    v = torch.ones_like(r, dtype=torch.bool) if valid is None else valid.reshape(-1, group_size).to(torch.bool)
    n = v.sum(dim=1)
    zero = torch.zeros((), dtype=acc, device=r.device)
    mean = torch.where(v, r, zero).sum(dim=1) / n.clamp(min=1).to(acc)
    dev = torch.where(v, r - mean[:, None], zero)
    if mode == "grpo":
        var = (dev * dev).sum(dim=1) / (n - 1).clamp(min=1).to(acc)
        adv = dev / (var.sqrt() + eps)[:, None]
    elif mode == "rloo":
        adv = dev * (n.to(acc) / (n - 1).clamp(min=1).to(acc))[:, None]
    else:
        adv = dev
    adv = torch.where(v & (n >= 2)[:, None], adv, zero)
    return adv.reshape(-1), n.to(torch.int32)
