"""Triton fused policy loss (math: mpo_fast/reference/policy_loss.py; contract: mpo_fast/ops/policy_loss.py).

Three launches, no host sync:
1. forward: programs over [BLOCK_B, BLOCK_T] tiles of the token grid read logp, old_logp, advantages,
   mask (and ref_logp) once, write d loss_token / d logp times the mask weight (`coef`, when a gradient
   is needed) and eight per-(row, tile) partials: loss sum, weight sum, clipped weight, approx-KL sum,
   KL sum, ratio sum, ratio min, ratio max.
2. finalize: one program folds the partials into per-row totals, applies the aggregation and writes
   the loss, the seven metrics, each row's weight `row_w` and the global scale `glob`.
3. backward (on demand): grad[b, t] = coef[b, t] * row_w[b] * grad_loss * glob, one elementwise pass.
Inputs keep their strides (advantages [B] is stride_t = 0), so slices such as logp[:, :-1] are read
in place. Bytes per token for fp32 inputs and a bool mask: 13 read + 4 written (coef) forward, 4 read +
4 written backward.
"""
from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

KL_IDS = {None: 0, "k1": 1, "k2": 2, "k3": 3}
AGG_IDS = {"token_mean": 0, "seq_mean_token_mean": 1, "seq_mean_token_sum": 2}
NUM_PARTIALS = 8  # loss, weight, clipped, approx_kl, kl, ratio sum, ratio min, ratio max
NUM_METRICS = 7  # clip_fraction, approx_kl, kl, ratio_mean, ratio_min, ratio_max, tokens


@triton.jit
def _expm1_minus_x(x, SMALL: tl.constexpr):
    """exp(x) - 1 - x without the cancellation near 0: Taylor terms to x^11 where |x| < SMALL."""
    p = x * (1.0 / 39916800.0) + 1.0 / 3628800.0
    p = p * x + 1.0 / 362880.0
    p = p * x + 1.0 / 40320.0
    p = p * x + 1.0 / 5040.0
    p = p * x + 1.0 / 720.0
    p = p * x + 1.0 / 120.0
    p = p * x + 1.0 / 24.0
    p = p * x + 1.0 / 6.0
    p = p * x + 0.5
    series = p * x * x
    direct = (tl.exp(x) - 1.0) - x
    return tl.where(tl.abs(x) < SMALL, series, direct)


