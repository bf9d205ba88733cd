"""fused_linear_policy_loss: the clipped policy loss straight from hidden states and the LM head.

The trainer's loss is policy_loss(logp(hidden @ W.T), ...). fused_linear_logprob never builds the
[N, V] logits but, not knowing the loss, must recompute them in the backward: 4 GEMMs of 2NHV flops.
Here the loss is known inside the op, and d loss / d logp_i is elementwise in logp_i (ratio, clip,
KL) times a weight that depends on the mask alone (the aggregation). So, as Liger's fused linear
losses do, the gradients are formed in the forward, one token chunk at a time:

  for each chunk of valid tokens k (full vocabulary, [n_k, V] tile: TILE_BYTES, MIN_TOKENS at least):
      tile = h_k @ W^T                          GEMM 1   (the LM head's dtype)
      fold(tile) -> lse, logp_k                  backend tile kernel (C++ / Triton / CUDA / torch)
      g_k = d loss / d logp_k                    elementwise (below), times the aggregation weight
      tile <- g_k (onehot - softmax) / T         backend tile kernel, in place
      grad_h[k] = tile @ W                      GEMM 2
      grad_W   += tile^T @ h_k                  GEMM 3   ([V, H] fp32 accumulator)
  loss, metrics = policy_loss(logp, ...)        on [B, T] log-probs (the policy_loss op, no grad)

3 GEMMs in all; the backward only scales the saved gradients by the incoming scalar gradient.
old_logp=None is the on-policy single pass (ratio against the op's own logp, as TRL's detach).
token_stats=True also returns the per-token logp and entropy (the fold keeps sum_j e_j (z_j - m):
one multiply-add per logit, no extra pass) for the trainer to log without a second forward.
Memory: one [n_k, V] tile, grad_h [N, H] and grad_W [V, H] (fp32 for 16-bit weights; Liger keeps the
same [V, H] accumulator). Padding (mask == 0) is dropped before the GEMMs.

Backends: `reference` = mpo_fast/reference/fused_linear_policy_loss.py (materialised logits,
autograd); `cpu`, `triton`, `cuda`, `torch` = this chunked loop with that backend's tile kernels
(`torch`: plain torch tiles, any device). For a frozen LM head (LoRA) keep policy_loss over
fused_linear_logprob: its 2-GEMM form (E_p[W] in the forward) is cheaper than grad_W's GEMM here.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend
from ..reference import fused_linear_policy_loss as ref
from ..reference.policy_loss import AGGREGATIONS, KL_ESTIMATORS, METRICS
from .fused_linear_logprob import _addmm_acc_, _tile_kernels
from .policy_loss import LossVariant, PolicyLossOutput, policy_loss
from .selective_log_softmax import acc_dtype, check_temperature

SUPPORTED = ("reference", "cpu", "triton", "cuda")


class FusedPolicyLossOutput(NamedTuple):
    """`fused_linear_policy_loss(..., token_stats=True)`: the loss and metrics as `policy_loss` gives
    them, plus the per-token log-probs and entropies [B, T] (float32, 0 where mask == 0, no gradient)
    that the fold computed on the way: what a trainer logs without a second forward."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    logp: torch.Tensor
    entropy: torch.Tensor


def loss_grad_per_token(lp, old, adv, w, ref_logp, v: LossVariant) -> torch.Tensor:
    """d (sum_t w_t * per_token_loss_t) / d logp_t, elementwise (mpo_fast/reference/policy_loss.py's math)."""
    r = torch.exp(lp - old)
    clipped = ((r < 1 - v.clip_low) & (adv < 0)) | ((r > 1 + v.clip_high) & (adv > 0))
    g = torch.where(clipped, torch.zeros_like(r), -r * adv)
    if ref_logp is not None and v.kl_coef != 0:
        dk = lp - ref_logp
        if v.kl_estimator == "k1":
            dkl = torch.ones_like(dk)
        elif v.kl_estimator == "k2":
            dkl = dk
        else:  # k3 = exp(-dk) + dk - 1
            dkl = -torch.expm1(-dk)
        g = g + v.kl_coef * dkl
    return w * g


