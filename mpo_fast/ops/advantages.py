"""group_advantages: GRPO-family group-relative advantages with masks for failed judgements.

Layers: mpo_fast/reference/advantages.py (oracle), csrc/cpu/group_advantages.cpp (C++),
kernels/group_advantages.py (Triton), csrc/cuda/group_advantages.cu (CUDA). This module validates
at the boundary, resolves the backend, and exposes the custom op `mpo_fast::group_advantages`
(with a fake implementation, so it traces under torch.compile).

Advantages are constants of the policy loss (no gradient flows into rewards), so the op registers
no autograd formula.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import advantages as ref

MODES = ref.MODES
_MODE_IDS = {m: i for i, m in enumerate(MODES)}  # csrc/include/mpo_fast/advantages_math.h
SUPPORTED = ("reference", "cpu", "triton", "cuda")


class GroupAdvantages(NamedTuple):
    """Result of `group_advantages`.

    advantages: [num_prompts * group_size], float32 (float64 for float64 rewards); 0 for masked
        members and for groups with fewer than 2 valid members.
    group_valid_counts: int32 [num_prompts], valid members per group.
    masked_members: 0-dim int64 tensor, members excluded because their judgement failed.
    degenerate_groups: 0-dim int64 tensor, groups with fewer than 2 valid members (all zeros).
    The counts stay on the rewards' device (no host sync); call int() on them to log.
    """

    advantages: torch.Tensor
    group_valid_counts: torch.Tensor
    masked_members: torch.Tensor
    degenerate_groups: torch.Tensor


def _out_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("mpo_fast::group_advantages", mutates_args=())
def _group_advantages_op(
    rewards: torch.Tensor, valid: torch.Tensor | None, group_size: int, mode: str, eps: float, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "reference":
        adv, counts = ref.group_advantages(rewards, group_size, mode, eps, valid)
        return adv.clone(), counts.clone()
    if backend == "triton":
        from ..kernels import group_advantages as tk

        with _native.on_device(rewards.device):
            return tk.group_advantages(rewards, valid, group_size, mode, eps)
    num_groups = rewards.numel() // group_size
    out = torch.empty(rewards.numel(), dtype=_out_dtype(rewards.dtype), device=rewards.device)
    counts = torch.empty(num_groups, dtype=torch.int32, device=rewards.device)
    valid_ptr = valid.data_ptr() if valid is not None else 0
    if backend == "cpu":
        _native.cpu_ext.group_advantages(
            rewards.data_ptr(), _native.dtype_code(rewards.dtype), valid_ptr, out.data_ptr(),
            _native.dtype_code(out.dtype), counts.data_ptr(), num_groups, group_size, _MODE_IDS[mode], eps,
        )
    elif backend == "cuda":
        _native.cuda_launches(rewards.device).group_advantages(
            rewards.data_ptr(), _native.dtype_code(rewards.dtype), valid_ptr, out.data_ptr(), counts.data_ptr(),
            num_groups, group_size, _MODE_IDS[mode], eps,
        )
    else:
        raise ValueError(f"unknown backend {backend!r}")
    return out, counts


@_group_advantages_op.register_fake
def _(rewards, valid, group_size, mode, eps, backend):
    out = rewards.new_empty(rewards.shape, dtype=_out_dtype(rewards.dtype))
    counts = rewards.new_empty((rewards.shape[0] // group_size,), dtype=torch.int32)
    return out, counts


def _validate(rewards: torch.Tensor, group_size: int, mode: str, valid: torch.Tensor | None, check_finite: bool):
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}; wrap it with torch.as_tensor")
    if rewards.dim() != 1:
        raise ValueError(
            f"rewards has {rewards.dim()} dims (shape {tuple(rewards.shape)}), expected 1-D [num_prompts * group_size]; "
            "flatten it with rewards.reshape(-1)"
        )
    if not rewards.is_floating_point():
        raise TypeError(f"rewards has dtype {rewards.dtype}, expected a floating dtype; convert with rewards.float()")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if rewards.numel() % group_size:
        raise ValueError(
            f"rewards has {rewards.numel()} elements, not a multiple of group_size={group_size}; "
            "every prompt needs exactly group_size responses (pad with masked members via `valid`)"
        )
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} unknown; expected one of {MODES}")
    if valid is not None:
        if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool:
            raise TypeError("valid must be a bool tensor (True = judgement succeeded); convert with valid.bool()")
        if valid.shape != rewards.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)}, expected {tuple(rewards.shape)} like rewards")
        if valid.device != rewards.device:
            raise ValueError(f"valid is on {valid.device} but rewards on {rewards.device}; move them to one device")
    if check_finite:
        bad = ~torch.isfinite(rewards)
        if valid is not None:
            bad &= valid
        if bool(bad.any()):
            idx = bad.nonzero().flatten()[:10].tolist()
            raise ValueError(
                f"rewards are not finite at indices {idx}{'...' if int(bad.sum()) > 10 else ''}; mark failed "
                "judgements with valid=False instead of NaN/inf rewards (or pass check_finite=False)"
            )


def group_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    mode: str = "grpo",
    eps: float = 1e-6,
    valid: torch.Tensor | None = None,
    backend: str = "auto",
    check_finite: bool = True,
) -> GroupAdvantages:
    """Group-relative advantages for rewards laid out prompt-major: [num_prompts * group_size].

    mode: "grpo" (r - mean) / (std + eps), "dr_grpo" r - mean, "rloo" leave-one-out baseline.
    valid: bool mask; False members (failed judgements) are excluded from the statistics and get 0.
    check_finite: raise on NaN/inf rewards of valid members (one device sync); pass False in a
        fully on-device pipeline that already guarantees finiteness.
    """
    _validate(rewards, group_size, mode, valid, check_finite)
    name = _backend.resolve("group_advantages", backend, rewards.device, SUPPORTED)
    r = rewards.contiguous()
    v = valid.contiguous() if valid is not None else None
    adv, counts = _group_advantages_op(r, v, group_size, mode, float(eps), name)
    masked = (rewards.numel() - counts.sum()).to(torch.int64) if v is not None else counts.new_zeros((), dtype=torch.int64)
    degenerate = (counts < 2).sum()
    return GroupAdvantages(adv, counts, masked, degenerate)
