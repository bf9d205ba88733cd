"""ROUGE-1/2/L F-measures of summaries against references, through Google's `rouge-score` package
(the implementation the summarisation literature reports), with bootstrap CIs over prompts."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .bootstrap import DEFAULT_RESAMPLES, DEFAULT_SEED, Estimate, mean_with_ci

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError("ROUGE needs the rouge-score package: pip install rouge-score") from exc
    # Porter stemming, as in the rouge-score README and most summarisation papers.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge_per_example(predictions: Sequence[str], references: Sequence[str | None]) -> dict[str, np.ndarray]:
    """{rouge type: F-measure per example}; nan where the example has no reference."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references; pass one each")
    scorer = _scorer()
    out = {t: np.full(len(predictions), np.nan) for t in ROUGE_TYPES}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if ref is None:
            continue
        scores = scorer.score(ref, pred)  # (target, prediction) order
        for t in ROUGE_TYPES:
            out[t][i] = scores[t].fmeasure
    return out


def rouge_summary(predictions: Sequence[str], references: Sequence[str | None], *, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED) -> dict[str, Estimate]:
    per = rouge_per_example(predictions, references)
    return {t: mean_with_ci(np.nan_to_num(v), np.isfinite(v), resamples=resamples, seed=seed) for t, v in per.items()}
