"""Ratings of every policy across several evaluation results (the MPO paper's table: MPO, the
fixed-rubric run and the base policy, each pair compared on the same prompts).

Comparisons are pooled by prompt id, so the bootstrap resamples a prompt with all its
comparisons in every file: the intervals stay paired across files."""
from __future__ import annotations

from typing import Any, Sequence

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED
from .ratings import Comparison, Ratings, rate

_SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def ratings_from_results(results: Sequence[dict[str, Any]], *, resamples: int = DEFAULT_RESAMPLES,
                         seed: int = DEFAULT_SEED) -> Ratings | None:
    """Bradley-Terry over every judged pair in `results` (eval JSON dicts); None without pairs."""
    comparisons, prompt_index = [], {}
    for result in results:
        a, b = result["policies"]["a"]["id"], result["policies"]["b"]["id"]
        for record in result.get("records") or []:
            score = _SCORES.get(record.get("outcome"))
            if score is None:  # a judge failure: not a comparison
                continue
            index = prompt_index.setdefault(record["prompt_id"], len(prompt_index))
            comparisons.append(Comparison(index, a, b, score))
    policies = sorted({c.a for c in comparisons} | {c.b for c in comparisons})
    if len(policies) < 2:
        return None
    return rate(comparisons, len(prompt_index), policies=policies, resamples=resamples, seed=seed)
