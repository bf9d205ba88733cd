"""selective_log_softmax: log p(id) at every position (and optionally the entropy) from logits.

The memory problem it solves: `logits.float().log_softmax(-1).gather(...)` materialises a second
[N, V] tensor in fp32 (16k tokens x 151,936 vocab = 10 GB), and its backward a third. Here the
forward reads the logits once and writes three floats per row (logp, entropy, logsumexp); the
backward recomputes p = exp(z - lse) on the fly and writes the gradient directly.

Layers: mpo_fast/reference/logprobs.py (oracle), csrc/cpu/selective_log_softmax.cpp (C++),
kernels/selective_log_softmax.py (Triton), csrc/cuda/selective_log_softmax.cu (CUDA). This module
validates at the boundary, resolves the backend and exposes the custom ops
`mpo_fast::selective_log_softmax` and `mpo_fast::selective_log_softmax_backward` (with fake
implementations, so both trace under torch.compile), joined by register_autograd.

The entropy is differentiable too (an entropy bonus in the loss): its gradient is
-p_j (log p_j + entropy) / T, computed in the same pass as the log-prob's.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import logprobs as ref

SUPPORTED = ("reference", "cpu", "triton", "cuda")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class TokenLogProbs(NamedTuple):
    """Per-token log-probabilities and entropies, float32 [N] (float64 for float64 inputs).

    Both are 0 at positions whose id is ignore_index; both are differentiable.
    """

    logp: torch.Tensor
    entropy: torch.Tensor


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def rows_view(x: torch.Tensor) -> torch.Tensor:
    """x itself when its rows are unit-stride and do not overlap (any row stride >= V), else a contiguous copy."""
    rows_ok = x.shape[0] == 0 or x.stride(0) >= x.shape[1]  # an expanded (stride-0) tensor repeats one row
    return x if (x.stride(1) == 1 or x.shape[1] == 1) and rows_ok else x.contiguous()


# ---- forward custom op ------------------------------------------------------------------------
@torch.library.custom_op("mpo_fast::selective_log_softmax", mutates_args=())
def _forward_op(
    logits: torch.Tensor, ids: torch.Tensor, temperature: float, ignore_index: int, with_entropy: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp [N], entropy [N] or [0] when not requested, lse [N]); ids int64 contiguous."""
    n, v = logits.shape
    if backend == "reference":
        logp, entropy = ref.selective_log_softmax(logits, ids, temperature, ignore_index)
        lse = ref.logsumexp_rows(logits, ids, temperature, ignore_index)
        return logp, entropy if with_entropy else entropy.new_empty(0), lse
    x = rows_view(logits)
    if backend == "triton":
        from ..kernels import selective_log_softmax as tk

        with _native.on_device(x.device):
            return tk.forward(x, ids, 1.0 / temperature, ignore_index, with_entropy)
    acc = acc_dtype(logits.dtype)
    logp = torch.empty(n, dtype=acc, device=logits.device)
    lse = torch.empty(n, dtype=acc, device=logits.device)
    entropy = torch.empty(n if with_entropy else 0, dtype=acc, device=logits.device)
    if n == 0:
        return logp, entropy, lse
    args = (
        x.data_ptr(), _native.dtype_code(x.dtype), n, v, x.stride(0), ids.data_ptr(), ignore_index,
        1.0 / temperature, with_entropy, logp.data_ptr(), entropy.data_ptr() if with_entropy else 0, lse.data_ptr(),
    )
    if backend == "cpu":
        _native.cpu_ext.selective_log_softmax_forward(*args)
    elif backend == "cuda":
        _native.cuda_launches(logits.device).selective_log_softmax_forward(*args)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return logp, entropy, lse


@_forward_op.register_fake
def _(logits, ids, temperature, ignore_index, with_entropy, backend):
    n = logits.shape[0]
    acc = acc_dtype(logits.dtype)
    return (
        logits.new_empty((n,), dtype=acc),
        logits.new_empty((n if with_entropy else 0,), dtype=acc),
        logits.new_empty((n,), dtype=acc),
    )


# ---- backward custom op -----------------------------------------------------------------------
@torch.library.custom_op("mpo_fast::selective_log_softmax_backward", mutates_args=())
def _backward_op(
    grad_logp: torch.Tensor | None,
    grad_entropy: torch.Tensor | None,
    logits: torch.Tensor,
    ids: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor,
    temperature: float,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    """d(sum grad_logp * logp + grad_entropy * entropy) / d logits, contiguous, in the logits' dtype."""
    if backend == "reference":
        return ref.selective_log_softmax_backward(
            grad_logp, grad_entropy, logits, ids, lse, entropy, temperature, ignore_index
        ).contiguous()
    if grad_logp is None and grad_entropy is None:
        return torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
    acc = lse.dtype
    gl = grad_logp.to(acc).contiguous() if grad_logp is not None else None
    ge = grad_entropy.to(acc).contiguous() if grad_entropy is not None else None
    x = rows_view(logits)
    if backend == "triton":
        from ..kernels import selective_log_softmax as tk

        with _native.on_device(x.device):
            return tk.backward(x, ids, lse, entropy if ge is not None else None, gl, ge, 1.0 / temperature,
                               ignore_index)
    n, v = x.shape
    grad = torch.empty((n, v), dtype=x.dtype, device=x.device)
    if n == 0:
        return grad
    args = (
        x.data_ptr(), _native.dtype_code(x.dtype), n, v, x.stride(0), 0, ids.data_ptr(), ignore_index,
        1.0 / temperature, lse.data_ptr(), entropy.data_ptr() if ge is not None else 0,
        gl.data_ptr() if gl is not None else 0, ge.data_ptr() if ge is not None else 0, grad.data_ptr(), v,
    )
    if backend == "cpu":
        _native.cpu_ext.selective_log_softmax_backward(*args)
    elif backend == "cuda":
        _native.cuda_launches(x.device).selective_log_softmax_backward(*args)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return grad


@_backward_op.register_fake
def _(grad_logp, grad_entropy, logits, ids, lse, entropy, temperature, ignore_index, backend):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    logits, ids, temperature, ignore_index, with_entropy, backend = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, ids, lse, entropy)
    ctx.temperature, ctx.ignore_index, ctx.backend = temperature, ignore_index, backend
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)  # an unused output (often the entropy, logged only) costs nothing