@triton.jit
def _policy_loss_fwd_kernel(
    logp_ptr, old_ptr, adv_ptr, mask_ptr, ref_ptr, coef_ptr, part_ptr,
    B, T, NT,
    s_lp_b, s_lp_t, s_old_b, s_old_t, s_adv_b, s_adv_t, s_m_b, s_m_t, s_ref_b, s_ref_t,
    lo_hi, lo_lo, hi_hi, hi_lo, kc_hi, kc_lo,
    KL: tl.constexpr, WRITE_COEF: tl.constexpr, ACC: tl.constexpr, SMALL: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(1)
    # Float scalars reach the kernel as fp32: each parameter comes as an fp32 pair summing to it, which
    # rebuilds it to ~2^-48 in fp64 and equals the torch-rounded fp32 value in fp32.
    lo = tl.cast(lo_hi, ACC) + tl.cast(lo_lo, ACC)
    hi = tl.cast(hi_hi, ACC) + tl.cast(hi_lo, ACC)
    kl_coef = tl.cast(kc_hi, ACC) + tl.cast(kc_lo, ACC)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    r2 = rows.to(tl.int64)[:, None]
    c2 = cols.to(tl.int64)[None, :]
    inb = (rows[:, None] < B) & (cols[None, :] < T)
    w = tl.load(mask_ptr + r2 * s_m_b + c2 * s_m_t, mask=inb, other=0).to(ACC)
    ok = w != 0
    # Padding is never read (masked loads give 0), so NaN or garbage there cannot leak.
    lp = tl.load(logp_ptr + r2 * s_lp_b + c2 * s_lp_t, mask=ok, other=0.0).to(ACC)
    old = tl.load(old_ptr + r2 * s_old_b + c2 * s_old_t, mask=ok, other=0.0).to(ACC)
    a = tl.load(adv_ptr + r2 * s_adv_b + c2 * s_adv_t, mask=ok, other=0.0).to(ACC)
    d = lp - old
    r = tl.exp(d)
    # The clipped branch of -min(r A, clip(r) A) is active (and its gradient 0) exactly here.
    clipped = ((r < lo) & (a < 0)) | ((r > hi) & (a > 0))
    rc = tl.minimum(tl.maximum(r, lo), hi)
    dpg = -(r * a)
    pg = tl.where(clipped, -(rc * a), dpg)
    dpg = tl.where(clipped, 0.0, dpg)
    if KL == 0:
        kl = tl.zeros([BLOCK_B, BLOCK_T], ACC)
        dkl = tl.zeros([BLOCK_B, BLOCK_T], ACC)
    else:
        rf = tl.load(ref_ptr + r2 * s_ref_b + c2 * s_ref_t, mask=ok, other=0.0).to(ACC)
        dk = lp - rf
        if KL == 1:
            kl = dk
            dkl = tl.full([BLOCK_B, BLOCK_T], 1.0, ACC)
        elif KL == 2:
            kl = 0.5 * dk * dk
            dkl = dk
        else:
            kl = _expm1_minus_x(-dk, SMALL)  # exp(-dk) + dk - 1
            dkl = dk - kl  # 1 - exp(-dk)
    if WRITE_COEF:
        tl.store(coef_ptr + r2 * T + c2, w * (dpg + kl_coef * dkl), mask=inb)
    akl = _expm1_minus_x(-d, SMALL)
    stride = B * NT
    base = part_ptr + rows.to(tl.int64) * NT + pid_t
    rmask = rows < B
    tl.store(base, tl.sum(w * (pg + kl_coef * kl), axis=1), mask=rmask)
    tl.store(base + stride, tl.sum(w, axis=1), mask=rmask)
    tl.store(base + 2 * stride, tl.sum(tl.where(clipped, w, 0.0), axis=1), mask=rmask)
    tl.store(base + 3 * stride, tl.sum(w * akl, axis=1), mask=rmask)
    tl.store(base + 4 * stride, tl.sum(w * kl, axis=1), mask=rmask)
    tl.store(base + 5 * stride, tl.sum(w * r, axis=1), mask=rmask)
    tl.store(base + 6 * stride, tl.min(tl.where(ok, r, float("inf")), axis=1), mask=rmask)
    tl.store(base + 7 * stride, tl.max(tl.where(ok, r, float("-inf")), axis=1), mask=rmask)


@triton.jit
def _policy_loss_finalize_kernel(
    part_ptr, loss_ptr, metrics_ptr, row_w_ptr, glob_ptr,
    B, NT, max_tokens,
    AGG: tl.constexpr, ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_NT: tl.constexpr,
):
    stride = B * NT
    n_lanes = tl.zeros([BLOCK_R], ACC)
    nonempty_lanes = tl.zeros([BLOCK_R], ACC)
    loss_lanes = tl.zeros([BLOCK_R], ACC)
    clip_lanes = tl.zeros([BLOCK_R], ACC)
    akl_lanes = tl.zeros([BLOCK_R], ACC)
    kl_lanes = tl.zeros([BLOCK_R], ACC)
    rsum_lanes = tl.zeros([BLOCK_R], ACC)
    rmin_lanes = tl.full([BLOCK_R], float("inf"), ACC)
    rmax_lanes = tl.full([BLOCK_R], float("-inf"), ACC)
    for r0 in range(0, B, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        rmask = rows < B
        row_loss = tl.zeros([BLOCK_R], ACC)
        row_n = tl.zeros([BLOCK_R], ACC)
        row_clip = tl.zeros([BLOCK_R], ACC)
        row_akl = tl.zeros([BLOCK_R], ACC)
        row_kl = tl.zeros([BLOCK_R], ACC)
        row_rsum = tl.zeros([BLOCK_R], ACC)
        row_rmin = tl.full([BLOCK_R], float("inf"), ACC)
        row_rmax = tl.full([BLOCK_R], float("-inf"), ACC)
        for c0 in range(0, NT, BLOCK_NT):
            cols = c0 + tl.arange(0, BLOCK_NT)
            m2 = rmask[:, None] & (cols[None, :] < NT)
            p = part_ptr + rows.to(tl.int64)[:, None] * NT + cols[None, :]
            row_loss += tl.sum(tl.load(p, mask=m2, other=0.0), axis=1)
            row_n += tl.sum(tl.load(p + stride, mask=m2, other=0.0), axis=1)
            row_clip += tl.sum(tl.load(p + 2 * stride, mask=m2, other=0.0), axis=1)
            row_akl += tl.sum(tl.load(p + 3 * stride, mask=m2, other=0.0), axis=1)
            row_kl += tl.sum(tl.load(p + 4 * stride, mask=m2, other=0.0), axis=1)
            row_rsum += tl.sum(tl.load(p + 5 * stride, mask=m2, other=0.0), axis=1)
            row_rmin = tl.minimum(row_rmin, tl.min(tl.load(p + 6 * stride, mask=m2, other=float("inf")), axis=1))
            row_rmax = tl.maximum(row_rmax, tl.max(tl.load(p + 7 * stride, mask=m2, other=float("-inf")), axis=1))
        if AGG == 1:  # seq_mean_token_mean: each non-empty row weighs 1 / its token count
            has = row_n > 0
            row_w = tl.where(has, 1.0 / tl.maximum(row_n, 1.0), 0.0)
            nonempty_lanes += tl.where(has, 1.0, 0.0)
        else:
            row_w = tl.where(rmask, 1.0, 0.0).to(ACC)
        tl.store(row_w_ptr + rows, row_w, mask=rmask)
        loss_lanes += row_loss * row_w
        n_lanes += row_n
        clip_lanes += row_clip
        akl_lanes += row_akl
        kl_lanes += row_kl
        rsum_lanes += row_rsum
        rmin_lanes = tl.minimum(rmin_lanes, row_rmin)
        rmax_lanes = tl.maximum(rmax_lanes, row_rmax)
    n_all = tl.sum(n_lanes, axis=0)
    if AGG == 0:
        glob = 1.0 / tl.maximum(n_all, 1.0)
    elif AGG == 1:
        glob = 1.0 / tl.maximum(tl.sum(nonempty_lanes, axis=0), 1.0)
    else:
        glob = 1.0 / (tl.cast(B, ACC) * tl.cast(max_tokens, ACC))
    tl.store(glob_ptr, glob)
    tl.store(loss_ptr, tl.sum(loss_lanes, axis=0) * glob)
    denom = tl.maximum(n_all, 1.0)
    tl.store(metrics_ptr + 0, tl.sum(clip_lanes, axis=0) / denom)
    tl.store(metrics_ptr + 1, tl.sum(akl_lanes, axis=0) / denom)
    tl.store(metrics_ptr + 2, tl.sum(kl_lanes, axis=0) / denom)
    tl.store(metrics_ptr + 3, tl.sum(rsum_lanes, axis=0) / denom)
    tl.store(metrics_ptr + 4, tl.where(n_all > 0, tl.min(rmin_lanes, axis=0), float("nan")))
    tl.store(metrics_ptr + 5, tl.where(n_all > 0, tl.max(rmax_lanes, axis=0), float("nan")))
    tl.store(metrics_ptr + 6, n_all)


@triton.jit
def _policy_loss_bwd_kernel(
    grad_loss_ptr, glob_ptr, coef_ptr, row_w_ptr, out_ptr, B, T,
    OUT_BF16: tl.constexpr, DOWNCAST: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_T: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_b = tl.program_id(1)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    inb = (rows[:, None] < B) & (cols[None, :] < T)
    g = tl.load(grad_loss_ptr) * tl.load(glob_ptr)
    scale = tl.load(row_w_ptr + rows, mask=rows < B, other=0.0) * g
    offs = rows.to(tl.int64)[:, None] * T + cols[None, :]
    coef = tl.load(coef_ptr + offs, mask=inb, other=0.0)
    grad = coef * scale[:, None]
    if OUT_BF16:
        # Round to nearest even by hand, as torch does: the CPU interpreter's fp32 -> bf16 cast truncates.
        bits = grad.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(grad != grad, (bits >> 16) | 0x40, rounded)  # NaN stays a quiet NaN
        grad = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DOWNCAST:
        grad = grad.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, grad, mask=inb)


def fp32_pair(x: float) -> tuple[float, float]:
    """(hi, lo) fp32 values with hi + lo == x to ~2^-48: fp64 parameters through fp32 kernel arguments."""
    hi = struct.unpack("f", struct.pack("f", x))[0]
    return hi, struct.unpack("f", struct.pack("f", x - hi))[0]


def _tile(batch: int, steps: int) -> tuple[int, int]:
    # ~2048 tokens a program: 8 per thread at 8 warps keeps the ~15 live values per token in registers.
    block_t = min(triton.next_power_of_2(steps), 2048)
    block_b = max(1, min(triton.next_power_of_2(batch), 2048 // block_t))
    return block_b, block_t


def _strides(t: torch.Tensor | None) -> tuple[int, int]:
    if t is None:
        return 0, 0
    return (t.stride(0), 0) if t.dim() == 1 else (t.stride(0), t.stride(1))


def policy_loss_forward(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    ref_logp: torch.Tensor | None, clip_low: float, clip_high: float, kl_coef: float, kl_estimator: str | None,
    aggregation: str, max_tokens: int, need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, metrics[7], coef [B, T] or [0], row_w [B], glob) in fp32 (fp64 for fp64 logp)."""
    batch, steps = logp.shape
    acc = torch.float64 if logp.dtype == torch.float64 else torch.float32
    tl_acc = tl.float64 if acc == torch.float64 else tl.float32
    dev = logp.device
    block_b, block_t = _tile(batch, steps)
    nt = triton.cdiv(steps, block_t)
    partials = torch.empty((NUM_PARTIALS, batch, nt), dtype=acc, device=dev)
    coef = torch.empty((batch, steps) if need_grad else (0,), dtype=acc, device=dev)
    loss = torch.empty((), dtype=acc, device=dev)
    metrics = torch.empty(NUM_METRICS, dtype=acc, device=dev)
    row_w = torch.empty(batch, dtype=acc, device=dev)
    glob = torch.empty((), dtype=acc, device=dev)
    m = mask.view(torch.uint8) if mask.dtype == torch.bool else mask
    kl_id = KL_IDS[kl_estimator if ref_logp is not None else None]
    ref_arg = ref_logp if ref_logp is not None else logp  # dummy pointer, never read when KL == 0
    grid = (nt, triton.cdiv(batch, block_b))
    _policy_loss_fwd_kernel[grid](
        logp, old_logp, advantages, m, ref_arg, coef, partials,
        batch, steps, nt,
        *_strides(logp), *_strides(old_logp), *_strides(advantages), *_strides(m), *_strides(ref_logp),
        *fp32_pair(1.0 - clip_low), *fp32_pair(1.0 + clip_high), *fp32_pair(kl_coef),
        KL=kl_id, WRITE_COEF=need_grad, ACC=tl_acc, SMALL=1.0 if acc == torch.float32 else 0.05,
        BLOCK_B=block_b, BLOCK_T=block_t, num_warps=8,
    )
    block_nt = min(triton.next_power_of_2(nt), 16)
    _policy_loss_finalize_kernel[(1,)](
        partials, loss, metrics, row_w, glob, batch, nt, int(max_tokens),
        AGG=AGG_IDS[aggregation], ACC=tl_acc, BLOCK_R=max(16, 1024 // block_nt), BLOCK_NT=block_nt, num_warps=4,
    )
    return loss, metrics, coef, row_w, glob


def policy_loss_backward(
    grad_loss: torch.Tensor, coef: torch.Tensor, row_w: torch.Tensor, glob: torch.Tensor, grad_dtype: torch.dtype
) -> torch.Tensor:
    """grad[b, t] = coef[b, t] * row_w[b] * grad_loss * glob, contiguous, in grad_dtype."""
    batch, steps = coef.shape
    out = torch.empty((batch, steps), dtype=grad_dtype, device=coef.device)
    block_b, block_t = _tile(batch, steps)
    grid = (triton.cdiv(steps, block_t), triton.cdiv(batch, block_b))
    _policy_loss_bwd_kernel[grid](
        grad_loss.to(coef.dtype), glob, coef, row_w, out, batch, steps,
        OUT_BF16=grad_dtype == torch.bfloat16 and coef.dtype == torch.float32,
        DOWNCAST=grad_dtype.itemsize < coef.dtype.itemsize, BLOCK_B=block_b, BLOCK_T=block_t, num_warps=4,
    )
    return out
