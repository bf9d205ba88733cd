"""gae: generalised advantage estimation for the PPO path, a reverse scan per sequence.

Layers: mpo_fast/reference/gae.py (oracle: the plain reverse loop, with the padding semantics),
csrc/cpu/gae.cpp (C++, OpenMP over sequences), kernels/gae.py (Triton: affine-map associative scan),
csrc/cuda/gae.cu (CUDA: one warp per sequence). The reverse scan is where plain torch is weakest:
the usual loop (TRL's PPO trainer, verl) launches a few kernels per time step, ~4 x T launches.

Advantages and returns are targets, constants of the losses that use them: the inputs are detached
and no autograd formula is registered. No whitening (TRL and verl whiten the advantages over the
mask afterwards); padding positions get advantage 0 and return 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import gae as ref

SUPPORTED = ("reference", "cpu", "triton", "cuda")
_FLOATS = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class GAEOutput(NamedTuple):
    """Result of `gae`: advantages and returns [B, T], float32 (float64 for float64 rewards), 0 at padding."""

    advantages: torch.Tensor
    returns: torch.Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows_arg(t: torch.Tensor) -> tuple[int, int, int, int]:
    return (t.data_ptr(), _native.dtype_code(t.dtype), t.stride(0), t.stride(1))


@torch.library.custom_op("mpo_fast::gae", mutates_args=())
def _gae_op(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        adv, ret = ref.gae(rewards, values, mask, gamma, lam)
        return adv.clone(), ret.clone()
    if backend == "triton":
        from ..kernels import gae as tk

        with _native.on_device(rewards.device):
            return tk.gae(rewards, values, mask, gamma, lam)
    batch, steps = rewards.shape
    acc = _acc_dtype(rewards.dtype)
    adv = rewards.new_empty((batch, steps), dtype=acc)
    ret = rewards.new_empty((batch, steps), dtype=acc)
    args = (_rows_arg(rewards), _rows_arg(values), _rows_arg(mask), batch, steps, gamma, lam, _native.dtype_code(acc),
            adv.data_ptr(), ret.data_ptr())
    if backend == "cpu":
        _native.cpu_ext.gae(*args)
    elif backend == "cuda":
        _native.cuda_launches(rewards.device).gae(*args)
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return adv, ret


@_gae_op.register_fake
def _(rewards, values, mask, gamma, lam, backend):
    acc = _acc_dtype(rewards.dtype)
    return rewards.new_empty(rewards.shape, dtype=acc), rewards.new_empty(rewards.shape, dtype=acc)


def _validate(rewards, values, mask, gamma, lam) -> None:
    for name, t in (("rewards", rewards), ("values", values), ("mask", mask)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards has {rewards.dim()} dims (shape {tuple(rewards.shape)}), expected [batch, steps]: per-token "
            "rewards, e.g. the score on each sequence's last valid token and 0 (or a KL penalty) elsewhere"
        )
    for name, t in (("rewards", rewards), ("values", values)):
        if t.dtype not in _FLOATS:
            raise TypeError(f"{name} has dtype {t.dtype}, expected float32, bfloat16, float16 or float64; convert with {name}.float()")
    if mask.dtype != torch.bool and mask.dtype not in _FLOATS:
        raise TypeError(f"mask has dtype {mask.dtype}, expected bool or a float 0/1 tensor; convert with mask.bool()")
    for name, t in (("values", values), ("mask", mask)):
        if t.shape != rewards.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}, expected {tuple(rewards.shape)} like rewards "
                "(one entry per sequence and step; a value head's output with a trailing 1 needs .squeeze(-1))"
            )
        if t.device != rewards.device:
            raise ValueError(f"{name} is on {t.device} but rewards on {rewards.device}; move it with {name}.to(rewards.device)")
    for name, x in (("gamma", gamma), ("lam", lam)):
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or not 0 <= x <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {x!r} (typical: gamma=1.0, lam=0.95)")


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    *,
    gamma: float = 1.0,
    lam: float = 0.95,
    backend: str = "auto",
) -> GAEOutput:
    """Generalised advantage estimation over [B, T] per-token rewards and value estimates.

    mask [B, T] (bool or float, nonzero = a real token): padding positions are skipped by the scan
    (the next valid value bootstraps across them; after the last valid token the value is 0) and get
    advantage 0 and return 0; they may hold anything, NaN included. Inputs may have any strides and
    mixed float dtypes. Returns GAEOutput(advantages, returns), unpackable as a tuple.
    """
    _validate(rewards, values, mask, gamma, lam)
    name = _backend.resolve("gae", backend, rewards.device, SUPPORTED)
    adv, ret = _gae_op(rewards.detach(), values.detach(), mask.detach(), float(gamma), float(lam), name)
    return GAEOutput(adv, ret)
