"""Rubric data model: items, validation, canonical hash and the text judges read.

A rubric is plain data. Everything that identifies a rubric (its hash, its stored file, its
diff) derives from one canonical JSON form, so two processes that build the same rubric in
different ways agree on its identity.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

# The hash is a display and lookup key, not a security boundary: 16 hex chars = 64 bits, so a
# collision among even a million versions has probability ~3e-8.
HASH_CHARS = 16
# Bumped only if the canonical form changes meaning; part of the hashed payload so old and new
# forms can never share a hash.
CANONICAL_FORMAT = 1

_ITEM_KEYS = ("title", "description", "max_points", "weight", "kind")
_RUBRIC_KEYS = ("task", "context", "items", "aggregation")
# criterion: points earned; pitfall: points lost (the judge scores how strongly the response shows
# it); veto: a must-pass criterion that, under aggregation veto_min, caps the reward at 0 when
# failed (scored below half its points), as Rubicon's and RaR's veto items do.
ITEM_KINDS = ("criterion", "pitfall", "veto")
AGGREGATIONS = ("sum", "weighted", "veto_min")


def _check_text(value: Any, field: str, *, allow_empty: bool) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string, got {type(value).__name__}; quote it in the rubric file")
    text = value.strip()
    if not text and not allow_empty:
        raise ValueError(f"{field} is empty; give it a short non-empty text")
    return text


def _check_points(value: Any, field: str) -> float:
    # bool is an int subclass: `max_points: true` in YAML must not silently mean 1 point.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{field} must be a number, got {type(value).__name__} ({value!r}); write a positive number such as 5"
        )
    points = float(value)
    if not math.isfinite(points) or points <= 0:
        raise ValueError(f"{field} is {value!r}; it must be a finite number > 0, for example 5")
    return points


_KIND_NOTE = {"criterion": "", "pitfall": "; pitfall, subtracted", "veto": "; must pass"}


def _format_points(points: float) -> str:
    # 5.0 -> "5", 2.5 -> "2.5": judges are asked for integers, so integral points print as such.
    return f"{points:g}"


@dataclass(frozen=True)
class RubricItem:
    """One criterion: a short title, what earns its points, and the most points it can give.

    weight: its share under aggregation "weighted" / "veto_min" (default 1).
    kind: "criterion" (default), "pitfall" (its points are subtracted) or "veto" (see ITEM_KINDS).
    Items with the defaults serialise exactly as before rubric items v2, so old files, hashes and
    stored versions are unchanged.
    """

    title: str
    description: str
    max_points: float
    weight: float = 1.0
    kind: str = "criterion"

    def __post_init__(self) -> None:
        object.__setattr__(self, "title", _check_text(self.title, "rubric item title", allow_empty=False))
        label = f"rubric item {self.title!r}"
        object.__setattr__(
            self, "description", _check_text(self.description, f"{label} description", allow_empty=True)
        )
        object.__setattr__(self, "max_points", _check_points(self.max_points, f"{label} max_points"))
        object.__setattr__(self, "weight", _check_points(self.weight, f"{label} weight"))
        if self.kind not in ITEM_KINDS:
            raise ValueError(f"{label} kind is {self.kind!r}; use one of {list(ITEM_KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"title": self.title, "description": self.description, "max_points": self.max_points}
        if self.weight != 1.0:
            out["weight"] = self.weight
        if self.kind != "criterion":
            out["kind"] = self.kind
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "rubric item") -> "RubricItem":
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{where} must be a mapping with keys {list(_ITEM_KEYS)}, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_ITEM_KEYS))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; the allowed keys are {list(_ITEM_KEYS)}")
        missing = [k for k in ("title", "max_points") if k not in data]
        if missing:
            raise ValueError(f"{where} is missing {missing}; every item needs a title and max_points")
        return cls(
            title=data["title"], description=data.get("description", ""), max_points=data["max_points"],
            weight=data.get("weight", 1.0), kind=data.get("kind", "criterion"),
        )


@dataclass(frozen=True)
class Rubric:
    """The criteria a judge scores a response against, plus the task context it needs."""

    task: str
    context: str
    items: tuple[RubricItem, ...]
    aggregation: str = "sum"  # sum | weighted | veto_min (see `aggregate`)

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", _check_text(self.task, "rubric task", allow_empty=False))
        object.__setattr__(self, "context", _check_text(self.context, "rubric context", allow_empty=True))
        if isinstance(self.items, (str, bytes, Mapping)) or not isinstance(self.items, Iterable):
            raise TypeError("rubric items must be a list of RubricItem")
        items = tuple(self.items)
        if not items:
            raise ValueError(
                f"rubric for task {self.task!r} has no items; add at least one item with a title, "
                "a description and max_points"
            )
        for i, item in enumerate(items):
            if not isinstance(item, RubricItem):
                raise TypeError(
                    f"rubric item {i} is a {type(item).__name__}, expected RubricItem; "
                    "use Rubric.from_dict for plain mappings"
                )
        object.__setattr__(self, "items", items)
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"rubric aggregation is {self.aggregation!r}; use one of {list(AGGREGATIONS)}")
        if all(item.kind == "pitfall" for item in items):
            raise ValueError(f"rubric for task {self.task!r} has only pitfall items; add at least one criterion")

    @property
    def max_total(self) -> float:
        """Most points a response can earn (pitfalls give none): the denominator of the sum reward."""
        return math.fsum(item.max_points for item in self.items if item.kind != "pitfall")

    def aggregate(self, scores: Sequence[float]) -> float:
        """The reward for one score per item.

        sum: (points of criteria and vetoes - points of pitfalls) / max_total; in [0, 1] without
            pitfalls (today's reward), down to -(pitfall points / max_total) with them.
        weighted: the same with each item's score as a fraction of its points times its weight,
            over the total weight of criteria and vetoes.
        veto_min: weighted, then capped at 0 when any veto item scored below half its points.
        """
        if len(scores) != len(self.items):
            raise ValueError(f"{len(scores)} scores for a rubric of {len(self.items)} items; pass one per item")
        if self.aggregation == "sum":
            signed = [(-s if it.kind == "pitfall" else s) for it, s in zip(self.items, scores)]
            return math.fsum(signed) / self.max_total
        total_weight = math.fsum(it.weight for it in self.items if it.kind != "pitfall")
        signed = [(-1 if it.kind == "pitfall" else 1) * it.weight * s / it.max_points for it, s in zip(self.items, scores)]
        reward = math.fsum(signed) / total_weight
        if self.aggregation == "veto_min" and any(
            it.kind == "veto" and s < it.max_points / 2 for it, s in zip(self.items, scores)
        ):
            reward = min(reward, 0.0)
        return reward

    def canonical_json(self) -> str:
        """The one serialisation the hash is taken over (sorted keys, no whitespace, UTF-8 text)."""
        payload = {"format": CANONICAL_FORMAT, **self.to_dict()}
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()
        return digest[:HASH_CHARS]

    def render(self, *, with_total: bool = True) -> str:
        """Numbered markdown list of the items, for the judge prompt.

        The numbering is 1-based and in item order; judge prompt builders map item i (0-based)
        to line i + 1.
        """
        lines = []
        for i, item in enumerate(self.items, start=1):
            head = f"{i}. **{item.title}** (0-{_format_points(item.max_points)} points{_KIND_NOTE[item.kind]})"
            lines.append(f"{head}: {item.description}" if item.description else head)
        if with_total:
            lines.append("")
            lines.append(f"Maximum total: {_format_points(self.max_total)} points.")
            if any(item.kind == "pitfall" for item in self.items):
                lines.append("Pitfall items: score how strongly the response shows the flaw (0 = not at all); "
                             "their points are subtracted.")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "context": self.context, "items": [item.to_dict() for item in self.items]}
        if self.aggregation != "sum":
            out["aggregation"] = self.aggregation
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "rubric", task: str | None = None) -> "Rubric":
        """Build from a mapping; `task` fills in a file that does not name its task."""
        if not isinstance(data, Mapping):
            raise TypeError(
                f"{where} must be a mapping with keys {list(_RUBRIC_KEYS)}, got {type(data).__name__}"
            )
        unknown = sorted(set(data) - set(_RUBRIC_KEYS) - {"format"})
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; the allowed keys are {list(_RUBRIC_KEYS)}")
        items = data.get("items")
        if not items:
            raise ValueError(
                f"{where} has no items; add an 'items:' list where each entry has title, description "
                "and max_points"
            )
        if isinstance(items, (str, bytes, Mapping)) or not isinstance(items, Iterable):
            raise TypeError(f"{where} 'items' must be a list, got {type(items).__name__}")
        rubric_task = data.get("task", task)
        if rubric_task is None:
            raise ValueError(f"{where} does not name its task; add 'task: essay' (or pass task=...)")
        return cls(
            task=rubric_task,
            context=data.get("context", ""),
            aggregation=data.get("aggregation", "sum"),
            items=tuple(
                RubricItem.from_dict(item, where=f"{where} item {i}") for i, item in enumerate(items)
            ),
        )