def aggregation_weights(w: torch.Tensor, v: LossVariant, steps: int) -> torch.Tensor:
    """[B] factor of each row's token gradients: d loss / d (sum_t w_t l_t of row b)."""
    acc = w.dtype
    row_n = w.sum(dim=1)
    if v.aggregation == "token_mean":
        return torch.full_like(row_n, 1.0) / row_n.sum().clamp(min=1)
    if v.aggregation == "seq_mean_token_mean":
        nonempty = row_n > 0
        return torch.where(nonempty, 1.0 / row_n.clamp(min=1), torch.zeros_like(row_n)) / nonempty.sum().clamp(
            min=1).to(acc)
    return torch.full_like(row_n, 1.0 / (w.shape[0] * (steps if v.max_tokens is None else v.max_tokens)))


# Bytes of the [n_k, V] logits tile, and the fewest tokens a chunk takes whatever V is. GEMM 3
# (grad_W += tile^T @ h_k) has n_k as its inner dimension and reads and writes the whole [V, H] fp32
# accumulator once per chunk (113 MB at SmolLM2's V=49152, H=576), so small chunks make it
# memory-bound. Measured on CPU (N=512, H=576, V=49152, fp32, 1 thread, loaded 2-core machine):
# 42 tokens a chunk (fused_linear_logprob's 8 MB tile) 3.3 s fwd+bwd, 170 (32 MB) 2.2 s, against
# 3.0 s for fused_linear_logprob + policy_loss. GPU: 256 MB = 883 tokens at V=151936 in bf16.
TILE_BYTES = {"cuda": 256 << 20, "cpu": 32 << 20}
MIN_TOKENS = {"cuda": 64, "cpu": 128}


def _tokens_per_tile(vocab: int, dtype: torch.dtype, device_type: str) -> int:
    kind = "cuda" if device_type == "cuda" else "cpu"
    fit = TILE_BYTES[kind] // (vocab * torch.tensor([], dtype=dtype).element_size())
    return max(1, MIN_TOKENS[kind], fit)


