"""What a judge is asked and what it answers: JudgeRequest, Judgement, and the judge's counters.

A failed judgement is a value (ok=False, reward=None, the reason in `error`), never a 0 score:
the trainer masks it out of the group statistics and the loss.
"""
from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..parsing import ScoreStatus
from ..rubrics import Rubric


class ScoringMode(str, enum.Enum):
    """How a score is obtained from the judge model (issue 8).

    parse: free text read by parse_scores; may fail (the 135M demo judge fails 8 of 8).
    constrained: decoding constrained to end in a valid score structure; cannot fail to parse.
    expected: rationale, then the score position prefilled; the score is the probability-weighted
        mean over the allowed score tokens (G-Eval). Continuous; fails only if the judge puts
        almost no probability on any allowed score (below `min_score_mass`).
    """

    PARSE = "parse"
    CONSTRAINED = "constrained"
    EXPECTED = "expected"


class CallMode(str, enum.Enum):
    """per_item: one judge call per rubric item (rationale then score, as the reference).
    all_items: one call scores every item (k times fewer calls)."""

    PER_ITEM = "per_item"
    ALL_ITEMS = "all_items"


@dataclass(frozen=True)
class JudgeRequest:
    """One response to judge: the prompt the policy saw, its response, the rubric, and an
    optional reference answer (math, summaries)."""

    prompt: str
    response: str
    rubric: Rubric
    reference: str | None = None

    def __post_init__(self) -> None:
        for name in ("prompt", "response"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"JudgeRequest.{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.rubric, Rubric):
            raise TypeError(f"JudgeRequest.rubric must be a Rubric, got {type(self.rubric).__name__}")
        if self.reference is not None and not isinstance(self.reference, str):
            raise TypeError(f"JudgeRequest.reference must be a str or None, got {type(self.reference).__name__}")


@dataclass(frozen=True)
class Judgement:
    """The judge's verdict on one request.

    item_scores: one per rubric item, None where that item failed.
    item_status: ScoreStatus per item (OK, MISSING, MALFORMED, ...).
    reward: rubric.aggregate(item_scores) (by default sum / rubric.max_total in [0, 1]; pitfall
        items can take it below 0), or None when any item failed, so rewards keep their scale
        when the rubric changes size.
    ok: reward is not None.
    mode: "<scoring>/<call mode>", e.g. "expected/all_items".
    calls: model calls spent (retries included); 0 for a cache hit.
    latency_s: wall time of the batch that produced it.
    rationale: the judge's text (per-item texts joined), for logs and the meta-judge.
    error: why it failed (None when ok).
    score_mass: per item, the probability the judge put on the allowed scores (expected mode).
    unresolved_mass: per item, probability that reached a number the server's top-k could not
        follow (chat-logprob expected mode); 0 where every path was observed.
    rubric_hash: content hash of the rubric that scored it.
    cached: served from the judgement cache.
    """

    item_scores: tuple[float | None, ...]
    item_status: tuple[ScoreStatus, ...]
    reward: float | None
    ok: bool
    mode: str
    calls: int
    latency_s: float
    rationale: str = ""
    error: str | None = None
    score_mass: tuple[float | None, ...] | None = None
    rubric_hash: str = ""
    cached: bool = False
    unresolved_mass: tuple[float | None, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "item_scores": list(self.item_scores),
            "item_status": [int(s) for s in self.item_status],
            "reward": self.reward,
            "ok": self.ok,
            "mode": self.mode,
            "calls": self.calls,
            "latency_s": self.latency_s,
            "rationale": self.rationale,
            "error": self.error,
            "score_mass": None if self.score_mass is None else list(self.score_mass),
            "unresolved_mass": None if self.unresolved_mass is None else list(self.unresolved_mass),
            "rubric_hash": self.rubric_hash,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, cached: bool = False) -> "Judgement":
        mass = data.get("score_mass")
        unresolved = data.get("unresolved_mass")
        return cls(
            item_scores=tuple(None if v is None else float(v) for v in data["item_scores"]),
            item_status=tuple(ScoreStatus(int(s)) for s in data["item_status"]),
            reward=None if data["reward"] is None else float(data["reward"]),
            ok=bool(data["ok"]),
            mode=str(data["mode"]),
            calls=0 if cached else int(data["calls"]),
            latency_s=0.0 if cached else float(data["latency_s"]),
            rationale=str(data.get("rationale", "")),
            error=data.get("error"),
            score_mass=None if mass is None else tuple(None if m is None else float(m) for m in mass),
            rubric_hash=str(data.get("rubric_hash", "")),
            cached=cached,
            unresolved_mass=None if unresolved is None else tuple(None if m is None else float(m) for m in unresolved),
        )


def failure_cause(j: Judgement) -> str:
    """The kind of a failed judgement's error ("http", "parse", "low_score_mass", ...)."""
    return (j.error or "failed").split(":", 1)[0]


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"min": None, "p10": None, "p50": None, "max": None}
    v = sorted(values)
    return {"min": v[0], "p10": v[int(0.1 * (len(v) - 1))], "p50": v[int(0.5 * (len(v) - 1))], "max": v[-1]}


