"""Bradley-Terry ratings on the Elo scale for every policy compared, with paired-bootstrap CIs.

P(i beats j) = p_i / (p_i + p_j); a tie counts half a win for each side (the usual treatment in
Chatbot Arena style leaderboards). Fitted by Hunter's MM algorithm (Ann. Statist. 2004), which
increases the likelihood every iteration, written for a batch of weightings so 1000 bootstrap
resamples are fitted at once. A prior of `prior_games` tied games between every pair keeps the
ratings finite when a policy wins every comparison (without it the MLE is at infinity); 1 game
against the hundreds a real evaluation has shifts ratings by a few points at most.

Elo scale: rating_i = 1000 + 400 log10(p_i), with the geometric mean of p fixed to 1, i.e. the
ratings average 1000. A 400-point gap means 10:1 odds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, resample_weights

ELO_BASE = 1000.0
ELO_SCALE = 400.0
_MAX_ITERATIONS = 2000
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Comparison:
    """One judged comparison at prompt `prompt` (index): score of `a` against `b` in {1, 0.5, 0}."""

    prompt: int
    a: str
    b: str
    score: float


def _tensors(comparisons: Sequence[Comparison], policies: list[str], n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(policies)}
    k = len(policies)
    wins = np.zeros((n_prompts, k, k))
    games = np.zeros((n_prompts, k, k))
    for c in comparisons:
        if not 0.0 <= c.score <= 1.0:
            raise ValueError(f"comparison score {c.score} is not in [0, 1]")
        i, j = index[c.a], index[c.b]
        if i == j:
            raise ValueError(f"policy {c.a!r} is compared with itself")
        wins[c.prompt, i, j] += c.score
        wins[c.prompt, j, i] += 1.0 - c.score
        games[c.prompt, i, j] += 1.0
        games[c.prompt, j, i] += 1.0
    return wins, games


def fit_bradley_terry(wins: np.ndarray, games: np.ndarray, *, prior_games: float = 1.0) -> np.ndarray:
    """Elo-scale ratings [B, K] from win matrices [B, K, K] (wins[b, i, j]: i's score against j)."""
    if wins.ndim == 2:
        wins, games = wins[None], games[None]
    k = wins.shape[-1]
    off = 1.0 - np.eye(k)
    w = wins + 0.5 * prior_games * off
    n = games + prior_games * off
    total = w.sum(-1)  # [B, K]
    p = np.ones(wins.shape[:2])
    for _ in range(_MAX_ITERATIONS):
        denom = (n / (p[:, :, None] + p[:, None, :])).sum(-1)
        new = total / denom
        new /= np.exp(np.log(new).mean(-1, keepdims=True))  # geometric mean 1
        done = np.max(np.abs(new - p)) < _TOLERANCE
        p = new
        if done:
            break
    return ELO_BASE + ELO_SCALE * np.log10(p)


@dataclass(frozen=True)
class Ratings:
    policies: list[str]
    elo: dict[str, Estimate]
    games: dict[str, int]

    def to_dict(self) -> dict:
        return {name: {**self.elo[name].to_dict(), "games": self.games[name]} for name in self.policies}


def rate(comparisons: Sequence[Comparison], n_prompts: int, *, policies: Sequence[str] | None = None,
         resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, prior_games: float = 1.0,
         level: float = 0.95) -> Ratings:
    """Ratings of every policy with percentile CIs from a bootstrap over prompts (a prompt's
    comparisons are resampled together)."""
    names = list(policies) if policies is not None else sorted({c.a for c in comparisons} | {c.b for c in comparisons})
    if len(names) < 2:
        raise ValueError(f"ratings need at least two policies, got {names}")
    wins, games = _tensors(comparisons, names, n_prompts)
    point = fit_bradley_terry(wins.sum(0)[None], games.sum(0)[None], prior_games=prior_games)[0]
    weights = resample_weights(n_prompts, resamples, seed)
    draws = fit_bradley_terry(np.einsum("bp,pij->bij", weights, wins), np.einsum("bp,pij->bij", weights, games),
                              prior_games=prior_games)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha], axis=0)
    played = games.sum((0, 2))
    return Ratings(
        policies=names,
        elo={name: Estimate(float(point[i]), float(low[i]), float(high[i]), level, resamples) for i, name in enumerate(names)},
        games={name: int(played[i]) for i, name in enumerate(names)},
    )
