"""policy_loss: the clipped policy-gradient loss with KL penalty, fused forward and backward.

Layers: mpo_fast/reference/policy_loss.py (oracle, the exact math), csrc/cpu/policy_loss.cpp (C++),
kernels/policy_loss.py (Triton). There is no CUDA C++ path: the op is elementwise math plus row
reductions, which Triton already runs at memory speed.

Fused means: the forward reads every input once and produces the loss, all metrics and
d loss_token / d logp (times the mask weight) in the same pass; it saves that `coef` [B, T] plus one
weight per row and one global scale, so the backward is a single elementwise pass
grad = coef * row_w[b] * grad_loss * glob. No host sync anywhere (metrics stay on the device).

Against TRL (GRPOTrainer._compute_loss) and verl (core_algos.compute_policy_loss_vanilla, agg_loss):
- per-token surrogate -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A): as both. verl's default dual
  clip (clip_ratio_c = 3 for A < 0) and TRL's `delta` cap are not included.
- k3 to the reference is TRL's per_token_kl; verl clamps its low_var_kl to [-10, 10], we do not clamp.
- token_mean = TRL "bnpo"/"dapo" (with one global token count) = verl "token-mean".
- seq_mean_token_mean averages over rows with at least one valid token; TRL "grpo" averages over
  all rows (an all-padding row pulls the loss toward 0), verl gives NaN for such a row.
- seq_mean_token_sum = TRL "dr_grpo": sum / (B * max_tokens). verl's "seq-mean-token-sum-norm"
  divides by T only (no 1/B), a constant factor B apart.
- clip_fraction = TRL "clip_ratio/region_mean" = verl pg_clipfrac. approx_kl is k3 between old and
  new policy; verl's ppo_kl is the k1 mean (old - new), TRL's PPO approxkl is the k2 mean.
- A float mask acts as per-token weights, as (loss * mask).sum() / mask.sum() does in TRL.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import policy_loss as ref

KL_ESTIMATORS = ref.KL_ESTIMATORS
AGGREGATIONS = ref.AGGREGATIONS
METRICS = ref.METRICS
SUPPORTED = ("reference", "cpu", "triton")
# Keep in sync with csrc/cpu/policy_loss.cpp (KlKind, Aggregation) and kernels/policy_loss.py.
_KL_IDS = {None: 0, "k1": 1, "k2": 2, "k3": 3}
_AGG_IDS = {a: i for i, a in enumerate(AGGREGATIONS)}
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class PolicyLossOutput(NamedTuple):
    """Result of `policy_loss`.

    loss: 0-dim, float32 (float64 for float64 logp), differentiable w.r.t. logp only.
    metrics: 0-dim tensors on logp's device, no gradient: clip_fraction, approx_kl, kl, ratio_mean,
        ratio_min, ratio_max (NaN when no token is valid), tokens (sum of mask weights).
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]


@dataclass(frozen=True)
class LossVariant:
    """The variant parameters of the loss, validated once."""

    clip_low: float = 0.2
    clip_high: float = 0.2
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    aggregation: str = "token_mean"
    max_tokens: int | None = None

    def __post_init__(self):
        for name in ("clip_low", "clip_high", "kl_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0 <= self.clip_low < 1:
            raise ValueError(
                f"clip_low={self.clip_low} must be in [0, 1): the ratio is clipped below at 1 - clip_low, "
                "which must stay positive (typical: 0.2)"
            )
        if self.clip_high < 0:
            raise ValueError(f"clip_high={self.clip_high} must be >= 0 (typical: 0.2; DAPO's clip-higher uses 0.28)")
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator {self.kl_estimator!r} unknown; expected one of {KL_ESTIMATORS}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation {self.aggregation!r} unknown; expected one of {AGGREGATIONS}")
        mt = self.max_tokens
        if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 1):
            raise ValueError(
                f"max_tokens must be a positive int (the fixed length seq_mean_token_sum divides by, e.g. "
                f"max_completion_length) or None for T, got {mt!r}"
            )


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_arg(t: torch.Tensor | None) -> tuple[int, int, int, int]:
    """(data_ptr, dtype code, stride_b, stride_t) for the C++ side; [B] tensors broadcast over t."""
    if t is None:
        return (0, 0, 0, 0)
    st = 0 if t.dim() == 1 else t.stride(1)
    return (t.data_ptr(), _native.dtype_code(t.dtype), t.stride(0), st)


