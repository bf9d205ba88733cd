"""policy_loss: every backend against the reference and the formulas users write, in one run.

Workload: a GRPO/DAPO step with a KL penalty (clip 0.2 / 0.28, k3 with kl_coef 0.04, token_mean),
fp32 log-probs (what the log-prob kernels return), per-sequence advantages, a bool mask with ~25%
right padding. Passes: fwd (a training forward: logp requires grad) and fwd_bwd.

Peers, measured in the same run:
- trl_grpo_loss: TRL GRPOTrainer._compute_loss as TRL writes it, with the metrics it logs (KL mean,
  low / high / region clip ratios) as device tensors: the accelerator gathers and .item() calls TRL
  adds on top are left out, so the peer is not charged for host syncs.
- torch_formula: the loss alone in plain torch (no metrics), the shortest thing a user writes.
Floor: bytes the fused op must move at the copy bandwidth measured in this run (fwd: logp, old_logp,
ref_logp 4 B + mask 1 B read, coef 4 B written = 17 B/token; fwd_bwd adds coef read + grad write = 25).
"""
from __future__ import annotations

from typing import Iterator

import torch

from benchmarks.common import BenchContext, Case, backend_providers, once, run_cases, time_fn
from mpo_fast.ops.policy_loss import policy_loss

CLIP_LOW, CLIP_HIGH, KL_COEF = 0.2, 0.28, 0.04


def _trl_grpo_loss(logp, old, adv, mask, ref_lp):
    coef_1 = torch.exp(logp - old)
    per_token_kl = torch.exp(ref_lp - logp) - (ref_lp - logp) - 1
    coef_2 = torch.clamp(coef_1, 1 - CLIP_LOW, 1 + CLIP_HIGH)
    a = adv.unsqueeze(1)
    per_token_loss = -torch.min(coef_1 * a, coef_2 * a) + KL_COEF * per_token_kl
    loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)

    def global_masked_mean(x):
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    with torch.no_grad():
        is_low = (coef_1 < 1 - CLIP_LOW) & (a < 0)
        is_high = (coef_1 > 1 + CLIP_HIGH) & (a > 0)
        metrics = {
            "kl": global_masked_mean(per_token_kl),
            "clip_ratio/low_mean": global_masked_mean(is_low.float()),
            "clip_ratio/high_mean": global_masked_mean(is_high.float()),
            "clip_ratio/region_mean": global_masked_mean((is_low | is_high).float()),
        }
    return loss, metrics


def _torch_formula(logp, old, adv, mask, ref_lp):
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    pg = -torch.minimum(ratio * a, ratio.clamp(1 - CLIP_LOW, 1 + CLIP_HIGH) * a)
    d = ref_lp - logp
    per_token = pg + KL_COEF * (torch.exp(d) - d - 1)
    return (per_token * mask).sum() / mask.sum()


def copy_bandwidth(device: str, nbytes: int = 64 << 20) -> float:
    """Bytes per second of a device-to-device copy (read + write counted), measured now."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = time_fn(lambda: dst.copy_(src), device=device, repeats=10, warmup=2)
    return 2 * nbytes / (t.median_ms * 1e-3)


def _inputs(batch: int, steps: int, device: str):
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(batch, steps, generator=g) * 4
    old = logp + torch.randn(batch, steps, generator=g) * 0.2
    ref_lp = logp + torch.randn(batch, steps, generator=g) * 0.2
    adv = torch.randn(batch, generator=g)
    lengths = torch.randint(steps // 2, steps + 1, (batch,), generator=g)
    mask = torch.arange(steps)[None, :] < lengths[:, None]
    return [x.to(device) for x in (logp, old, adv, mask, ref_lp)]


def cases(ctx: BenchContext) -> Iterator[Case]:
    device = ctx.device
    shapes = [(64, 1024)] if ctx.quick else [(64, 1024), (512, 4096)]
    fast, unavailable = backend_providers(device, gpu=("triton",))
    bandwidth = once(lambda: copy_bandwidth(device))
    for batch, steps in shapes:
        yield from _cases(batch, steps, device, fast, unavailable, bandwidth)


def _cases(batch: int, steps: int, device: str, fast: list[str], unavailable: dict, bandwidth) -> Iterator[Case]:
    logp, old, adv, mask, ref_lp = _inputs(batch, steps, device)
    maskf = mask.float()
    shape = f"B={batch},T={steps}"

    def ours(backend):
        return lambda x: policy_loss(x, old, adv, mask, ref_logp=ref_lp, clip_low=CLIP_LOW, clip_high=CLIP_HIGH,
                                     kl_coef=KL_COEF, backend=backend).loss

    fns = {"reference": ours("reference")}
    fns.update({b: ours(b) for b in fast})
    fns["trl_grpo_loss"] = lambda x: _trl_grpo_loss(x, old, adv, maskf, ref_lp)[0]
    fns["torch_formula"] = lambda x: _torch_formula(x, old, adv, maskf, ref_lp)
    for pass_, per_token_bytes in (("fwd", 17), ("fwd_bwd", 25)):
        floor_ms = once(lambda per_token_bytes=per_token_bytes: batch * steps * per_token_bytes / bandwidth() * 1e3)
        calls = {}
        for name, fn in fns.items():
            x = logp.clone().requires_grad_()
            if pass_ == "fwd":
                calls[name] = lambda fn=fn, x=x: fn(x)
            else:  # set_to_none, as zero_grad does: no accumulation pass charged to anyone
                calls[name] = lambda fn=fn, x=x: (setattr(x, "grad", None), fn(x).backward())

        def extras(timings, peaks, floor_ms=floor_ms):
            ref_ms = timings["reference"].median_ms
            trl_ms = timings["trl_grpo_loss"].median_ms
            return {
                name: dict(
                    floor_ms=round(floor_ms(), 4),
                    ratio_to_floor=round(t.median_ms / floor_ms(), 2),
                    speedup_vs_reference=round(ref_ms / t.median_ms, 3),
                    speedup_vs_trl=round(trl_ms / t.median_ms, 3),
                    copy_gb_s=round(bandwidth() / 1e9, 2),
                )
                for name, t in timings.items()
            }

        yield Case(shape, pass_, calls, reference="reference", peers=("trl_grpo_loss", "torch_formula"),
                   floor_ms=floor_ms, extras=extras, unavailable=unavailable)


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "policy_loss")
