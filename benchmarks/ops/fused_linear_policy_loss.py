"""fused_linear_policy_loss: the training loss from hidden states, fwd+bwd time and peak memory.

Providers (each where available, one run):
- torch_materialised: logits = h @ W.T, fp32 log_softmax, gather, the policy loss in torch.
- mpo_logprob_then_loss: fused_linear_logprob + policy_loss (no [N, V] logits, 4 GEMMs: the
  backward recomputes the logits).
- liger_grpo (GPU): Liger-Kernel's LigerFusedLinearGRPOLoss, loss_type "bnpo" (= token_mean),
  beta 0.04 with ref log-probs given (no reference model forward).
- mpo_<backend>: fused_linear_policy_loss (3 GEMMs, gradients formed in the forward).
Pass: fwd_bwd (grads to hidden and weight), what a training step runs. Floor: 3 GEMMs of
[N, H] x [H, V], one of them timed in the same run. Goals (issue 18): <= torch_materialised's time
and <= Liger's, peak memory <= 1/10 of the materialised path's.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from benchmarks.common import BenchContext, Case, backend_providers, capped_timer, once, run_cases
from mpo_fast.ops.fused_linear_logprob import fused_linear_logprob
from mpo_fast.ops.fused_linear_policy_loss import fused_linear_policy_loss
from mpo_fast.ops.policy_loss import policy_loss


def _torch_materialised(h, w, ids, old, adv, mask, ref_lp):
    logp = (h @ w.t()).float().log_softmax(-1).gather(-1, ids.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logp - old)
    a = adv[:, None]
    per_token = -torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    d = ref_lp - logp
    per_token = per_token + 0.04 * (torch.exp(d) - d - 1)
    m = mask.float()
    return (per_token * m).sum() / m.sum().clamp(min=1)


def _logprob_then_loss(backend):
    def fn(h, w, ids, old, adv, mask, ref_lp):
        b, t, hd = h.shape
        flat = torch.where(mask, ids, torch.full_like(ids, -100)).reshape(-1)
        logp = fused_linear_logprob(h.reshape(b * t, hd), w, flat, backend=backend, check_ids=False).view(b, t)
        return policy_loss(logp, old, adv, mask, ref_logp=ref_lp, kl_coef=0.04).loss
    return fn


def _liger():
    """(Liger's fused linear GRPO loss as a provider, None) or (None, why it is unavailable)."""
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception as exc:  # noqa: BLE001 - any import failure means no peer
        return None, f"liger_kernel.chunked_loss does not import: {type(exc).__name__}: {exc}"
    loss = LigerFusedLinearGRPOLoss(beta=0.04, loss_type="bnpo", use_ref_model=True)
    return (lambda h, w, ids, old, adv, mask, ref_lp: loss(
        h, w, ids, mask.long(), adv, ref_per_token_logps=ref_lp, old_per_token_logps=old)[0]), None


def _providers(device: str) -> tuple[dict[str, Callable], dict[str, str]]:
    fns: dict[str, Callable] = {"torch_materialised": _torch_materialised}
    unavailable: dict[str, str] = {}
    fast, why_not = backend_providers(device)
    if fast:
        fns["mpo_logprob_then_loss"] = _logprob_then_loss(fast[0])
    if device == "cuda":
        liger, why = _liger()
        if liger is not None:
            fns["liger_grpo"] = liger
        else:
            unavailable["liger_grpo"] = why
    else:
        unavailable["liger_grpo"] = "Liger's fused linear GRPO loss is a Triton kernel: GPU runs only"
    for b in fast:
        fns[f"mpo_{b}"] = (lambda *a, b=b: fused_linear_policy_loss(*a[:6], ref_logp=a[6], kl_coef=0.04,
                                                                    backend=b).loss)
    unavailable.update({f"mpo_{b}": why for b, why in why_not.items()})
    return fns, unavailable


def _shapes(ctx: BenchContext) -> list[tuple[int, int, int, int, torch.dtype]]:
    if ctx.device == "cuda":
        return [(8, 512, 1536, 151936, torch.bfloat16)] if ctx.quick else [
            (16, 1024, 1536, 151936, torch.bfloat16), (16, 1024, 3584, 151936, torch.bfloat16)]
    return [(4, 64, 64, 8192, torch.float32)] if ctx.quick else [(8, 256, 576, 49152, torch.float32)]


_timing = capped_timer(8.0)
PEERS = ("torch_materialised", "liger_grpo")


def cases(ctx: BenchContext) -> Iterator[Case]:
    fns, unavailable = _providers(ctx.device)
    for b, t, h, v, dtype in _shapes(ctx):
        yield _case(ctx, b, t, h, v, dtype, fns, unavailable)


def _case(ctx: BenchContext, b: int, t: int, h: int, v: int, dtype: torch.dtype, fns: dict, unavailable: dict) -> Case:
    device = ctx.device
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(b, t, h, generator=g).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=g) * h**-0.5).to(dtype).to(device)
    ids = torch.randint(0, v, (b, t), generator=g).to(device)
    mask = (torch.rand(b, t, generator=g) > 0.1).to(device)
    old = (torch.randn(b, t, generator=g) * 0.1 - 12).to(device)
    ref_lp = old + (torch.randn(b, t, generator=g) * 0.05).to(device)
    adv = torch.randn(b, generator=g).to(device)
    shape = f"B={b},T={t},H={h},V={v},{str(dtype).removeprefix('torch.')}"
    flat_h = hidden.reshape(b * t, h)
    gemm_ms = once(lambda: _timing(lambda: flat_h @ weight.t(), ctx).median_ms)
    floor_ms = once(lambda: 3 * gemm_ms())  # 3 GEMMs of [N, H] x [H, V]: forward, grad_hidden, grad_weight

    def step(fn):
        def call():
            hh = hidden.detach().requires_grad_()
            ww = weight.detach().requires_grad_()
            return torch.autograd.grad(fn(hh, ww, ids, old, adv, mask, ref_lp), (hh, ww))
        return call

    def extras(timings, peaks):
        base_ms, base_peak = timings["torch_materialised"].median_ms, peaks["torch_materialised"]
        liger_ms = timings["liger_grpo"].median_ms if "liger_grpo" in timings else None
        floor = floor_ms()
        return {
            k: dict(floor_ms=round(floor, 3), ratio_to_floor=round(tm.median_ms / floor, 3),
                    speedup_vs_materialised=round(base_ms / tm.median_ms, 3),
                    peak_vs_materialised=round(peaks[k] / base_peak, 4) if peaks[k] is not None and base_peak else None,
                    time_vs_liger=round(tm.median_ms / liger_ms, 3) if liger_ms else None, one_gemm_ms=round(gemm_ms(), 3))
            for k, tm in timings.items()
        }

    calls = {k: step(f) for k, f in fns.items()}
    return Case(shape, "fwd_bwd", calls, peers=PEERS, floor_ms=floor_ms, extras=extras, unavailable=unavailable, timer=_timing)


def run(ctx: BenchContext) -> Iterator[dict]:
    return run_cases(ctx, cases(ctx), "fused_linear_policy_loss")
