"""expected_score: probability-weighted judge scores (G-Eval) read from next-token logits.

After a judge's rationale the score tag is prefilled (`...<score-3f9a1c>`) and one forward pass
gives the logits of the next token. This op gathers the K allowed score-token columns, takes the
softmax over that allowed set (fp32) and returns the probability-weighted value, the probability
mass the whole vocabulary put on the allowed set (low mass = the judge was not about to write a
score: treat as a failed judgement) and the gathered full-vocabulary log-probs (for multi-token
numbers, which mpo_fast/judges/expected.py completes with a second, tiny pass).

`expected_score_advantages` fuses it with group-relative advantages: one Triton program per
prompt group reads its members' logits once and writes scores, masks and advantages.

Layers: mpo_fast/reference/expected_score.py (oracle), kernels/expected_score.py (Triton). There
is no C++ CPU path: on CPU the torch reference already makes one vectorised logsumexp pass over
[B, V] and gathers K << V columns; a native loop would only save the [B, K] temporaries.
Scores are rewards, constants of the policy loss: no autograd formula is registered.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _backend, _native
from ..reference import advantages as ref_adv
from ..reference import expected_score as ref

SUPPORTED = ("reference", "triton")
# A score is a handful of choices (0-10 is 11); more than this is a bug in the caller, and the
# Triton kernel keeps the allowed set in registers.
MAX_CHOICES = 256


class ExpectedScores(NamedTuple):
    """Result of `expected_score`.

    expected: [B] probability-weighted value over the allowed tokens (NaN if a row has none).
    mass: [B] probability the full vocabulary puts on the allowed tokens, in [0, 1].
    logp: [B, K] full-vocabulary log-probs of the allowed tokens (-inf where token_ids is -1).
    fp32 (fp64 for fp64 logits).
    """

    expected: torch.Tensor
    mass: torch.Tensor
    logp: torch.Tensor


class ExpectedScoreAdvantages(NamedTuple):
    """Result of `expected_score_advantages`: scores, their masses, advantages, valid counts per group."""

    expected: torch.Tensor
    mass: torch.Tensor
    advantages: torch.Tensor
    group_valid_counts: torch.Tensor


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.library.custom_op("mpo_fast::expected_score", mutates_args=())
def _expected_score_op(
    logits: torch.Tensor, token_ids: torch.Tensor, values: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        e, m, lp = ref.expected_score(logits, token_ids, values)
        return e.clone(), m.clone(), lp.clone()
    if backend == "triton":
        from ..kernels import expected_score as tk

        with _native.on_device(logits.device):
            return tk.expected_score(logits, token_ids, values)
    raise ValueError(f"unknown backend {backend!r}")


@_expected_score_op.register_fake
def _(logits, token_ids, values, backend):
    acc = _acc_dtype(logits.dtype)
    rows = logits.shape[0]
    return (
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows, token_ids.shape[-1]), dtype=acc),
    )


@torch.library.custom_op("mpo_fast::expected_score_advantages", mutates_args=())
def _expected_score_advantages_op(
    logits: torch.Tensor, token_ids: torch.Tensor, values: torch.Tensor, group_size: int,
    scale: float, min_mass: float, mode: str, eps: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "reference":
        out = ref.expected_score_advantages(
            logits, token_ids, values, group_size, scale=scale, min_mass=min_mass, mode=mode, eps=eps
        )
        return tuple(t.clone() for t in out)
    if backend == "triton":
        from ..kernels import expected_score as tk

        with _native.on_device(logits.device):
            return tk.expected_score_advantages(logits, token_ids, values, group_size, scale, min_mass, mode, eps)
    raise ValueError(f"unknown backend {backend!r}")


@_expected_score_advantages_op.register_fake
def _(logits, token_ids, values, group_size, scale, min_mass, mode, eps, backend):
    acc = _acc_dtype(logits.dtype)
    rows = logits.shape[0]
    return (
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows,), dtype=acc),
        logits.new_empty((rows // group_size,), dtype=torch.int32),
    )


def _validate(logits, token_ids, values) -> None:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"logits has {logits.dim()} dims (shape {tuple(logits.shape)}), expected [rows, vocab]: take the "
            "score position first, e.g. out.logits[:, -1, :]"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits has dtype {logits.dtype}, expected a floating dtype")
    if logits.shape[1] == 0:
        raise ValueError("logits has an empty vocabulary dimension")
    for name, t in (("token_ids", token_ids), ("values", values)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
        if t.dim() not in (1, 2):
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [K] (shared) or [rows, K] (per row)")
        if t.dim() == 2 and t.shape[0] != logits.shape[0]:
            raise ValueError(f"{name} has {t.shape[0]} rows but logits has {logits.shape[0]}; give one row per logits row")
        if t.device != logits.device:
            raise ValueError(f"{name} is on {t.device} but logits on {logits.device}; move them to one device")
    if token_ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"token_ids has dtype {token_ids.dtype}, expected int32/int64 token ids (-1 for padding)")
    if not values.is_floating_point():
        raise TypeError(f"values has dtype {values.dtype}, expected float (the score each token stands for)")
    if token_ids.shape[-1] != values.shape[-1]:
        raise ValueError(
            f"token_ids has {token_ids.shape[-1]} choices per row but values has {values.shape[-1]}; "
            "give one value per allowed token"
        )
    k = token_ids.shape[-1]
    if not 1 <= k <= MAX_CHOICES:
        raise ValueError(f"{k} allowed score tokens; expected 1..{MAX_CHOICES} (one per possible score)")
    if token_ids.numel():
        lo, hi = int(token_ids.min()), int(token_ids.max())
        if lo < -1 or hi >= logits.shape[1]:
            raise ValueError(
                f"token_ids range [{lo}, {hi}] is outside [-1, vocab={logits.shape[1]}): ids must index the "
                "logits' vocabulary (-1 pads a row with fewer choices)"
            )


def _prepare(logits, token_ids, values):
    acc = _acc_dtype(logits.dtype)
    x = logits if logits.stride(-1) == 1 else logits.contiguous()  # rows may stride, the vocab may not
    return x, token_ids.contiguous().to(torch.int64), values.contiguous().to(acc)


def expected_score(
    logits: torch.Tensor, token_ids: torch.Tensor, values: torch.Tensor, *, backend: str = "auto"
) -> ExpectedScores:
    """Probability-weighted scores from logits [rows, vocab] at the score position.

    token_ids: [K] or [rows, K] allowed score tokens (-1 pads a row); values: the score of each.
    """
    _validate(logits, token_ids, values)
    name = _backend.resolve("expected_score", backend, logits.device, SUPPORTED)
    x, ids, vals = _prepare(logits, token_ids, values)
    return ExpectedScores(*_expected_score_op(x, ids, vals, name))


def expected_score_advantages(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    values: torch.Tensor,
    group_size: int,
    *,
    scale: float = 1.0,
    min_mass: float = 0.0,
    mode: str = "grpo",
    eps: float = 1e-6,
    backend: str = "auto",
) -> ExpectedScoreAdvantages:
    """Expected scores and group-relative advantages in one pass (rows prompt-major).

    reward = expected * scale; rows with mass < min_mass are failed judgements, masked out of
    their group (advantage 0) as in `group_advantages`.
    """
    _validate(logits, token_ids, values)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if logits.shape[0] % group_size:
        raise ValueError(
            f"logits has {logits.shape[0]} rows, not a multiple of group_size={group_size}; lay rows out prompt-major"
        )
    if mode not in ref_adv.MODES:
        raise ValueError(f"mode {mode!r} unknown; expected one of {ref_adv.MODES}")
    if not 0.0 <= float(min_mass) <= 1.0:
        raise ValueError(f"min_mass={min_mass!r} is a probability; expected a number in [0, 1]")
    name = _backend.resolve("expected_score_advantages", backend, logits.device, SUPPORTED)
    x, ids, vals = _prepare(logits, token_ids, values)
    out = _expected_score_advantages_op(x, ids, vals, group_size, float(scale), float(min_mass), mode, float(eps), name)
    return ExpectedScoreAdvantages(*out)
