"""Triton selective log-softmax: log p(id), entropy and the gradient to the logits.

Forward: one program per row streams the row once in BLOCK-wide slices, each of the BLOCK lanes
keeping its own online (max, sum e^(z-max), sum e^(z-max)(z-max)) in fp32 (fp64 for fp64 logits),
combined once at the end of the row; it writes three numbers per row: logp, entropy, lse. Backward: a 2-D grid (row, slice) recomputes
p = exp(z - lse) and writes the gradient slice; no [N, V] temporary in either direction.

The same kernels serve fused_linear_logprob, whose logits exist one [tokens, vocab-chunk] tile at
a time: `fold` merges a tile into per-row running statistics (vocab_start says which columns the
tile holds), optionally leaving exp(z - running max) in the tile, and `backward` overwrites a
tile with its gradient in place.

Block sizes: the forward's BLOCK elements per loop step are split over num_warps * 32 threads;
4096 x 2 B (bf16) per step with 8 warps is 16 elements (two 16-byte loads) per thread, and with
8 programs resident per SM (132 SMs on an H100) about 8 MB in flight, well above the ~3 MB that
3 TB/s x ~1 us latency needs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FWD_BLOCK = 4096
FWD_WARPS = 8
BWD_BLOCK = 4096
BWD_WARPS = 8


@triton.jit
def _row_stats(row_ptr, n_cols, inv_t, ENTROPY: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(shift, s, t) of one row: s = sum e^(z - shift), t = sum e^(z - shift)(z - shift), z = x * inv_t.

    Per-lane online statistics, as the CUDA kernel keeps per thread: each of the BLOCK lanes carries
    its own (max m, sum s, sum t) over the columns it visits, updated elementwise with ONE exp per
    element: e = exp(-|x - m|) is the new element's weight when x <= m, and the old sum's rescale
    when x > m (then the new element weighs 1). The lanes are combined once, after the loop (one
    max and two sums per row), instead of 2-3 block reductions (shared memory and barriers) every
    BLOCK elements as before (issue 18).

    shift is the max, or 0 while every value is -inf (so -inf - -inf never happens); a NaN or +inf
    anywhere turns s into NaN, which the caller reports for this row only.
    """
    m = tl.full([BLOCK], float("-inf"), ACC)
    s = tl.zeros([BLOCK], ACC)
    t = tl.zeros([BLOCK], ACC)
    for start in range(0, n_cols, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + offs, mask=offs < n_cols, other=float("-inf")).to(ACC) * inv_t
        gt = x > m  # a new lane max (a NaN x is never gt: it lands in s below)
        d = tl.where(gt, m - x, x - m)  # <= 0; NaN for -inf - -inf, excluded next
        e = tl.exp(tl.where(x == float("-inf"), float("-inf"), d))  # a -inf element weighs 0
        if ENTROPY:
            # x > m: old terms e^(z-m)(z-m) become e^(z-x)(z-x) = e (e^(z-m)((z-m) + (m-x))); x weighs e^0 * 0
            rescaled = tl.where(s > 0, e * (t + (m - x) * s), 0.0)
            t = tl.where(gt, rescaled, t + tl.where(e > 0, e * d, 0.0))
        s = tl.where(gt, s * e + 1.0, s + e)
        m = tl.where(gt, x, m)
    big = tl.max(m, axis=0)
    shift = tl.where(big == float("-inf"), 0.0, big)
    scale = tl.exp(m - shift)  # a lane that saw only -inf: 0 (and its s, t are 0); +inf: NaN
    if ENTROPY:
        t_row = tl.sum(tl.where(s > 0, scale * (t + (m - shift) * s), 0.0), axis=0)
    else:
        t_row = tl.zeros([], ACC)
    s_row = tl.sum(s * scale, axis=0)
    return shift, s_row, t_row