def _chunked_grads(hidden, weight, ids, old_logp, advantages, mask, ref_logp, inv_t, v, backend, need_w,
                   with_entropy=False):
    """(logp [B, T] acc dtype, grad_hidden [B, T, H] fp32/fp64, grad_weight [V, H] fp32/fp64 or None,
    entropy [B, T] acc dtype or None).

    old_logp None: the ratio is against this forward's own log-probs (on-policy, one pass: ratio 1).
    with_entropy: the fold also keeps sum_j e_j (z_j - m) per row (one multiply-add per logit, no extra
    pass over the tile), giving entropy = log s - t / s for free next to the GEMMs."""
    batch, steps, h = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    acc = acc_dtype(hidden.dtype)
    valid = (mask != 0).reshape(-1)
    w_full = torch.where(mask != 0, mask.to(acc), torch.zeros((), dtype=acc, device=dev))
    row_scale = aggregation_weights(w_full, v, steps)
    keep = valid.nonzero().squeeze(1)  # one host sync: padding costs no flops
    rows = keep.numel()
    flat = lambda x: x.reshape(batch * steps)  # noqa: E731
    adv = advantages[:, None].expand(batch, steps) if advantages.dim() == 1 else advantages
    h_c = hidden.reshape(batch * steps, h).index_select(0, keep)
    ids_c = flat(ids).index_select(0, keep).to(torch.int64)
    old_c = flat(old_logp).index_select(0, keep).to(acc) if old_logp is not None else None
    adv_c = flat(adv).index_select(0, keep).to(acc)
    w_c = flat(w_full).index_select(0, keep)
    scale_c = (row_scale[:, None].expand(batch, steps)).reshape(-1).index_select(0, keep)
    ref_c = flat(ref_logp).index_select(0, keep).to(acc) if ref_logp is not None else None
    logp_c = torch.zeros(rows, dtype=acc, device=dev)
    ent_c = torch.zeros(rows, dtype=acc, device=dev) if with_entropy else None
    grad_h_c = torch.zeros((rows, h), dtype=acc, device=dev)
    grad_w = torch.zeros((vocab, h), dtype=acc, device=dev) if need_w else None
    fold, grad_ = _tile_kernels(backend, dev)
    step = _tokens_per_tile(vocab, hidden.dtype, dev.type)
    no_ignore = -1  # ids are in [0, V) here: padding was dropped above
    for k0 in range(0, rows, step):
        k1 = min(rows, k0 + step)
        n = k1 - k0
        tile = torch.mm(h_c[k0:k1], weight.t())  # GEMM 1: [n, V] in the head's dtype
        m = torch.full((n,), float("-inf"), dtype=acc, device=dev)
        s = torch.zeros(n, dtype=acc, device=dev)
        t = torch.zeros(n, dtype=acc, device=dev)
        zt = torch.full((n,), float("nan"), dtype=acc, device=dev)
        fold(tile, ids_c[k0:k1], 0, inv_t, no_ignore, with_entropy, m, s, t, zt)
        log_s = s.log()
        lse = m + log_s
        lp = zt - lse
        logp_c[k0:k1] = lp
        if ent_c is not None:
            ent_c[k0:k1] = log_s - t / s
        old_k = old_c[k0:k1] if old_c is not None else lp
        g = loss_grad_per_token(lp, old_k, adv_c[k0:k1], w_c[k0:k1],
                                ref_c[k0:k1] if ref_c is not None else None, v) * scale_c[k0:k1]
        grad_(tile, ids_c[k0:k1], 0, inv_t, no_ignore, lse, torch.zeros_like(lse), g, None)  # tile <- dL/dlogits
        _addmm_acc_(grad_h_c[k0:k1], tile, weight)  # GEMM 2
        if need_w:
            _addmm_acc_(grad_w, tile.t(), h_c[k0:k1])  # GEMM 3
    logp = torch.zeros(batch * steps, dtype=acc, device=dev).index_copy_(0, keep, logp_c).view(batch, steps)
    grad_h = torch.zeros((batch * steps, h), dtype=acc, device=dev).index_copy_(0, keep, grad_h_c)
    entropy = None
    if ent_c is not None:
        entropy = torch.zeros(batch * steps, dtype=acc, device=dev).index_copy_(0, keep, ent_c).view(batch, steps)
    return logp, grad_h.view(batch, steps, h), grad_w, entropy


class _FusedLinearPolicyLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, ids, old_logp, advantages, mask, ref_logp, inv_t, v, backend, need_w,
                with_entropy):
        logp, grad_h, grad_w, entropy = _chunked_grads(hidden, weight, ids, old_logp, advantages, mask, ref_logp,
                                                       inv_t, v, backend, need_w, with_entropy)
        with torch.no_grad():
            old = logp if old_logp is None else old_logp
            out = policy_loss(logp, old, advantages, mask, ref_logp=ref_logp, clip_low=v.clip_low,
                              clip_high=v.clip_high, kl_coef=v.kl_coef, kl_estimator=v.kl_estimator,
                              aggregation=v.aggregation, max_tokens=v.max_tokens,
                              backend="reference" if backend == "reference" else "auto")
        ctx.save_for_backward(grad_h, grad_w if grad_w is not None else grad_h.new_empty(0))
        ctx.need_w = need_w
        ctx.dtypes = (hidden.dtype, weight.dtype)
        metrics = [out.metrics[k] for k in METRICS]
        entropy = entropy if entropy is not None else logp.new_empty(0)
        ctx.mark_non_differentiable(*metrics, logp, entropy)
        return (out.loss, *metrics, logp, entropy)

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_loss).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_loss).to(ctx.dtypes[1]) if ctx.need_w and ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None, None, None, None, None, None