def _backward(ctx, grad_logp, grad_entropy, _grad_lse):
    logits, ids, lse, entropy = ctx.saved_tensors
    if not ctx.needs_input_grad[0] or (grad_logp is None and grad_entropy is None):
        return None, None, None, None, None, None
    if entropy.numel() == 0:
        grad_entropy = None  # entropy was not computed, so nothing downstream can depend on it
    grad = _backward_op(grad_logp, grad_entropy, logits, ids, lse, entropy, ctx.temperature, ctx.ignore_index, ctx.backend)
    return grad, None, None, None, None, None


_forward_op.register_autograd(_backward, setup_context=_setup_context)


# ---- validation and the public function -------------------------------------------------------
def validate_ids(ids: torch.Tensor, rows: int, ignore_index: int, device: torch.device, rows_of: str) -> None:
    """Shape, dtype and device of `ids` and the type of ignore_index; `check_id_range` checks values."""
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"ids must be a torch.Tensor of token ids, got {type(ids).__name__}; wrap it with torch.as_tensor")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids has dtype {ids.dtype}, expected an integer dtype (int64 or int32); convert with ids.long()")
    if ids.dim() != 1 or ids.shape[0] != rows:
        raise ValueError(
            f"ids has shape {tuple(ids.shape)}, expected [{rows}] (one id per row of {rows_of}); "
            "flatten batch and sequence first (ids.reshape(-1)) and shift labels to line up with the logits"
        )
    if ids.device != device:
        raise ValueError(f"ids is on {ids.device} but {rows_of} is on {device}; move ids with ids.to({rows_of}.device)")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")


def check_id_range(ids: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Every id is in [0, vocab) or equal to ignore_index (one reduction and a host sync)."""
    bad = ((ids < 0) | (ids >= vocab)) & (ids != ignore_index)
    if bool(bad.any()):
        where = bad.nonzero().flatten()[:8]
        values = ids[where].tolist()
        more = "..." if int(bad.sum()) > 8 else ""
        raise ValueError(
            f"ids out of range [0, {vocab}) at positions {where.tolist()}{more} (values {values}); "
            f"padding must use ignore_index={ignore_index}, and the ids must come from the model's own tokenizer "
            "(a vocabulary larger than the LM head means a tokenizer/model mismatch)"
        )


def check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not (t > 0 and t < float("inf")):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    return t


def _validate(logits: torch.Tensor, ids: torch.Tensor, ignore_index: int) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits has {logits.dim()} dims (shape {tuple(logits.shape)}), expected [tokens, vocab]; "
            "flatten batch and sequence first: logits.reshape(-1, logits.shape[-1])"
        )
    if logits.dtype not in FLOAT_DTYPES:
        raise TypeError(f"logits has dtype {logits.dtype}, expected one of float32/bfloat16/float16/float64; use logits.float()")
    if logits.shape[1] == 0:
        raise ValueError("logits has an empty vocabulary dimension (shape [N, 0]); nothing to normalise over")
    validate_ids(ids, logits.shape[0], ignore_index, logits.device, "logits")


def selective_log_softmax(
    logits: torch.Tensor,
    ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    ignore_index: int = -100,
    return_entropy: bool = False,
    backend: str = "auto",
    check_ids: bool = True,
) -> torch.Tensor | TokenLogProbs:
    """log softmax(logits / temperature)[i, ids[i]] for every row i, without an [N, V] temporary.

    logits: [N, V] float32/bfloat16/float16/float64, any row stride (a column slice of a wider
        buffer is read in place). Math in fp32 whatever the dtype.
    ids: [N] integer; positions equal to ignore_index give 0 (and gradient 0) and their logits are
        never read.
    Returns float32 logp [N] (float64 for float64 logits), or TokenLogProbs(logp, entropy) when
    return_entropy. Differentiable w.r.t. logits (through logp and entropy). A row with a NaN or
    +inf logit gives NaN in that row only; -inf logits are zero-probability entries.
    check_ids: verify ids lie in [0, V) (one host sync); the kernels never read out of
        bounds either way (an unchecked bad id gives NaN).
    """
    _validate(logits, ids, ignore_index)
    temperature = check_temperature(temperature)
    if check_ids:
        check_id_range(ids, logits.shape[1], ignore_index)
    name = _backend.resolve("selective_log_softmax", backend, logits.device, SUPPORTED)
    ids64 = ids.to(torch.int64).contiguous()
    logp, entropy, _ = _forward_op(logits, ids64, temperature, int(ignore_index), bool(return_entropy), name)
    return TokenLogProbs(logp, entropy) if return_entropy else logp
