"""Cleaning a rubric proposed by the meta-judge before it can be merged or used.

Meta-judge output is untrusted model text turned into items: titles with list markers, point
values as strings, 40 items, 1000 points. This pure function turns any such proposal into a
valid, bounded Rubric, or raises if nothing usable is left.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .model import Rubric, RubricItem
from .text_key import normalise_text

# "1. ", "2) ", "- ", "* ", "• ", "### " and markdown bold around a title.
_LIST_MARKER = re.compile(r"^\s*(?:#{1,6}\s*|\d{1,3}\s*[.):]\s*|[-*\u2022]\s+)")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")
_POINT_KEYS = ("max_points", "points", "max_score")


@dataclass(frozen=True)
class ProposalLimits:
    """Bounds for a proposed rubric.

    max_items 12: the judge scores every item of every sample, so judge cost grows linearly with
    items; the paper's evolved rubrics stay around ten top-level criteria.
    max_points 10: digits 0-9 are single tokens for the tokenizers we judge with (see
    SMALL_JUDGES.md), and 10 keeps scores at most two tokens.
    integer_points: judges are asked for integer scores, so fractional maxima cannot be reached.
    """

    max_items: int = 12
    min_points: float = 1.0
    max_points: float = 10.0
    integer_points: bool = True
    max_title_chars: int = 80
    max_description_chars: int = 600

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError(f"ProposalLimits.max_items is {self.max_items}; it must be >= 1")
        if not (0 < self.min_points <= self.max_points) or not math.isfinite(self.max_points):
            raise ValueError(
                f"ProposalLimits points range [{self.min_points}, {self.max_points}] is invalid; "
                "need 0 < min_points <= max_points < inf"
            )
        if self.max_title_chars < 1 or self.max_description_chars < 0:
            raise ValueError("ProposalLimits text caps must be positive")


def _clean_title(raw: str, cap: int) -> str:
    title = _LIST_MARKER.sub("", raw.strip(), count=1).strip()
    title = title.strip("*_`").strip().rstrip(":").strip()
    return " ".join(title.split())[:cap].rstrip()


def _read_points(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        value = float(raw)
    elif isinstance(raw, str):
        # "5", "5 points", "up to 5": the first number. Regex only, never eval (untrusted text).
        match = _NUMBER.search(raw)
        if match is None:
            return None
        value = float(match.group())
    else:
        return None
    return value if math.isfinite(value) else None


def _clamp_points(value: float, limits: ProposalLimits) -> float:
    value = min(max(value, limits.min_points), limits.max_points)
    if limits.integer_points:
        # Round half up (2.5 -> 3), not Python's banker's rounding, then re-clamp the result.
        value = float(math.floor(value + 0.5))
        value = min(max(value, math.ceil(limits.min_points)), math.floor(limits.max_points))
    return value


def _fields(raw: Any) -> tuple[Any, Any, Any]:
    if isinstance(raw, RubricItem):
        return raw.title, raw.description, raw.max_points
    if isinstance(raw, Mapping):
        points = next((raw[k] for k in _POINT_KEYS if k in raw), None)
        return raw.get("title"), raw.get("description", ""), points
    return None, None, None


def normalise_proposal(
    raw_items: Rubric | Iterable[RubricItem | Mapping[str, Any]],
    *,
    task: str | None = None,
    context: str | None = None,
    limits: ProposalLimits = ProposalLimits(),
) -> Rubric:
    """Clean, bound and deduplicate proposed items; return a valid Rubric.

    Items without a usable title or a readable finite point value are dropped; points are
    clamped to the limits; titles lose list markers and markdown; text is capped; repeated
    titles keep their first occurrence; at most `limits.max_items` items are kept, in proposal
    order (the meta-judge lists what it considers most important first).
    """
    if isinstance(raw_items, Rubric):
        task = raw_items.task if task is None else task
        context = raw_items.context if context is None else context
        raw_items = raw_items.items
    if task is None:
        raise ValueError("normalise_proposal needs task=... when given plain items")
    items: list[RubricItem] = []
    seen: set[str] = set()
    for raw in raw_items:
        title, description, points = _fields(raw)
        if not isinstance(title, str):
            continue
        title = _clean_title(title, limits.max_title_chars)
        key = normalise_text(title)
        value = _read_points(points)
        if not key or key in seen or value is None:
            continue
        description = description if isinstance(description, str) else ""
        description = " ".join(description.split())[: limits.max_description_chars].rstrip()
        seen.add(key)
        items.append(RubricItem(title, description, _clamp_points(value, limits)))
        if len(items) == limits.max_items:
            break
    if not items:
        raise ValueError(
            f"the proposed rubric for task {task!r} has no usable items (each needs a non-empty title "
            "and a finite max_points); keep the current rubric for this step"
        )
    return Rubric(task=task, context="" if context is None else context, items=tuple(items))