def judgement_metrics(judgements: Sequence[Judgement]) -> dict[str, Any]:
    """Per-batch judge metrics for a run's metrics.jsonl: failures by cause, and the distribution
    of score mass (expected mode: how sure the judge was it was writing a score) and of
    unresolved mass (chat logprobs) over the items of fresh judgements."""
    fresh = [j for j in judgements if not j.cached]
    causes: dict[str, int] = {}
    for j in judgements:
        if not j.ok:
            cause = failure_cause(j)
            if cause == "http":  # "http:timeout: ...": the transport kind is the useful cause
                cause = ":".join((j.error or "").split(":", 2)[:2])
            causes[cause] = causes.get(cause, 0) + 1
    mass = [m for j in fresh for m in (j.score_mass or ()) if m is not None and math.isfinite(m)]
    unresolved = [u for j in fresh for u in (j.unresolved_mass or ()) if u is not None and math.isfinite(u)]
    out: dict[str, Any] = {"judge_errors": causes}
    if mass:
        out.update({f"judge_score_mass_{k}": v for k, v in _quantiles(mass).items()})
    if unresolved:
        out["judge_unresolved_mass_max"] = max(unresolved)
    return out


@dataclass
class JudgeStats:
    """Running counters of a judge; the trainer logs `snapshot()` and stops the run when
    `failure_rate` passes its threshold."""

    judgements: int = 0
    failed: int = 0
    cache_hits: int = 0
    calls: int = 0
    item_status: dict[str, int] = field(default_factory=lambda: {s.name: 0 for s in ScoreStatus})
    errors: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    # Score mass per item of fresh expected-mode judgements, the last 10,000 (a long run stays bounded).
    score_mass: deque = field(default_factory=lambda: deque(maxlen=10_000))

    @property
    def failure_rate(self) -> float:
        return self.failed / self.judgements if self.judgements else 0.0

    def record(self, judgements: list[Judgement], seconds: float) -> None:
        self.seconds += seconds
        for j in judgements:
            self.judgements += 1
            self.calls += j.calls
            self.cache_hits += int(j.cached)
            if not j.ok:
                self.failed += 1
                kind = failure_cause(j)
                self.errors[kind] = self.errors.get(kind, 0) + 1
            if not j.cached and j.score_mass is not None:
                self.score_mass.extend(m for m in j.score_mass if m is not None and math.isfinite(m))
            for status in j.item_status:
                self.item_status[status.name] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "judgements": self.judgements,
            "failed": self.failed,
            "failure_rate": self.failure_rate,
            "cache_hits": self.cache_hits,
            "calls": self.calls,
            "item_status": dict(self.item_status),
            "errors": dict(self.errors),
            "judgements_per_s": self.judgements / self.seconds if self.seconds > 0 else 0.0,
            "score_mass": _quantiles(self.score_mass),
        }
