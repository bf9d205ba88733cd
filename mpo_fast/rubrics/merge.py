"""Deterministic merge of several proposed rubrics into one.

The meta-judge refines the rubric once per analysed sample, concurrently; the calls finish in
any order. The merge therefore depends only on the multiset of proposals, never on their order
or on set/dict iteration order: the same proposals always give the same rubric and hash.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

from .model import Rubric, RubricItem
from .text_key import normalise_text


@dataclass(frozen=True)
class _Occurrence:
    proposal: int  # index of the proposal after canonical sorting (not the caller's order)
    position: int  # position of the item inside its proposal: earlier = more important
    item: RubricItem


def _representative_key(item: RubricItem) -> tuple:
    # Longest description wins (it usually carries the most specific criterion); ties by text.
    return (-len(item.description), item.description, item.title, item.max_points)


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            # Smaller root wins so the structure does not depend on call order beyond components.
            self.parent[max(ri, rj)] = min(ri, rj)


def _pick_context(proposals: Sequence[Rubric]) -> str:
    counts = Counter(p.context for p in proposals)
    return min(counts, key=lambda c: (-counts[c], -len(c), c))


def merge_rubrics(
    proposals: Sequence[Rubric],
    *,
    max_items: int | None = None,
    task: str | None = None,
    context: str | None = None,
) -> Rubric:
    """Union of the proposals' items, duplicates removed, in a stable order.

    Two items are duplicates when their normalised titles match or their (non-empty) normalised
    descriptions match (normalise_text: casefold, punctuation stripped, whitespace collapsed);
    duplicates chain, so A~B and B~C put A, B, C in one group. Each group keeps one
    representative: the longest description, ties broken lexically.

    Order: groups found in more proposals first (support), then by their earliest position in
    any proposal (refinements keep the existing criteria first, so this keeps the current order),
    then by normalised title. `max_items` keeps the first groups in that order.
    `context` defaults to the most common context among the proposals.
    """
    proposals = list(proposals)
    if not proposals:
        raise ValueError("merge_rubrics got no proposals; pass at least one Rubric")
    for i, proposal in enumerate(proposals):
        if not isinstance(proposal, Rubric):
            raise TypeError(f"proposal {i} is a {type(proposal).__name__}, expected Rubric")
    if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
        raise ValueError(f"max_items is {max_items!r}; pass a positive integer or None for no cap")
    tasks = sorted({p.task for p in proposals})
    if len(tasks) > 1:
        raise ValueError(f"cannot merge rubrics of different tasks {tasks}; merge each task separately")
    if task is not None and task != tasks[0]:
        raise ValueError(f"proposals are for task {tasks[0]!r}, not {task!r}")

    # Canonical proposal order: the caller's order must not leak into anything below.
    ordered = sorted(proposals, key=lambda p: p.canonical_json())
    occurrences = [
        _Occurrence(p_index, position, item)
        for p_index, proposal in enumerate(ordered)
        for position, item in enumerate(proposal.items)
    ]
    groups = _UnionFind(len(occurrences))
    first_with_key: dict[tuple[str, str], int] = {}
    for i, occ in enumerate(occurrences):
        keys = [("title", normalise_text(occ.item.title))]
        description = normalise_text(occ.item.description)
        if description:
            keys.append(("description", description))
        for key in keys:
            if key in first_with_key:
                groups.union(first_with_key[key], i)
            else:
                first_with_key[key] = i

    members: dict[int, list[_Occurrence]] = {}
    for i, occ in enumerate(occurrences):
        members.setdefault(groups.find(i), []).append(occ)

    ranked = []
    for group in members.values():
        representative = min((occ.item for occ in group), key=_representative_key)
        support = len({occ.proposal for occ in group})
        first_position = min(occ.position for occ in group)
        rank = (-support, first_position, normalise_text(representative.title), _representative_key(representative))
        ranked.append((rank, representative))
    ranked.sort(key=lambda pair: pair[0])
    items = tuple(item for _, item in ranked)
    if max_items is not None:
        items = items[:max_items]
    return Rubric(task=tasks[0], context=_pick_context(proposals) if context is None else context, items=items)
