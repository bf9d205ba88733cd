"""Clipped policy-gradient loss with a KL penalty, the readable way (the oracle for every backend).

Per valid token (mask != 0), with r = exp(logp - old_logp) and A the advantage:
    pg  = -min(r * A, clip(r, 1 - clip_low, 1 + clip_high) * A)        (PPO / GRPO; DAPO clip-higher)
    kl  = k1: d,  k2: d^2 / 2,  k3: exp(-d) + d - 1,   d = logp - ref_logp   (Schulman's estimators)
    l   = pg + kl_coef * kl
Aggregations (w = mask as weights, n_b = sum_t w[b, t]):
    token_mean           sum_{b,t} w l / max(sum_b n_b, 1)                  (DAPO; TRL "bnpo"/"dapo")
    seq_mean_token_mean  mean over rows with n_b > 0 of sum_t w l / n_b      (GRPO; TRL "grpo")
    seq_mean_token_sum   sum_{b,t} w l / (B * max_tokens), max_tokens = T    (Dr. GRPO; TRL "dr_grpo")
Metrics (no gradient), means over valid tokens weighted by w (0 when there is none):
    clip_fraction  tokens where the clipped branch is active (r < 1 - clip_low and A < 0, or
                   r > 1 + clip_high and A > 0): exactly the tokens whose gradient the clip zeroes
    approx_kl      k3 between old and new policy: exp(old - logp) - (old - logp) - 1
    kl             the kl_estimator to ref_logp (0 without ref_logp)
    ratio_mean, ratio_min, ratio_max (min/max NaN when no token is valid), tokens (sum of w)

Padding positions may hold anything (NaN, inf): every input is replaced by 0 there before any math,
so neither the loss nor the gradient can see it. Math in float32 (float64 for float64 logp).
"""
from __future__ import annotations

import torch

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
METRICS = ("clip_fraction", "approx_kl", "kl", "ratio_mean", "ratio_min", "ratio_max", "tokens")


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (Schulman, "Approximating KL")."""
    d = logp - ref_logp
    if estimator == "k1":
        return d
    if estimator == "k2":
        return 0.5 * d * d
    if estimator == "k3":
        return torch.exp(-d) + d - 1
    raise ValueError(f"kl_estimator {estimator!r} unknown; expected one of {KL_ESTIMATORS}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss 0-dim, differentiable w.r.t. logp; metrics dict of 0-dim tensors), see the module doc."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation {aggregation!r} unknown; expected one of {AGGREGATIONS}")
    acc = torch.float64 if logp.dtype == torch.float64 else torch.float32
    batch, tokens_per_row = logp.shape
    valid = mask != 0
    zero = torch.zeros((), dtype=acc, device=logp.device)
    w = torch.where(valid, mask.to(acc), zero)

    def clean(x: torch.Tensor) -> torch.Tensor:  # padding -> 0 before any math (and any gradient)
        return torch.where(valid, x.to(acc), zero)

    lp = clean(logp)
    old = clean(old_logp.detach())
    adv = advantages.detach()
    adv = clean(adv[:, None].expand(batch, tokens_per_row) if adv.dim() == 1 else adv)

    log_ratio = lp - old
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    kl = None
    if ref_logp is not None:
        kl = kl_estimate(lp, clean(ref_logp.detach()), kl_estimator)
        per_token = per_token + kl_coef * kl

    row_sum = (per_token * w).sum(dim=1)
    row_n = w.sum(dim=1)
    if aggregation == "token_mean":
        loss = row_sum.sum() / row_n.sum().clamp(min=1)
    elif aggregation == "seq_mean_token_mean":
        nonempty = row_n > 0
        per_row = torch.where(nonempty, row_sum / row_n.clamp(min=1), zero)
        loss = per_row.sum() / nonempty.sum().clamp(min=1).to(acc)
    else:
        loss = row_sum.sum() / (batch * (tokens_per_row if max_tokens is None else max_tokens))

    with torch.no_grad():
        tokens = w.sum()
        denom = tokens.clamp(min=1)
        is_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        approx_kl = torch.exp(-log_ratio) + log_ratio - 1
        inf = torch.tensor(float("inf"), dtype=acc, device=logp.device)
        nan = torch.tensor(float("nan"), dtype=acc, device=logp.device)
        metrics = {
            "clip_fraction": (is_clipped.to(acc) * w).sum() / denom,
            "approx_kl": (approx_kl * w).sum() / denom,
            "kl": (kl * w).sum() / denom if kl is not None else zero.clone(),
            "ratio_mean": (ratio * w).sum() / denom,
            "ratio_min": torch.where(tokens > 0, torch.where(valid, ratio, inf).amin(), nan),
            "ratio_max": torch.where(tokens > 0, torch.where(valid, ratio, -inf).amax(), nan),
            "tokens": tokens,
        }
    return loss, metrics