@torch.library.custom_op("mpo_fast::policy_loss", mutates_args=())
def _policy_loss_op(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    ref_logp: torch.Tensor | None,
    clip_low: float,
    clip_high: float,
    kl_coef: float,
    kl_estimator: str,
    aggregation: str,
    max_tokens: int,
    need_grad: bool,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, metrics[7], coef [B, T] or [0], row_w [B], glob): see the module doc."""
    kl = kl_estimator if ref_logp is not None else None
    if backend == "triton":
        from ..kernels import policy_loss as tk

        with _native.on_device(logp.device):
            return tk.policy_loss_forward(
                logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, kl_coef, kl, aggregation, max_tokens,
                need_grad,
            )
    if backend != "cpu":
        raise ValueError(f"mpo_fast::policy_loss has no {backend!r} kernel (the reference runs outside the op)")
    batch, steps = logp.shape
    acc = _acc_dtype(logp.dtype)
    loss = logp.new_empty((), dtype=acc)
    metrics = logp.new_empty((len(METRICS),), dtype=acc)
    coef = logp.new_empty((batch, steps) if need_grad else (0,), dtype=acc)
    row_w = logp.new_empty((batch,), dtype=acc)
    glob = logp.new_empty((), dtype=acc)
    _native.cpu_ext.policy_loss_forward(
        _rows_arg(logp), _rows_arg(old_logp), _rows_arg(advantages), _rows_arg(mask), _rows_arg(ref_logp),
        batch, steps, clip_low, clip_high, kl_coef, _KL_IDS[kl], _AGG_IDS[aggregation], max_tokens,
        _native.dtype_code(acc), loss.data_ptr(), metrics.data_ptr(), coef.data_ptr() if need_grad else 0,
        row_w.data_ptr(), glob.data_ptr(),
    )
    return loss, metrics, coef, row_w, glob


@_policy_loss_op.register_fake
def _(logp, old_logp, advantages, mask, ref_logp, clip_low, clip_high, kl_coef, kl_estimator, aggregation,
      max_tokens, need_grad, backend):
    batch, steps = logp.shape
    acc = _acc_dtype(logp.dtype)
    return (
        logp.new_empty((), dtype=acc),
        logp.new_empty((len(METRICS),), dtype=acc),
        logp.new_empty((batch, steps) if need_grad else (0,), dtype=acc),
        logp.new_empty((batch,), dtype=acc),
        logp.new_empty((), dtype=acc),
    )


@torch.library.custom_op("mpo_fast::policy_loss_backward", mutates_args=())
def _policy_loss_backward_op(
    grad_loss: torch.Tensor, coef: torch.Tensor, row_w: torch.Tensor, glob: torch.Tensor, grad_dtype: torch.dtype,
    backend: str,
) -> torch.Tensor:
    """d loss / d logp = coef * row_w[:, None] * grad_loss * glob, in grad_dtype."""
    if backend == "triton":
        from ..kernels import policy_loss as tk

        with _native.on_device(coef.device):
            return tk.policy_loss_backward(grad_loss, coef, row_w, glob, grad_dtype)
    if backend != "cpu":
        raise ValueError(f"mpo_fast::policy_loss_backward has no {backend!r} kernel")
    batch, steps = coef.shape
    out = coef.new_empty((batch, steps), dtype=grad_dtype)
    g = grad_loss.to(coef.dtype).contiguous()
    _native.cpu_ext.policy_loss_backward(
        g.data_ptr(), coef.data_ptr(), row_w.data_ptr(), glob.data_ptr(), _native.dtype_code(coef.dtype),
        batch, steps, out.data_ptr(), _native.dtype_code(grad_dtype),
    )
    return out


@_policy_loss_backward_op.register_fake
def _(grad_loss, coef, row_w, glob, grad_dtype, backend):
    return coef.new_empty(coef.shape, dtype=grad_dtype)


def _setup_context(ctx, inputs, output):
    _, _, coef, row_w, glob = output
    ctx.save_for_backward(coef, row_w, glob)
    ctx.grad_dtype = inputs[0].dtype
    ctx.shape = tuple(inputs[0].shape)
    ctx.need_grad = inputs[11]
    ctx.backend = inputs[12]


def _backward(ctx, grad_loss, *unused_grads):
    coef, row_w, glob = ctx.saved_tensors
    if not ctx.need_grad:
        raise RuntimeError(
            "mpo_fast.policy_loss ran its forward without saving the gradient (logp did not require grad, "
            "or grad mode was off); call it with grad enabled on a logp that requires grad"
        )
    grad = _policy_loss_backward_op(grad_loss, coef, row_w, glob, ctx.grad_dtype, ctx.backend)
    return (grad,) + (None,) * 12


_policy_loss_op.register_autograd(_backward, setup_context=_setup_context)


def _check_float(name: str, t, shape: tuple[int, ...] | None, logp: torch.Tensor | None, fix_shape: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if t.dtype not in _FLOATS:
        raise TypeError(
            f"{name} has dtype {t.dtype}, expected float32, bfloat16, float16 or float64; convert with {name}.float()"
        )
    if shape is not None and tuple(t.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {shape}; {fix_shape}")
    if logp is not None and t.device != logp.device:
        raise ValueError(f"{name} is on {t.device} but logp on {logp.device}; move it with {name}.to(logp.device)")


def _validate(logp, old_logp, advantages, mask, ref_logp) -> None:
    _check_float("logp", logp, None, None, "")
    if logp.dim() != 2:
        raise ValueError(
            f"logp has {logp.dim()} dims (shape {tuple(logp.shape)}), expected [batch, tokens]: one row of "
            "per-token log-probs per sequence; reshape flat log-probs with logp.view(batch, -1)"
        )
    batch, steps = logp.shape
    if batch == 0 or steps == 0:
        raise ValueError(f"logp is empty (shape {tuple(logp.shape)}); policy_loss needs at least one sequence and one token")
    like = "it must match logp (one entry per sequence and token)"
    _check_float("old_logp", old_logp, (batch, steps), logp, like)
    if ref_logp is not None:
        _check_float("ref_logp", ref_logp, (batch, steps), logp, like)
    _check_float("advantages", advantages, None, logp, "")
    if tuple(advantages.shape) not in ((batch,), (batch, steps)):
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected ({batch},) (one per sequence) or "
            f"({batch}, {steps}) (one per token) for logp of shape ({batch}, {steps})"
        )
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor, got {type(mask).__name__}; wrap it with torch.as_tensor")
    if mask.dtype != torch.bool and mask.dtype not in _FLOATS:
        raise TypeError(f"mask has dtype {mask.dtype}, expected bool or a float 0/1 (weight) tensor; convert with mask.bool()")
    if tuple(mask.shape) != (batch, steps):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({batch}, {steps}) like logp (True = a real token)")
    if mask.device != logp.device:
        raise ValueError(f"mask is on {mask.device} but logp on {logp.device}; move it with mask.to(logp.device)")


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
    backend: str = "auto",
) -> PolicyLossOutput:
    """Clipped policy-gradient loss + kl_coef * KL(pi || pi_ref), with its metrics, in one fused pass.

    logp [B, T]: the policy's per-token log-probs (the only input that receives a gradient).
    old_logp [B, T]: the behaviour policy's; advantages [B] (per sequence) or [B, T]; mask [B, T]
        bool or float weights; ref_logp [B, T] for the KL term (required when kl_coef != 0).
        These are constants of the loss (detached). Padding positions may hold anything.
    clip_low / clip_high: the ratio is clipped to [1 - clip_low, 1 + clip_high] (asymmetric: DAPO).
    kl_estimator: "k1" d, "k2" d^2 / 2, "k3" exp(-d) + d - 1 with d = logp - ref_logp.
    aggregation: "token_mean", "seq_mean_token_mean" (GRPO) or "seq_mean_token_sum" (Dr. GRPO: each
        row's sum divided by max_tokens, default T, averaged over rows); max_tokens is used only there.
    Inputs may have any strides (e.g. logp[:, :-1]) and mixed float dtypes; math is float32 (float64
    for float64 logp). The gradient has logp's dtype.
    """
    variant = LossVariant(clip_low, clip_high, kl_coef, kl_estimator, aggregation, max_tokens)
    _validate(logp, old_logp, advantages, mask, ref_logp)
    if kl_coef != 0 and ref_logp is None:
        raise ValueError(
            f"kl_coef={kl_coef} needs ref_logp (the reference policy's per-token log-probs); pass it or set kl_coef=0"
        )
    name = _backend.resolve("policy_loss", backend, logp.device, SUPPORTED)
    old = old_logp.detach()
    adv = advantages.detach()
    m = mask.detach()
    rl = ref_logp.detach() if ref_logp is not None else None
    if name == "reference":
        loss, metrics = ref.policy_loss(
            logp, old, adv, m, ref_logp=rl, clip_low=variant.clip_low, clip_high=variant.clip_high,
            kl_coef=variant.kl_coef, kl_estimator=variant.kl_estimator, aggregation=variant.aggregation,
            max_tokens=variant.max_tokens,
        )
        return PolicyLossOutput(loss, metrics)
    need_grad = torch.is_grad_enabled() and logp.requires_grad
    loss, vec, _, _, _ = _policy_loss_op(
        logp, old, adv, m, rl, float(variant.clip_low), float(variant.clip_high), float(variant.kl_coef),
        variant.kl_estimator, variant.aggregation, variant.max_tokens or logp.shape[1], need_grad, name,
    )
    vec = vec.detach()
    return PolicyLossOutput(loss, {key: vec[i] for i, key in enumerate(METRICS)})
