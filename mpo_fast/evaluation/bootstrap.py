"""Paired bootstrap over prompts: the confidence interval of any statistic of per-prompt results.

"Paired" means one resample draws prompts, and everything measured on a drawn prompt (both
policies' answers, both judge orders) comes along together: the interval then reflects the
prompt-to-prompt variation that a different test set would bring, which dominates in practice.

A resample is a vector of counts over prompts (multinomial, n draws), so every statistic here is
written as a weighted statistic `f(weights[B, P]) -> [B]` and all resamples are computed at once
with numpy: 1000 resamples of a 500-prompt win rate take a few milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_RESAMPLES = 1000  # >= 1000 so the 2.5 % / 97.5 % percentiles rest on >= 25 draws each
DEFAULT_SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval (nan where undefined)."""

    value: float
    low: float
    high: float
    level: float = 0.95
    resamples: int = DEFAULT_RESAMPLES

    def to_dict(self) -> dict[str, float]:
        return {"value": _json(self.value), "low": _json(self.low), "high": _json(self.high),
                "level": self.level, "resamples": self.resamples}

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        if not np.isfinite(self.value):
            return "-"
        return f"{self.value * scale:.{digits}f} [{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"


def _json(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def resample_weights(n_prompts: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, n_prompts] counts: how often each prompt was drawn in each resample."""
    if n_prompts < 1:
        raise ValueError("the bootstrap needs at least one prompt")
    if resamples < 1:
        raise ValueError(f"resamples is {resamples}; use >= 1000 for a 95 % interval")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_prompts, np.full(n_prompts, 1.0 / n_prompts), size=resamples).astype(np.float64)


def bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_prompts: int,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = 0.95,
) -> Estimate:
    """`statistic(weights[B, P]) -> [B]`; the point estimate uses weight 1 on every prompt.

    Resamples where the statistic is undefined (nan, e.g. no valid pair drawn) are dropped from the
    percentiles; if more than half are undefined the interval is nan.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level is {level}; pass e.g. 0.95")
    point = float(statistic(np.ones((1, n_prompts)))[0])
    draws = np.asarray(statistic(resample_weights(n_prompts, resamples, seed)), dtype=np.float64)
    finite = draws[np.isfinite(draws)]
    if finite.size * 2 < resamples:
        return Estimate(point, float("nan"), float("nan"), level, resamples)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return Estimate(point, float(low), float(high), level, resamples)


def weighted_mean(values: np.ndarray, valid: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The statistic "mean of per-prompt values over valid prompts" for `bootstrap`."""
    values = np.asarray(values, dtype=np.float64)
    mask = np.ones_like(values, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    v = np.where(mask, values, 0.0)
    m = mask.astype(np.float64)

    def stat(weights: np.ndarray) -> np.ndarray:
        total = weights @ m
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, (weights @ v) / np.where(total > 0, total, 1.0), np.nan)

    return stat


def mean_with_ci(values, valid=None, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), resamples=resamples)
    return bootstrap(weighted_mean(values, valid), values.size, resamples=resamples, seed=seed)
