"""fused_linear_logprob: per-token log-probs (and entropy) from hidden states, never building the logits.

`logits = hidden @ weight.T` for a whole batch is [N, V]: 16k tokens x 151,936 vocab is 5 GB in
bf16, plus 10 GB for an fp32 log-softmax and as much again in the backward. Here the logits exist
one [tokens, vocab-chunk] tile at a time:

forward   for each vocab chunk c, token chunk k:  tile = h_k @ W_c^T (+ b_c)      (cuBLAS / MKL)
                                                  fold(tile) -> running (max, sum, entropy sum, target logit)
          then lse, logp, entropy per row (three floats per row saved for the backward).
backward  the same loop recomputes each tile and turns it into dL/dlogits in place, then
          grad_h[k] += tile @ W_c,  grad_W[c] += tile^T @ h_k,  grad_b[c] += tile.sum(0)   (fp32 accumulation)

Why recompute instead of Liger's "gradients during the forward": Liger fuses the *loss* (cross
entropy, whose gradient is known in the forward). This op returns per-token log-probs whose
upstream gradient (from the policy loss: ratios, clipping, advantages) only exists after the
forward, and grad_W = sum_i g_i (onehot - p_i) h_i^T cannot be formed without it. So the cost is
4 GEMMs of 2NHV flops (1 forward, 3 backward) against 3 for a materialised path; the memory is a
tile instead of [N, V].

Frozen weight (LoRA: weight.requires_grad False, so grad_W is never computed): the hidden gradient
of logp is g_i (W[id_i] - E_p[W]_i) / T, so when only logp is returned the forward also
accumulates E_p[W] = softmax(z) @ W chunk by chunk (rescaled like the online sum; one [N, H] fp32
buffer) and the backward is a gather: 2 GEMMs in all, against 3 for the materialised path and 3
for recomputing. With the entropy requested the recompute path is used (its hidden gradient would
need a second [N, H] accumulation, as costly as the recompute).

Loop order: vocab outer, tokens inner, so grad_W needs no [V, H] fp32 accumulator: a chunk of W
sees all its token chunks before the next chunk starts (a [vc, H] fp32 buffer, only when the tokens
do not fit one tile). grad_h accumulates in fp32 [N, H] (N x H, not N x V).

Positions whose id is ignore_index are dropped before the GEMMs (padding costs no flops).

Per-tile kernels by backend: C++ (`cpu`), Triton (`triton`), CUDA (`cuda`) or plain torch
(`reference`: the same chunked loop, so even the fallback never materialises [N, V]). The oracle
the tests use, mpo_fast/reference/logprobs.py, materialises the logits on purpose.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .. import _backend, _native
from .selective_log_softmax import (
    FLOAT_DTYPES,
    TokenLogProbs,
    acc_dtype,
    check_id_range,
    check_temperature,
    validate_ids,
)

SUPPORTED = ("reference", "cpu", "triton", "cuda")

# Bytes of the one [tokens, vocab-chunk] logits tile (the only temporary that scales with N or V).
# GPU: 256 MB = a [16384, 8192] bf16 tile; its GEMM ([16384, H] x [H, 8192], 0.4 TFLOP at
# H=1536) runs at full cuBLAS speed, and grad_h's fp32 accumulator is re-read V / 8192 = 19 times
# (19 x 100 MB at N=16384, H=1536: ~1.3 ms of traffic against ~40 ms of GEMMs).
# CPU: 8 MB = [2048, 1024] fp32, so the GEMM's output is still in the 32 MB L3 when the fold
# kernel reads it.
TILE_BYTES = {"cuda": 256 << 20, "cpu": 8 << 20}
MIN_VOCAB_CHUNK = {"cuda": 4096, "cpu": 512}


@dataclass(frozen=True)
class TilePlan:
    """Rows and vocabulary columns of one logits tile."""

    tokens: int
    vocab: int

    @classmethod
    def for_shape(cls, rows: int, vocab: int, dtype: torch.dtype, device_type: str) -> "TilePlan":
        kind = "cuda" if device_type == "cuda" else "cpu"
        elems = max(1, TILE_BYTES[kind] // torch.tensor([], dtype=dtype).element_size())
        rows = max(rows, 1)
        vc = max(MIN_VOCAB_CHUNK[kind], elems // rows)
        vc = min(vocab, -(-vc // 64) * 64)  # multiple of 64: 16-byte aligned tile rows
        return cls(tokens=max(1, min(rows, elems // vc)), vocab=vc)


# ---- the per-tile kernels of each backend ------------------------------------------------------
def _torch_fold(tile, ids, vocab_start, inv_t, ignore_index, with_entropy, m, s, t, zt, alpha=None):
    acc = m.dtype
    m_old, s_old = m.clone(), s.clone()
    z = tile.to(acc) * inv_t
    active = ids != ignore_index
    cm = z.amax(dim=1)
    shift = torch.where(cm == float("-inf"), torch.zeros_like(cm), cm)
    d = z - shift[:, None]
    e = d.exp()
    cs = e.sum(dim=1)
    ct = torch.where(e > 0, e * d, torch.zeros_like(e)).sum(dim=1)
    nm = torch.maximum(m, shift)
    fa, fb = (m - nm).exp(), (shift - nm).exp()
    sn = fa * s + fb * cs
    tn = fa * (t + (m - nm) * s) + fb * (ct + (shift - nm) * cs)
    first = s == 0  # nothing folded yet: take the chunk whole (m is -inf)
    sn, tn, nm = torch.where(first, cs, sn), torch.where(first, ct, tn), torch.where(first, shift, nm)
    upd = active & (cs != 0)  # a chunk of only -inf adds nothing; NaN != 0 falls through
    m.copy_(torch.where(upd, nm, m))
    s.copy_(torch.where(upd, sn, s))
    t.copy_(torch.where(upd, tn, t))
    local = ids - vocab_start
    in_tile = active & (local >= 0) & (local < tile.shape[1])
    picked = z.gather(1, local.clamp(0, tile.shape[1] - 1)[:, None]).squeeze(1)
    zt.copy_(torch.where(in_tile, picked, zt))
    if alpha is not None:
        alpha.copy_(torch.where(s_old == 0, torch.zeros_like(m), (m_old - m).exp()).where(active, 1.0))
        shift_new = torch.where(m == float("-inf"), torch.zeros_like(m), m)
        tile.copy_(torch.where(active[:, None], (z - shift_new[:, None]).exp(), 0.0))


def _torch_grad_(tile, ids, vocab_start, inv_t, ignore_index, lse, entropy, grad_logp, grad_entropy):
    acc = lse.dtype
    d = tile.to(acc) * inv_t - lse[:, None]
    p = d.exp()
    q = torch.zeros_like(p) if grad_logp is None else -grad_logp[:, None].expand_as(p)
    if grad_entropy is not None:
        q = q - grad_entropy[:, None] * (d + entropy[:, None])
    g = p * q
    if grad_entropy is not None:
        g = torch.where(p == 0, torch.zeros_like(g), g)
    if grad_logp is not None:
        local = ids - vocab_start
        in_tile = (local >= 0) & (local < tile.shape[1]) & (ids != ignore_index)
        g.scatter_add_(1, local.clamp(0, tile.shape[1] - 1)[:, None], torch.where(in_tile, grad_logp, 0.0)[:, None])
    g = torch.where((ids == ignore_index)[:, None], torch.zeros_like(g), g * inv_t)
    tile.copy_(g)


def _native_fold(ext, stream, tile, ids, vocab_start, inv_t, ignore_index, with_entropy, m, s, t, zt, alpha=None):
    rows, cols = tile.shape
    if rows == 0:
        return
    args = (
        tile.data_ptr(), _native.dtype_code(tile.dtype), rows, cols, tile.stride(0), vocab_start, ids.data_ptr(),
        ignore_index, inv_t, with_entropy, m.data_ptr(), s.data_ptr(), t.data_ptr(), zt.data_ptr(),
        alpha.data_ptr() if alpha is not None else 0,
    )
    ext.selective_log_softmax_fold(*args, *stream)


def _native_grad_(ext, stream, tile, ids, vocab_start, inv_t, ignore_index, lse, entropy, grad_logp, grad_entropy):
    rows, cols = tile.shape
    if rows == 0:
        return
    args = (
        tile.data_ptr(), _native.dtype_code(tile.dtype), rows, cols, tile.stride(0), vocab_start, ids.data_ptr(),
        ignore_index, inv_t, lse.data_ptr(), entropy.data_ptr() if grad_entropy is not None else 0,
        grad_logp.data_ptr() if grad_logp is not None else 0,
        grad_entropy.data_ptr() if grad_entropy is not None else 0, tile.data_ptr(), tile.stride(0),
    )
    ext.selective_log_softmax_backward(*args, *stream)


def _triton_fold(tile, ids, vocab_start, inv_t, ignore_index, with_entropy, m, s, t, zt, alpha=None):
    from ..kernels import selective_log_softmax as tk

    with _native.on_device(tile.device):
        tk.fold(tile, ids, vocab_start, inv_t, ignore_index, with_entropy, m, s, t, zt, alpha)


def _triton_grad_(tile, ids, vocab_start, inv_t, ignore_index, lse, entropy, grad_logp, grad_entropy):
    from ..kernels import selective_log_softmax as tk

    with _native.on_device(tile.device):
        tk.backward(tile, ids, lse, entropy if grad_entropy is not None else None, grad_logp, grad_entropy, inv_t,
                    ignore_index, vocab_start=vocab_start, out=tile)


def _tile_kernels(backend: str, device: torch.device):
    """(fold, grad_) for a backend: fold merges a tile into running stats (and, given `alpha`, leaves
    exp(z - running max) in it), grad_ overwrites it with dL/dlogits."""
    if backend == "reference":
        return _torch_fold, _torch_grad_
    if backend == "triton":
        return _triton_fold, _triton_grad_
    if backend == "cpu":
        ext, stream = _native.cpu_ext, ()
    elif backend == "cuda":
        ext, stream = _native.cuda_launches(device), ()  # guarded launches append the stream
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return functools.partial(_native_fold, ext, stream), functools.partial(_native_grad_, ext, stream)


@functools.lru_cache(maxsize=None)
def _cuda_mm_out_dtype_ok() -> bool:
    """torch >= 2.8 on CUDA: addmm(..., out_dtype=float32) keeps a bf16 product in fp32 (no rounding)."""
    try:
        a = torch.ones(2, 2, dtype=torch.bfloat16, device="cuda")
        acc = torch.zeros(2, 2, device="cuda")
        torch.addmm(acc, a, a, out_dtype=torch.float32, out=acc)
        return True
    except (RuntimeError, TypeError):
        return False


def _addmm_acc_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """acc += a @ b with acc in fp32/fp64, without rounding a @ b to a's 16-bit dtype first.

    Rounding each vocabulary chunk's product to bf16 before summing the chunks loses ~8 bits per
    chunk; TRL measured it drifting entropy in training. fp32 inputs go straight to addmm_.
    """
    if a.dtype == acc.dtype:
        acc.addmm_(a, b)
    elif acc.device.type == "cuda" and _cuda_mm_out_dtype_ok():
        torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
    else:
        acc.addmm_(a.to(acc.dtype), b.to(acc.dtype))


def _compact(ids: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """Row indices to keep, or None when no position is ignored (one host sync)."""
    keep = ids != ignore_index
    if bool(keep.all()):
        return None
    return keep.nonzero().squeeze(1)


def _tiles(plan: TilePlan, rows: int, vocab: int):
    """(v0, v1, [(k0, k1), ...]) in loop order: vocabulary chunks outer, token chunks inner."""
    token_chunks = [(k0, min(rows, k0 + plan.tokens)) for k0 in range(0, rows, plan.tokens)]
    for v0 in range(0, vocab, plan.vocab):
        yield v0, min(vocab, v0 + plan.vocab), token_chunks


def _logits_tile(buf, h_k, w_c, b_c):
    tile = buf[: h_k.shape[0] * w_c.shape[0]].view(h_k.shape[0], w_c.shape[0])
    torch.mm(h_k, w_c.t(), out=tile)
    if b_c is not None:
        tile.add_(b_c)
    return tile


# ---- forward custom op ------------------------------------------------------------------------
@torch.library.custom_op("mpo_fast::fused_linear_logprob", mutates_args=())
def _forward_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    with_entropy: bool,
    expected_weight: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N] or [0], lse [N], E_p[W] [N, H] or [0, H]); ids int64 contiguous.

    expected_weight: also accumulate E_p[W]_i = sum_j p_ij W_j (fp32), the only thing the hidden
    gradient of logp needs: d logp_i / d h_i = (W[id_i] - E_p[W]_i) / T. One more GEMM here saves
    the backward's logits recompute and its GEMM (2 GEMMs in all instead of 3) when the head is frozen.
    """
    n, vocab = hidden.shape[0], weight.shape[0]
    acc = acc_dtype(hidden.dtype)
    dev = hidden.device
    keep = _compact(ids, ignore_index)
    h = hidden if keep is None else hidden.index_select(0, keep)
    ids_c = ids if keep is None else ids.index_select(0, keep)
    rows = h.shape[0]
    m = torch.full((rows,), float("-inf"), dtype=acc, device=dev)
    s = torch.zeros(rows, dtype=acc, device=dev)
    t = torch.zeros(rows, dtype=acc, device=dev)
    zt = torch.full((rows,), float("nan"), dtype=acc, device=dev)  # stays NaN for an id outside [0, V)
    ew = torch.zeros((rows, weight.shape[1]), dtype=acc, device=dev) if expected_weight else None
    alpha = torch.empty(rows, dtype=acc, device=dev) if expected_weight else None
    if rows:
        fold, _ = _tile_kernels(backend, dev)
        plan = TilePlan.for_shape(rows, vocab, hidden.dtype, dev.type)
        buf = torch.empty(plan.tokens * plan.vocab, dtype=hidden.dtype, device=dev)
        inv_t = 1.0 / temperature
        for v0, v1, token_chunks in _tiles(plan, rows, vocab):
            w_c = weight[v0:v1]
            b_c = bias[v0:v1] if bias is not None else None
            for k0, k1 in token_chunks:
                tile = _logits_tile(buf, h[k0:k1], w_c, b_c)
                if ew is None:
                    fold(tile, ids_c[k0:k1], v0, inv_t, ignore_index, with_entropy,
                         m[k0:k1], s[k0:k1], t[k0:k1], zt[k0:k1])
                else:  # tile <- exp(z - running max); rows accumulated so far rescale by alpha
                    fold(tile, ids_c[k0:k1], v0, inv_t, ignore_index, with_entropy,
                         m[k0:k1], s[k0:k1], t[k0:k1], zt[k0:k1], alpha[k0:k1])
                    ew[k0:k1].mul_(alpha[k0:k1, None])
                    _addmm_acc_(ew[k0:k1], tile, w_c)
        del buf
    if ew is not None:
        ew.div_(s[:, None])
    log_s = s.log()
    lse_c = m + log_s
    logp_c = zt - lse_c
    ent_c = log_s - t / s
    if keep is None:
        logp, entropy, lse = logp_c, ent_c, lse_c
    else:
        logp = torch.zeros(n, dtype=acc, device=dev).index_copy_(0, keep, logp_c)
        entropy = torch.zeros(n, dtype=acc, device=dev).index_copy_(0, keep, ent_c)
        lse = torch.zeros(n, dtype=acc, device=dev).index_copy_(0, keep, lse_c)
        if ew is not None:
            ew = torch.zeros((n, ew.shape[1]), dtype=acc, device=dev).index_copy_(0, keep, ew)
    if ew is None:
        ew = torch.empty((0, weight.shape[1]), dtype=acc, device=dev)
    return logp, entropy if with_entropy else entropy.new_empty(0), lse, ew


