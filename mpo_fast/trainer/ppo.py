"""PPO with a value head: the paper's optimiser (TRL 0.17 PPO in the authors' code), its math.

Per completion token t of sample i (mask m, last valid token T_i):

    r_t = -kl_coef * k1_t + [t == T_i] * score_i        (k1_t = log pi(t) - log pi_ref(t), the
                                                          reference's per-token KL in the reward)
    (A, R) = gae(r, V_old, m; gamma, lam)                (mpo_fast.ops.gae)
    A <- whiten(A) over the batch's valid tokens          (TRL and verl whiten; the mean is removed too)
    value loss = 0.5 * masked mean of max((V - R)^2, (clip(V, V_old - c, V_old + c) - R)^2)

The policy loss is the clipped surrogate of ops.policy_loss with the token advantages A.
The value head reads the policy's last hidden state (LoRA: trained with the adapters; its one
Linear layer is zero-initialised, so V = 0 and A = discounted returns at step 0).

The update stage that uses them is ppo_update.py (train.algorithm: ppo).
"""
from __future__ import annotations

import torch
from torch import nn

from ..ops.gae import gae


class ValueHead(nn.Module):
    """V(s_t) = w . h_t + b from the policy's last hidden state [B, L, H] -> [B, L]."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, k1: torch.Tensor | None = None, kl_coef: float = 0.0) -> torch.Tensor:
    """[B, T] rewards: the score on each row's last valid token, minus kl_coef * k1 on every valid token."""
    if scores.dim() != 1 or mask.dim() != 2 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)} and mask {tuple(mask.shape)}: need scores [B] and mask [B, T]")
    valid = mask.bool()
    if not bool(valid.any(dim=1).all()):
        raise ValueError("a row of mask has no valid token; drop empty completions before PPO")
    steps = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(valid, steps, -1).max(dim=1).values
    rewards = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    if k1 is not None and kl_coef:
        rewards = rewards - kl_coef * torch.where(valid, k1.float(), torch.zeros_like(rewards))
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += scores.float()
    return rewards


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over the valid tokens (population variance), 0 elsewhere."""
    valid = mask.bool()
    x = values[valid]
    mean = x.mean()
    var = ((x - mean) ** 2).mean()
    return torch.where(valid, (values - mean) * torch.rsqrt(var + eps), torch.zeros_like(values))


def ppo_advantages(scores: torch.Tensor, old_values: torch.Tensor, mask: torch.Tensor, *, k1: torch.Tensor | None = None,
                   kl_coef: float = 0.0, gamma: float = 1.0, lam: float = 0.95, whiten_advantages: bool = True,
                   backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [B, T], returns [B, T]) for one batch of completions (see the module doc)."""
    rewards = token_rewards(scores, mask, k1, kl_coef)
    adv, ret = gae(rewards, old_values.float(), mask, gamma=gamma, lam=lam, backend=backend)
    return (whiten(adv, mask) if whiten_advantages else adv), ret


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               *, clip: float = 0.2) -> torch.Tensor:
    """0.5 * masked mean of the larger of the unclipped and clipped squared errors (TRL's vf loss)."""
    valid = mask.bool()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    err = torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * err[valid].mean()
