"""A readable diff between two rubric versions: items added, removed, changed and moved."""

from __future__ import annotations

import difflib
from collections import defaultdict

from .model import Rubric, RubricItem, _format_points
from .text_key import normalise_text


def _keyed(rubric: Rubric) -> list[tuple[tuple[str, int], RubricItem]]:
    """Key items by normalised title; the n-th repeat of a title gets n so repeats pair in order."""
    seen: dict[str, int] = defaultdict(int)
    keyed = []
    for item in rubric.items:
        title = normalise_text(item.title)
        keyed.append(((title, seen[title]), item))
        seen[title] += 1
    return keyed


def _pts(points: float) -> str:
    return f"{_format_points(points)} pts"


def _describe(rubric: Rubric, label: str) -> str:
    return f"{label} {rubric.content_hash} ({len(rubric.items)} items, {_format_points(rubric.max_total)} points)"


def diff_rubrics(a: Rubric, b: Rubric, *, label_a: str = "a", label_b: str = "b") -> str:
    """Lines: `- [P pts] Title: description` removed, `+ ...` added, `~ ...` changed or moved.

    Items are matched by normalised title, so a reworded description or new point value shows as
    one changed item rather than a removal plus an addition.
    """
    lines = [f"--- {_describe(a, label_a)}", f"+++ {_describe(b, label_b)}"]
    if a.content_hash == b.content_hash:
        lines.append("(no differences)")
        return "\n".join(lines)
    if a.task != b.task:
        lines.append(f"~ task: {a.task!r} -> {b.task!r}")
    if a.context != b.context:
        lines.append("~ context:")
        lines.extend(f"    - {line}" for line in a.context.splitlines() or [""])
        lines.extend(f"    + {line}" for line in b.context.splitlines() or [""])

    keyed_a, keyed_b = _keyed(a), _keyed(b)
    items_a, items_b = dict(keyed_a), dict(keyed_b)
    pos_a = {key: i for i, (key, _) in enumerate(keyed_a)}
    common_a = [key for key, _ in keyed_a if key in items_b]
    common_b = [key for key, _ in keyed_b if key in items_a]
    # Common items outside the longest common subsequence are the ones whose position moved.
    in_order = set()
    for block in difflib.SequenceMatcher(a=common_a, b=common_b, autojunk=False).get_matching_blocks():
        in_order.update(common_a[block.a : block.a + block.size])

    unchanged = 0
    for key, item in keyed_a:
        if key not in items_b:
            lines.append(f"- [{_pts(item.max_points)}] {item.title}: {item.description}")
    for new_pos, (key, item) in enumerate(keyed_b):
        if key not in items_a:
            lines.append(f"+ [{_pts(item.max_points)}] {item.title}: {item.description}")
            continue
        old = items_a[key]
        notes = []
        if old.max_points != item.max_points:
            points = f"{_pts(old.max_points)} -> {_pts(item.max_points)}"
        else:
            points = _pts(item.max_points)
        if old.title != item.title:
            notes.append(f"renamed from {old.title!r}")
        if key not in in_order:
            notes.append(f"moved {pos_a[key] + 1} -> {new_pos + 1}")
        described = old.description != item.description
        if old.max_points == item.max_points and not notes and not described:
            unchanged += 1
            continue
        suffix = f" ({', '.join(notes)})" if notes else ""
        lines.append(f"~ [{points}] {item.title}{suffix}")
        if described:
            lines.append(f"    - {old.description}")
            lines.append(f"    + {item.description}")
    if unchanged:
        lines.append(f"= {unchanged} item{'s' if unchanged != 1 else ''} unchanged")
    return "\n".join(lines)