@_forward_op.register_fake
def _(hidden, weight, ids, bias, temperature, ignore_index, with_entropy, expected_weight, backend):
    n = hidden.shape[0]
    acc = acc_dtype(hidden.dtype)
    return (
        hidden.new_empty((n,), dtype=acc),
        hidden.new_empty((n if with_entropy else 0,), dtype=acc),
        hidden.new_empty((n,), dtype=acc),
        hidden.new_empty((n if expected_weight else 0, weight.shape[1]), dtype=acc),
    )


# ---- backward custom op -----------------------------------------------------------------------
@torch.library.custom_op("mpo_fast::fused_linear_logprob_backward", mutates_args=())
def _backward_op(
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    bias: torch.Tensor | None,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    ignore_index: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_hidden, grad_weight, grad_bias); an ungrad input gets an empty [0] tensor (nothing computed)."""
    dev = hidden.device
    acc = lse.dtype
    vocab, width = weight.shape
    gh = torch.zeros(hidden.shape, dtype=hidden.dtype, device=dev) if need_hidden else hidden.new_empty(0)
    gw = torch.zeros(weight.shape, dtype=weight.dtype, device=dev) if need_weight else hidden.new_empty(0)
    gb = torch.zeros(bias.shape, dtype=bias.dtype, device=dev) if (need_bias and bias is not None) else hidden.new_empty(0)
    if grad_logp is None and grad_entropy is None:
        return gh, gw, gb
    keep = _compact(ids, ignore_index)

    def rows_of(x):
        return x if keep is None else x.index_select(0, keep)

    h = rows_of(hidden)
    ids_c = rows_of(ids)
    lse_c = rows_of(lse).contiguous()
    gl = rows_of(grad_logp).to(acc).contiguous() if grad_logp is not None else None
    ge = rows_of(grad_entropy).to(acc).contiguous() if grad_entropy is not None else None
    ent_c = rows_of(entropy).contiguous() if ge is not None else lse_c
    rows = h.shape[0]
    if rows == 0:
        return gh, gw, gb
    _, grad_ = _tile_kernels(backend, dev)
    plan = TilePlan.for_shape(rows, vocab, hidden.dtype, dev.type)
    one_token_chunk = plan.tokens >= rows
    gh_acc = torch.zeros((rows, width), dtype=acc, device=dev) if need_hidden else None
    gw_acc = (
        torch.empty((plan.vocab, width), dtype=acc, device=dev) if need_weight and not one_token_chunk else None
    )
    gb_acc = torch.zeros(vocab, dtype=acc, device=dev) if need_bias and bias is not None else None
    buf = torch.empty(plan.tokens * plan.vocab, dtype=hidden.dtype, device=dev)
    inv_t = 1.0 / temperature
    for v0, v1, token_chunks in _tiles(plan, rows, vocab):
        w_c = weight[v0:v1]
        b_c = bias[v0:v1] if bias is not None else None
        if gw_acc is not None:
            gw_acc.zero_()
        for k0, k1 in token_chunks:
            h_k = h[k0:k1]
            tile = _logits_tile(buf, h_k, w_c, b_c)
            grad_(tile, ids_c[k0:k1], v0, inv_t, ignore_index, lse_c[k0:k1], ent_c[k0:k1],
                  gl[k0:k1] if gl is not None else None, ge[k0:k1] if ge is not None else None)
            if gh_acc is not None:
                _addmm_acc_(gh_acc[k0:k1], tile, w_c)
            if need_weight:
                if one_token_chunk:  # the GEMM accumulates in fp32 internally and rounds once
                    torch.mm(tile.t(), h_k, out=gw[v0:v1])
                else:
                    _addmm_acc_(gw_acc[: v1 - v0], tile.t(), h_k)
            if gb_acc is not None:
                gb_acc[v0:v1] += tile.sum(dim=0, dtype=acc)
        if gw_acc is not None:
            gw[v0:v1].copy_(gw_acc[: v1 - v0])
    del buf
    if gh_acc is not None:
        if keep is None:
            gh.copy_(gh_acc)
        else:
            gh.index_copy_(0, keep, gh_acc.to(gh.dtype))
    if gb_acc is not None:
        gb.copy_(gb_acc)
    return gh, gw, gb


@_backward_op.register_fake
def _(grad_logp, grad_entropy, hidden, weight, ids, bias, lse, entropy, temperature, ignore_index,
      need_hidden, need_weight, need_bias, backend):
    return (
        torch.empty_like(hidden, memory_format=torch.contiguous_format) if need_hidden else hidden.new_empty(0),
        torch.empty_like(weight, memory_format=torch.contiguous_format) if need_weight else hidden.new_empty(0),
        torch.empty_like(bias) if (need_bias and bias is not None) else hidden.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    hidden, weight, ids, bias, temperature, ignore_index, with_entropy, expected_weight, backend = inputs
    _, entropy, lse, ew = output
    ctx.save_for_backward(hidden, weight, ids, bias, lse, entropy, ew)
    ctx.temperature, ctx.ignore_index, ctx.backend = temperature, ignore_index, backend
    ctx.mark_non_differentiable(lse, ew)
    ctx.set_materialize_grads(False)


def _hidden_grad_from_expected(grad_logp, hidden, weight, ids, ew, temperature, ignore_index):
    """d(sum g * logp) / d hidden = g (W[id] - E_p[W]) / T per row: a gather, no GEMM."""
    ignored = ids == ignore_index
    w_rows = weight.index_select(0, torch.where(ignored, 0, ids)).to(ew.dtype)
    scale = torch.where(ignored, 0.0, grad_logp.to(ew.dtype) / temperature)
    return ((w_rows - ew) * scale[:, None]).to(hidden.dtype)


def _backward(ctx, grad_logp, grad_entropy, _grad_lse, _grad_ew):
    hidden, weight, ids, bias, lse, entropy, ew = ctx.saved_tensors
    need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
    nothing = (None,) * 9
    if grad_logp is None and grad_entropy is None or not (need_h or need_w or need_b):
        return nothing
    if entropy.numel() == 0:
        grad_entropy = None
    if ew.shape[0]:  # the forward prepared E_p[W]: only the hidden gradient of logp is needed
        gh = _hidden_grad_from_expected(grad_logp, hidden, weight, ids, ew, ctx.temperature, ctx.ignore_index)
        return (gh,) + (None,) * 8
    gh, gw, gb = _backward_op(
        grad_logp, grad_entropy, hidden, weight, ids, bias, lse, entropy, ctx.temperature, ctx.ignore_index,
        bool(need_h), bool(need_w), bool(need_b and bias is not None), ctx.backend,
    )
    return (gh if need_h else None, gw if need_w else None, None, gb if need_b and bias is not None else None,
            None, None, None, None, None)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---- validation and the public function -------------------------------------------------------
def _validate(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, bias: torch.Tensor | None,
              ignore_index: int) -> None:
    for name, x in (("hidden", hidden), ("weight", weight)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} has dtype {x.dtype}, expected float32/bfloat16/float16/float64")
    if hidden.dim() != 2:
        raise ValueError(
            f"hidden has {hidden.dim()} dims (shape {tuple(hidden.shape)}), expected [tokens, hidden_size]; "
            "flatten batch and sequence first: hidden.reshape(-1, hidden.shape[-1])"
        )
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(
            f"weight has shape {tuple(weight.shape)}, expected [vocab, {hidden.shape[1]}] to match hidden "
            f"{tuple(hidden.shape)}; pass the LM head's weight as nn.Linear stores it (lm_head.weight, [vocab, hidden]), "
            "not its transpose"
        )
    if weight.shape[0] == 0:
        raise ValueError("weight has an empty vocabulary dimension (shape [0, H])")
    if weight.device != hidden.device:
        raise ValueError(f"weight is on {weight.device} but hidden on {hidden.device}; move them to one device")
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"hidden is {hidden.dtype} but weight is {weight.dtype}; cast one to the other "
            f"(hidden.to(weight.dtype)): the logits are computed in one dtype, as the model's LM head would"
        )
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or bias.shape != (weight.shape[0],):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise ValueError(f"bias has shape {shape}, expected [{weight.shape[0]}] (one per vocabulary entry)")
        if bias.dtype != weight.dtype or bias.device != weight.device:
            raise TypeError(
                f"bias is {bias.dtype} on {bias.device}, expected {weight.dtype} on {weight.device} like weight; "
                "use bias.to(weight)"
            )
    validate_ids(ids, hidden.shape[0], ignore_index, hidden.device, "hidden")


def fused_linear_logprob(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    backend: str = "auto",
    check_ids: bool = True,
    entropy_grad: bool = True,
) -> torch.Tensor | TokenLogProbs:
    """log softmax((hidden @ weight.T + bias) / temperature)[i, ids[i]] without the [N, V] logits.

    hidden: [N, H]; weight: [V, H] (the LM head as nn.Linear stores it); bias: [V] or None; all one
    float dtype and device. The logits tile is computed in that dtype (as the LM head would), the
    softmax in fp32. ids: [N] integer; ignore_index positions give 0 and cost no flops.
    Returns float32 logp [N] (float64 for float64 inputs), or TokenLogProbs(logp, entropy) when
    return_entropy. Differentiable w.r.t. hidden, weight and bias; an input with requires_grad=False
    (a frozen LM head under LoRA) gets no gradient and none is computed.
    Extra memory: one tile (TILE_BYTES) plus O(N) row statistics and, in the backward, fp32
    accumulators of grad_hidden [N, H] and of one weight chunk [vocab_chunk, H].
    entropy_grad False: the entropy is returned detached (a metric to log, not a loss term), so a
    frozen head keeps its 2-GEMM form (E_p[W] in the forward) with the entropy a by-product of the fold.
    """
    _validate(hidden, weight, ids, bias, ignore_index)
    temperature = check_temperature(temperature)
    if check_ids:
        check_id_range(ids, weight.shape[0], ignore_index)
    name = _backend.resolve("fused_linear_logprob", backend, hidden.device, SUPPORTED)
    ids64 = ids.to(torch.int64).contiguous()
    # A frozen head (LoRA) training through logp alone: E_p[W] in the forward, a GEMM-free backward.
    expected_weight = (
        torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
        and (bias is None or not bias.requires_grad) and not (return_entropy and entropy_grad)
    )
    logp, entropy, _, _ = _forward_op(
        hidden, weight, ids64, bias, temperature, int(ignore_index), bool(return_entropy), expected_weight, name
    )
    if not return_entropy:
        return logp
    return TokenLogProbs(logp, entropy if entropy_grad else entropy.detach())