@triton.jit
def _forward_kernel(
    logits_ptr, ids_ptr, logp_ptr, entropy_ptr, lse_ptr,
    n_cols, row_stride, ignore_index, inv_t,
    ENTROPY: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(ids_ptr + row)
    if target == ignore_index:
        tl.store(logp_ptr + row, 0.0)
        tl.store(lse_ptr + row, 0.0)
        if ENTROPY:
            tl.store(entropy_ptr + row, 0.0)
    else:
        row_ptr = logits_ptr + row * row_stride
        shift, s, t = _row_stats(row_ptr, n_cols, inv_t, ENTROPY, ACC, BLOCK)
        log_s = tl.log(s)
        lse = shift + log_s
        in_range = (target >= 0) & (target < n_cols)
        zt = tl.load(row_ptr + tl.where(in_range, target, 0)).to(ACC) * inv_t
        zt = tl.where(in_range, zt, float("nan"))  # an id the caller did not validate: NaN, never a wild read
        tl.store(logp_ptr + row, zt - lse)
        tl.store(lse_ptr + row, lse)
        if ENTROPY:
            tl.store(entropy_ptr + row, log_s - t / s)


@triton.jit
def _fold_kernel(
    tile_ptr, ids_ptr, m_ptr, s_ptr, t_ptr, zt_ptr, alpha_ptr,
    n_cols, row_stride, vocab_start, ignore_index, inv_t,
    ENTROPY: tl.constexpr, WRITE_EXP: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """WRITE_EXP: then overwrite the tile row with exp(z - m_new), alpha = exp(m_old - m_new)."""
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(ids_ptr + row)
    if target == ignore_index:
        if WRITE_EXP:  # contributes nothing to what the caller accumulates with the tile
            tl.store(alpha_ptr + row, 1.0)
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                zero = tl.zeros([BLOCK], ACC).to(tile_ptr.dtype.element_ty)
                tl.store(tile_ptr + row * row_stride + offs, zero, mask=offs < n_cols)
    else:
        row_ptr = tile_ptr + row * row_stride
        cm, cs, ct = _row_stats(row_ptr, n_cols, inv_t, ENTROPY, ACC, BLOCK)
        m0 = tl.load(m_ptr + row)
        s0 = tl.load(s_ptr + row)
        t0 = tl.load(t_ptr + row)
        nm = tl.maximum(m0, cm)
        fa = tl.exp(m0 - nm)
        fb = tl.exp(cm - nm)
        sn = fa * s0 + fb * cs
        tn = fa * (t0 + (m0 - nm) * s0) + fb * (ct + (cm - nm) * cs)
        first = s0 == 0  # nothing folded yet: take the chunk as it is (m0 is -inf)
        sn = tl.where(first, cs, sn)
        tn = tl.where(first, ct, tn)
        nm = tl.where(first, cm, nm)
        skip = cs == 0  # a chunk of only -inf adds nothing (NaN != 0 falls through and poisons the row)
        m_new = tl.where(skip, m0, nm)
        tl.store(m_ptr + row, m_new)
        tl.store(s_ptr + row, tl.where(skip, s0, sn))
        if ENTROPY:
            tl.store(t_ptr + row, tl.where(skip, t0, tn))
        local = target - vocab_start
        in_tile = (local >= 0) & (local < n_cols)
        zt = tl.load(row_ptr + tl.where(in_tile, local, 0)).to(ACC) * inv_t
        tl.store(zt_ptr + row, zt, mask=in_tile)
        if WRITE_EXP:
            tl.store(alpha_ptr + row, tl.where(s0 == 0, 0.0, tl.exp(m0 - m_new)))
            shift = tl.where(m_new == float("-inf"), 0.0, m_new)
            for start in range(0, n_cols, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                mask = offs < n_cols
                x = tl.load(row_ptr + offs, mask=mask, other=0.0).to(ACC) * inv_t
                tl.store(row_ptr + offs, tl.exp(x - shift).to(tile_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _round_to(x, OUT: tl.constexpr):
    """x (fp32/fp64) in the output dtype; fp32 -> bf16 rounds to nearest even by hand, as torch and the
    GPU cast do: the CPU interpreter's cast truncates, one bf16 ulp (0.4%) low on half the entries."""
    if (OUT == tl.bfloat16) and (x.dtype == tl.float32):
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, (bits >> 16) | 0x40, rounded)  # NaN stays a quiet NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(OUT)


@triton.jit
def _backward_kernel(
    logits_ptr, ids_ptr, lse_ptr, entropy_ptr, grad_logp_ptr, grad_entropy_ptr, grad_ptr,
    n_cols, row_stride, grad_row_stride, vocab_start, ignore_index, inv_t,
    HAS_LOGP: tl.constexpr, HAS_ENTROPY: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
):
    """grad = (gl ([j == id] - p_j) - ge p_j (log p_j + entropy)) / T; may run in place (grad_ptr == logits_ptr)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_cols
    out_ptrs = grad_ptr + row * grad_row_stride + offs
    target = tl.load(ids_ptr + row)
    if target == ignore_index:
        tl.store(out_ptrs, tl.zeros([BLOCK], ACC).to(grad_ptr.dtype.element_ty), mask=mask)
    else:
        x = tl.load(logits_ptr + row * row_stride + offs, mask=mask, other=0.0).to(ACC) * inv_t
        d = x - tl.load(lse_ptr + row)  # log p
        p = tl.exp(d)
        q = tl.zeros([BLOCK], ACC)
        if HAS_LOGP:
            gl = tl.load(grad_logp_ptr + row).to(ACC)
            q -= gl
        if HAS_ENTROPY:
            ge = tl.load(grad_entropy_ptr + row).to(ACC)
            q -= ge * (d + tl.load(entropy_ptr + row))
        g = p * q
        if HAS_ENTROPY:
            g = tl.where(p == 0, 0.0, g)  # a -inf logit: p = 0 and (log p + entropy) = -inf; gradient 0
        if HAS_LOGP:
            g += tl.where(offs + vocab_start == target, gl, 0.0)
        tl.store(out_ptrs, _round_to(g * inv_t, grad_ptr.dtype.element_ty), mask=mask)


def _acc(dtype: torch.dtype):
    return (tl.float64, torch.float64) if dtype == torch.float64 else (tl.float32, torch.float32)


def _check_rows(x: torch.Tensor, what: str) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"{what} must be 2-D with unit column stride (got shape {tuple(x.shape)}, strides {x.stride()})")


def forward(
    logits: torch.Tensor, ids: torch.Tensor, inv_t: float, ignore_index: int, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N] or [0], lse [N]); logits [N, V] with unit column stride, ids int64 contiguous."""
    _check_rows(logits, "logits")
    n, v = logits.shape
    acc_tl, acc = _acc(logits.dtype)
    logp = torch.empty(n, dtype=acc, device=logits.device)
    lse = torch.empty(n, dtype=acc, device=logits.device)
    entropy = torch.empty(n if with_entropy else 0, dtype=acc, device=logits.device)
    if n == 0:
        return logp, entropy, lse
    _forward_kernel[(n,)](
        logits, ids, logp, entropy if with_entropy else logp, lse, v, logits.stride(0), ignore_index, inv_t,
        ENTROPY=with_entropy, ACC=acc_tl, BLOCK=min(FWD_BLOCK, triton.next_power_of_2(v)), num_warps=FWD_WARPS,
    )
    return logp, entropy, lse


def fold(
    tile: torch.Tensor, ids: torch.Tensor, vocab_start: int, inv_t: float, ignore_index: int, with_entropy: bool,
    m: torch.Tensor, s: torch.Tensor, t: torch.Tensor, zt: torch.Tensor, alpha: torch.Tensor | None = None,
) -> None:
    """Merge a logits tile (vocab columns [vocab_start, vocab_start + cols)) into m, s, t, zt in place.

    alpha given: also overwrite the tile with exp(z - m_new) and write alpha = exp(m_old - m_new).
    """
    _check_rows(tile, "tile")
    n, v = tile.shape
    if n == 0:
        return
    acc_tl, _ = _acc(tile.dtype)
    _fold_kernel[(n,)](
        tile, ids, m, s, t, zt, alpha if alpha is not None else m, v, tile.stride(0), vocab_start, ignore_index, inv_t,
        ENTROPY=with_entropy, WRITE_EXP=alpha is not None, ACC=acc_tl,
        BLOCK=min(FWD_BLOCK, triton.next_power_of_2(v)), num_warps=FWD_WARPS,
    )


def backward(
    logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, entropy: torch.Tensor | None,
    grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None, inv_t: float, ignore_index: int,
    vocab_start: int = 0, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient w.r.t. logits in their dtype; `out` may be `logits` itself (the fused op's tiles)."""
    _check_rows(logits, "logits")
    n, v = logits.shape
    acc_tl, _ = _acc(logits.dtype)
    grad = torch.empty((n, v), dtype=logits.dtype, device=logits.device) if out is None else out
    if n == 0:
        return grad
    block = min(BWD_BLOCK, triton.next_power_of_2(v))
    _backward_kernel[(n, triton.cdiv(v, block))](
        logits, ids, lse, entropy if entropy is not None else lse,
        grad_logp if grad_logp is not None else lse, grad_entropy if grad_entropy is not None else lse, grad,
        v, logits.stride(0), grad.stride(0), vocab_start, ignore_index, inv_t,
        HAS_LOGP=grad_logp is not None, HAS_ENTROPY=grad_entropy is not None, ACC=acc_tl, BLOCK=block,
        num_warps=BWD_WARPS,
    )
    return grad
