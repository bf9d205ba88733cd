"""Generalised advantage estimation (Schulman et al. 2016), the plain reverse loop (the oracle).

    delta_t = r_t + gamma * V_next - V_t,    A_t = delta_t + gamma * lam * A_next,    R_t = A_t + V_t

where V_next and A_next belong to the next *valid* position after t (mask != 0): padding positions are
skipped by the scan, so the state crosses them unchanged (as verl's compute_gae_advantage_return does
for observation tokens in multi-turn rollouts). After the last valid token V_next = A_next = 0, which
for right padding is exactly TRL's PPO loop with values zeroed past the response.
Padding positions get advantage 0 and return 0 (verl leaves the carried value there) and may hold
anything, NaN included: they never enter the arithmetic. No whitening: TRL and verl whiten the
advantages afterwards over the mask; that is a separate, batch-wide step.
Math in float32 (float64 for float64 rewards); outputs have that dtype.
"""
from __future__ import annotations

import torch


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B, T], returns [B, T]) for right-aligned or holed masks; see the module doc."""
    acc = torch.float64 if rewards.dtype == torch.float64 else torch.float32
    batch, steps = rewards.shape
    valid = mask != 0
    zero = torch.zeros((), dtype=acc, device=rewards.device)
    next_value = torch.zeros(batch, dtype=acc, device=rewards.device)
    next_adv = torch.zeros(batch, dtype=acc, device=rewards.device)
    advantages = torch.zeros(batch, steps, dtype=acc, device=rewards.device)
    returns = torch.zeros(batch, steps, dtype=acc, device=rewards.device)
    for t in reversed(range(steps)):
        ok = valid[:, t]
        r = torch.where(ok, rewards[:, t].to(acc), zero)
        v = torch.where(ok, values[:, t].to(acc), zero)
        delta = r + gamma * next_value - v
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(ok, adv, zero)
        returns[:, t] = torch.where(ok, adv + v, zero)
        next_value = torch.where(ok, v, next_value)
        next_adv = torch.where(ok, adv, next_adv)
    return advantages, returns