def _validate(hidden, weight, ids, old_logp, advantages, mask, ref_logp, kl_coef) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, H] (the model's last hidden states), got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    batch, steps, h = hidden.shape
    if not hidden.is_floating_point() or weight.dtype != hidden.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share one float dtype")
    if weight.dim() != 2 or weight.shape[1] != h:
        raise ValueError(f"weight has shape {tuple(weight.shape)}, expected [V, {h}] (nn.Linear's [out, in])")
    optional = tuple((name, t) for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)) if t is not None)
    for name, t in (("ids", ids), ("mask", mask)) + optional:
        if tuple(t.shape) != (batch, steps):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [B, T] = {(batch, steps)} like hidden")
    if tuple(advantages.shape) not in ((batch,), (batch, steps)):
        raise ValueError(f"advantages has shape {tuple(advantages.shape)}, expected [B] or [B, T]")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ids has dtype {ids.dtype}, expected int32/int64 token ids")
    for name, t in (("weight", weight), ("ids", ids), ("advantages", advantages), ("mask", mask)) + optional:
        if t.device != hidden.device:
            raise ValueError(f"{name} is on {t.device} but hidden on {hidden.device}; move them to one device")
    if kl_coef != 0 and ref_logp is None:
        raise ValueError("kl_coef != 0 needs ref_logp (the reference policy's log-probs)")
    vocab = weight.shape[0]
    bad = (mask != 0) & ((ids < 0) | (ids >= vocab))
    if bool(bad.any()):
        raise ValueError(f"ids out of range [0, {vocab}) at valid (mask != 0) positions {bad.nonzero()[:5].tolist()}")


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    ids: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    ref_logp: torch.Tensor | None = None,
    temperature: float = 1.0,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    aggregation: str = "token_mean",
    max_tokens: int | None = None,
    backend: str = "auto",
    token_stats: bool = False,
) -> PolicyLossOutput | FusedPolicyLossOutput:
    """policy_loss(logp of ids under softmax(hidden @ weight.T / temperature), ...) without the logits.

    hidden [B, T, H] and weight [V, H] in one float dtype; ids, old_logp, mask, ref_logp [B, T];
    advantages [B] or [B, T]. old_logp None: the ratio is taken against this forward's own log-probs
    (detached; an on-policy single pass, ratio 1). Same loss, aggregation and metrics as `policy_loss`. Gradients reach
    hidden and weight (weight's only if it requires grad); they are computed during the forward.
    backend: "auto", "reference" (materialised oracle), "cpu" / "triton" / "cuda" (chunked, that
    backend's softmax tile kernels), "torch" (chunked, plain torch tiles).
    token_stats: return FusedPolicyLossOutput with the per-token logp and entropy [B, T] (no gradient).
    """
    v = LossVariant(clip_low, clip_high, kl_coef, kl_estimator, aggregation, max_tokens)
    if kl_estimator not in KL_ESTIMATORS or aggregation not in AGGREGATIONS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS} and aggregation one of {AGGREGATIONS}")
    temperature = check_temperature(temperature)
    _validate(hidden, weight, ids, old_logp, advantages, mask, ref_logp, kl_coef)
    if backend == "torch":
        name = "torch"
    else:
        name = _backend.resolve("fused_linear_policy_loss", backend, hidden.device, SUPPORTED)
    if name == "reference":
        loss, metrics, logp, entropy = ref.fused_linear_policy_loss(
            hidden, weight, ids, old_logp, advantages, mask, ref_logp=ref_logp, temperature=temperature,
            clip_low=clip_low, clip_high=clip_high, kl_coef=kl_coef, kl_estimator=kl_estimator,
            aggregation=aggregation, max_tokens=max_tokens)
        if token_stats:
            return FusedPolicyLossOutput(loss, metrics, logp.detach(), entropy.detach())
        return PolicyLossOutput(loss, metrics)
    tile_backend = "reference" if name == "torch" else name
    outs = _FusedLinearPolicyLoss.apply(
        hidden, weight, ids, old_logp.detach() if old_logp is not None else None, advantages.detach(), mask.detach(),
        ref_logp.detach() if ref_logp is not None else None, 1.0 / temperature, v, tile_backend,
        weight.requires_grad, token_stats)
    metrics = dict(zip(METRICS, outs[1:1 + len(METRICS)]))
    if token_stats:
        return FusedPolicyLossOutput(outs[0], metrics, outs[-2], outs[-1])
    return PolicyLossOutput(outs[0], metrics)
