"""Length-controlled win rate, as AlpacaEval 2.0 LC does it (Dubois et al. 2024, arXiv 2404.04475).

Fit the judge's preference for A over B by logistic regression on the length difference,

    P(A preferred) = sigmoid(theta + phi * tanh((len_A - len_B) / sd(len_A - len_B)))

and report sigmoid(theta) : the win rate the judge would give if both answers had the same length.
AlpacaEval's third term (per-instruction difficulty) needs many models per prompt; with two
policies it is not identifiable and is left out. Ties enter as the target 0.5 (a fractional label
of the same cross-entropy), failures are dropped.

The fit is Newton's method on 2 parameters, written for a batch of weightings at once so the
bootstrap refits 1000 resamples in one call. A ridge of 1e-3 keeps it finite when one side wins
everything (separable data): theta then sits near +-7, i.e. an LC win rate of ~99.9 %.
"""
from __future__ import annotations

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, bootstrap

_RIDGE = 1e-3
_ITERATIONS = 50


def length_feature(length_a: np.ndarray, length_b: np.ndarray) -> np.ndarray:
    diff = np.asarray(length_a, dtype=np.float64) - np.asarray(length_b, dtype=np.float64)
    sd = diff.std()
    return np.tanh(diff / sd) if sd > 0 else np.zeros_like(diff)


def fit_length_logistic(y: np.ndarray, x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[B, 2] (theta, phi) of the weighted logistic regression y ~ theta + phi * x, per row of weights [B, P]."""
    y = np.asarray(y, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    w = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    params = np.zeros((w.shape[0], 2))
    for _ in range(_ITERATIONS):
        mu = 1.0 / (1.0 + np.exp(-(params[:, :1] + params[:, 1:] * x[None, :])))
        r = w * (y[None, :] - mu)
        g0 = r.sum(1) - _RIDGE * params[:, 0]
        g1 = (r * x).sum(1) - _RIDGE * params[:, 1]
        s = w * mu * (1.0 - mu)
        h00 = s.sum(1) + _RIDGE
        h01 = (s * x).sum(1)
        h11 = (s * x * x).sum(1) + _RIDGE
        det = h00 * h11 - h01 * h01
        step0 = (h11 * g0 - h01 * g1) / det
        step1 = (h00 * g1 - h01 * g0) / det
        params[:, 0] += step0
        params[:, 1] += step1
        if np.max(np.abs(step0)) < 1e-10 and np.max(np.abs(step1)) < 1e-10:
            break
    return params


def lc_win_rate(scores, valid, length_a, length_b, *, resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED) -> tuple[Estimate, float]:
    """(length-controlled win rate of A with its bootstrap CI, the fitted length coefficient phi).

    scores: per-prompt 1 / 0.5 / 0 for A; valid: False where the judge failed.
    """
    scores = np.asarray(scores, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    x = length_feature(np.asarray(length_a)[valid], np.asarray(length_b)[valid]) if valid.any() else np.zeros(0)
    x_all = np.zeros(scores.shape)
    x_all[valid] = x
    mask = valid.astype(np.float64)

    def stat(weights: np.ndarray) -> np.ndarray:
        w = weights * mask[None, :]
        theta = fit_length_logistic(scores, x_all, w)[:, 0]
        return np.where(w.sum(1) > 0, 1.0 / (1.0 + np.exp(-theta)), np.nan)

    phi = float(fit_length_logistic(scores, x_all, mask[None, :])[0, 1]) if valid.any() else float("nan")
    return bootstrap(stat, scores.size, resamples=resamples, seed=seed), phi
