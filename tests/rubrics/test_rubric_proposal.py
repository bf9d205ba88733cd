import math

import pytest

from mpo_fast.rubrics import ProposalLimits, Rubric, RubricItem, normalise_proposal


def test_cleans_titles_points_and_duplicates():
    raw = [
        {"title": "1. **Clarity:**", "description": "  Clear\n prose. ", "max_points": "5 points"},
        {"title": "- Evidence", "description": "Supported.", "points": 12},
        {"title": "clarity", "description": "duplicate title", "max_points": 3},
        {"title": "", "description": "no title", "max_points": 3},
        {"title": "NaN points", "description": "", "max_points": math.nan},
        {"title": "No points", "description": ""},
        {"title": "Bool points", "max_points": True},
        "not a mapping",
        {"title": "Half", "description": "rounds up", "max_points": 2.5},
        {"title": "Tiny", "description": "clamped up", "max_points": -4},
        RubricItem("Kept item", "already an item", 4),
    ]
    rubric = normalise_proposal(raw, task="essay", context="ctx")
    assert [(i.title, i.description, i.max_points) for i in rubric.items] == [
        ("Clarity", "Clear prose.", 5.0),
        ("Evidence", "Supported.", 10.0),
        ("Half", "rounds up", 3.0),
        ("Tiny", "clamped up", 1.0),
        ("Kept item", "already an item", 4.0),
    ]


def test_caps_item_count_and_text_length():
    limits = ProposalLimits(max_items=3, max_title_chars=5, max_description_chars=4)
    raw = [{"title": f"Item number {i}", "description": "abcdefgh", "max_points": 2} for i in range(10)]
    rubric = normalise_proposal(raw, task="math", limits=limits)
    assert len(rubric.items) == 1  # titles cut to "Item" collide: duplicates dropped
    raw = [{"title": f"T{i}", "description": "abcdefgh", "max_points": 2} for i in range(10)]
    rubric = normalise_proposal(raw, task="math", limits=limits)
    assert [i.title for i in rubric.items] == ["T0", "T1", "T2"] and rubric.items[0].description == "abcd"


def test_accepts_rubric_and_non_integer_points():
    rubric = Rubric("essay", "ctx", [RubricItem("A", "a", 2.4), RubricItem("B", "b", 50)])
    clipped = normalise_proposal(rubric, limits=ProposalLimits(integer_points=False, max_points=8))
    assert clipped.task == "essay" and clipped.context == "ctx"
    assert [i.max_points for i in clipped.items] == [2.4, 8.0]


def test_nothing_usable_raises():
    with pytest.raises(ValueError, match="no usable items"):
        normalise_proposal([{"title": "", "max_points": 1}], task="essay")
    with pytest.raises(ValueError, match="needs task"):
        normalise_proposal([{"title": "A", "max_points": 1}])
    with pytest.raises(ValueError, match="max_items"):
        ProposalLimits(max_items=0)
    with pytest.raises(ValueError, match="points range"):
        ProposalLimits(min_points=5, max_points=2)
