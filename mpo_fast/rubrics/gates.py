"""Rubric quality gates, the pure part: which items a proposal keeps, conservation, spread.

A schema-valid proposal is not a good rubric. The 135M demo meta-judge once replaced every
criterion of the essay rubric with story content ("The One Ring: a magical artifact ...") and,
being well-formed JSON, it became the reward. These checks need no model:

- `match_items`: which proposed item continues which current item (same title, or a rewording:
  most title or description words shared), so "removed", "reworded" and "new" are defined once;
- `check_conservation`: a refinement may add, reword, reweight or split items; it may not drop
  most of the rubric or every item of the task's initial rubric, and a removal must be named by
  the meta-judge's analysis (otherwise the item is put back);
- `spread` / `max_abs_correlation`: the discriminativeness statistics (DR Tulu's RLER rubric
  buffer keeps items by within-group spread, arXiv 2511.19399).

The model-calling gates (relevance, scoring new items) live in judges/meta_gates.py.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from .model import Rubric, RubricItem
from .text_key import normalise_text

GATES = ("conservation", "relevance", "discriminativeness", "merge")


@dataclass(frozen=True)
class GateSettings:
    """Thresholds of the rubric quality gates.

    max_removed_fraction 0.5: a proposal that drops more than half of the current items ("most")
        is rejected; the paper's refinements add and sharpen, they do not start over.
    require_initial: a proposal must keep at least one item of the task's initial rubric.
    match_overlap 0.5: two items are the same criterion when their normalised titles are equal or
        at least half of the words of their titles (or descriptions) are shared (Jaccard).
    relevance: ask the MRM, per new or reworded item, whether it judges response quality for the
        task (one schema-constrained yes/no call each, temperature 0).
    min_spread 0.05: a new item whose scores, as a fraction of its max points, have a standard
        deviation below this on the samples the MRM saw does not separate responses: rejected.
    min_correlation 0.1: a new item whose |Pearson r| with every current item and the total is
        below this measures nothing the old rubric did: flagged (logged and counted) but kept,
        since a refinement is meant to add what the rubric missed.
    min_scored 3: spread and correlation need at least this many scored samples; with fewer the
        discriminativeness gate is skipped (and says so).
    """

    enabled: bool = True
    max_removed_fraction: float = 0.5
    require_initial: bool = True
    match_overlap: float = 0.5
    relevance: bool = True
    discriminativeness: bool = True
    min_spread: float = 0.05
    min_correlation: float = 0.1
    min_scored: int = 3
    relevance_reason_chars: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_removed_fraction <= 1.0:
            raise ValueError(f"GateSettings.max_removed_fraction={self.max_removed_fraction}; it must be in [0, 1]")
        if not 0.0 < self.match_overlap <= 1.0:
            raise ValueError(f"GateSettings.match_overlap={self.match_overlap}; it must be in (0, 1]")
        if self.min_spread < 0 or self.min_correlation < 0 or self.min_scored < 2:
            raise ValueError("GateSettings needs min_spread >= 0, min_correlation >= 0 and min_scored >= 2")


@dataclass(frozen=True)
class GateRejection:
    """One thing a gate refused (or flagged): which gate, which item (None: the whole proposal),
    why, and what was done about it ("rejected", "restored", "reverted", "flagged", "merged")."""

    gate: str
    item: str | None
    reason: str
    action: str = "rejected"

    def to_dict(self) -> dict:
        return {"gate": self.gate, "item": self.item, "reason": self.reason, "action": self.action}


def _words(text: str) -> set[str]:
    return set(normalise_text(text).split())


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def item_similarity(a: RubricItem, b: RubricItem) -> float:
    """1.0 for equal normalised titles, else the larger word overlap of titles or descriptions."""
    if normalise_text(a.title) == normalise_text(b.title):
        return 1.0
    return max(_jaccard(_words(a.title), _words(b.title)), _jaccard(_words(a.description), _words(b.description)))


def match_items(old: Sequence[RubricItem], new: Sequence[RubricItem], *, overlap: float = 0.5) -> dict[int, int]:
    """{new index: old index}: each old item continued by at most one new item, best pairs first
    (ties by position, so the result depends only on the two lists)."""
    pairs = sorted(
        ((-item_similarity(o, n), ni, oi) for ni, n in enumerate(new) for oi, o in enumerate(old)),
    )
    matched: dict[int, int] = {}
    used: set[int] = set()
    for neg, ni, oi in pairs:
        if -neg < overlap:
            break
        if ni in matched or oi in used:
            continue
        matched[ni] = oi
        used.add(oi)
    return matched


def changed_items(current: Rubric, proposed: Rubric, *, overlap: float = 0.5) -> list[tuple[int, int | None]]:
    """(proposed index, matched current index or None) for every proposed item that is new or
    reworded (title or description differ from the item it continues); reweighting alone is not a
    change of wording."""
    matched = match_items(current.items, proposed.items, overlap=overlap)
    out = []
    for ni, item in enumerate(proposed.items):
        oi = matched.get(ni)
        if oi is None:
            out.append((ni, None))
        else:
            old = current.items[oi]
            if (item.title, item.description) != (old.title, old.description):
                out.append((ni, oi))
    return out


def carry_over(current: Rubric, proposed: Rubric, *, overlap: float = 0.5) -> Rubric:
    """`proposed` with the current rubric's aggregation, and each item that continues a current one
    keeping that item's kind and weight where the proposal left the defaults (the meta-judge writes
    title, description and points only, so a pitfall must not silently become a criterion)."""
    matched = match_items(current.items, proposed.items, overlap=overlap)
    items = []
    for ni, item in enumerate(proposed.items):
        old = current.items[matched[ni]] if ni in matched else None
        if old is not None and item.kind == "criterion" and item.weight == 1.0:
            item = RubricItem(item.title, item.description, item.max_points, weight=old.weight, kind=old.kind)
        items.append(item)
    return Rubric(task=proposed.task, context=proposed.context, items=tuple(items), aggregation=current.aggregation)


def copied_span(text: str, sources: Sequence[str], *, words: int = 6) -> str | None:
    """The first run of `words` consecutive (normalised) words of `text` that also occurs in one of
    `sources`, or None. A criterion that quotes a sample's prompt or response is about that sample's
    content (the 135M demo MRM rewrote "Answers the prompt" as the first sentence of the story it
    had just read); 6 words rarely recur by chance between a criterion and an essay."""
    tokens = normalise_text(text).split()
    if len(tokens) < words:
        return None
    haystacks = [f" {normalise_text(s)} " for s in sources if s]
    for i in range(len(tokens) - words + 1):
        span = " ".join(tokens[i:i + words])
        if any(f" {span} " in h for h in haystacks):
            return span
    return None


def _named(title: str, analyses: str) -> bool:
    key = normalise_text(title)
    return bool(key) and f" {key} " in f" {analyses} "


def check_conservation(
    current: Rubric,
    proposed: Rubric,
    *,
    initial: Rubric | None,
    analyses: Sequence[str],
    settings: GateSettings = GateSettings(),
    max_items: int | None = None,
) -> tuple[Rubric | None, list[GateRejection]]:
    """(the proposal with unjustified removals put back, or None when rejected; what was refused).

    Rejected: more than `max_removed_fraction` of the current items removed (all of them always),
    or no item of `initial` kept. Put back: a removed item whose title no analysis names (a
    removal must say what it removes and why); the put-back items go after the proposal's and,
    when that passes `max_items`, the proposal's last new items make room for them.
    """
    matched = match_items(current.items, proposed.items, overlap=settings.match_overlap)
    kept = set(matched.values())
    removed = [i for i in range(len(current.items)) if i not in kept]
    n = len(current.items)
    if len(removed) == n or len(removed) > settings.max_removed_fraction * n:
        titles = ", ".join(repr(current.items[i].title) for i in removed)
        return None, [GateRejection("conservation", None, f"removes {len(removed)} of {n} items ({titles})")]
    if settings.require_initial and initial is not None:
        if not match_items(initial.items, proposed.items, overlap=settings.match_overlap):
            return None, [GateRejection("conservation", None, "keeps no item of the task's initial rubric")]
    said = " ".join(normalise_text(a) for a in analyses)
    restore = [i for i in removed if not _named(current.items[i].title, said)]
    if not restore:
        return proposed, []
    notes = [GateRejection("conservation", current.items[i].title, "removed without the analysis naming it", "restored")
             for i in restore]
    items = list(proposed.items)
    excess = len(items) + len(restore) - (max_items or len(items) + len(restore))
    # Drop the proposal's trailing new items (never an item that continues a current one).
    for ni in sorted((ni for ni in range(len(items)) if ni not in matched), reverse=True)[:max(excess, 0)]:
        notes.append(GateRejection("conservation", items[ni].title, "no room once removed items were restored"))
        items[ni] = None  # type: ignore[call-overload]
    items = [it for it in items if it is not None]
    items += [current.items[i] for i in restore]
    return Rubric(task=proposed.task, context=proposed.context, items=tuple(items)), notes


def spread(scores: Sequence[float], max_points: float) -> float:
    """Population std of scores as a fraction of max points (0: every response got the same)."""
    if len(scores) < 2:
        return 0.0
    return statistics.pstdev(s / max_points for s in scores)


def pearson(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson r, or None where either side is constant (no correlation is defined)."""
    if len(x) != len(y) or len(x) < 2:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sx = math.fsum((a - mx) ** 2 for a in x)
    sy = math.fsum((b - my) ** 2 for b in y)
    if sx <= 0 or sy <= 0:
        return None
    return math.fsum((a - mx) * (b - my) for a, b in zip(x, y)) / math.sqrt(sx * sy)


def max_abs_correlation(scores: Sequence[float], old_columns: Sequence[Sequence[float]]) -> float:
    """Largest |r| between an item's scores and any old column (items and total); 0 if none defined."""
    rs = [abs(r) for col in old_columns if (r := pearson(scores, col)) is not None]
    return max(rs, default=0.0)
