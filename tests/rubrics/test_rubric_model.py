import math

import pytest

from mpo_fast.rubrics import Rubric, RubricItem


def make(items=None, task="essay", context="Short essays."):
    items = items or [RubricItem("Clarity", "Clear prose.", 5), RubricItem("Evidence", "Claims supported.", 3)]
    return Rubric(task=task, context=context, items=items)


@pytest.mark.parametrize(
    "kwargs, error, fragment",
    [
        (dict(title="", description="d", max_points=1), ValueError, "title is empty"),
        (dict(title="   ", description="d", max_points=1), ValueError, "title is empty"),
        (dict(title="T", description="d", max_points=0), ValueError, "finite number > 0"),
        (dict(title="T", description="d", max_points=-2), ValueError, "finite number > 0"),
        (dict(title="T", description="d", max_points=math.nan), ValueError, "finite number > 0"),
        (dict(title="T", description="d", max_points=math.inf), ValueError, "finite number > 0"),
        (dict(title="T", description="d", max_points="5"), TypeError, "must be a number"),
        (dict(title="T", description="d", max_points=True), TypeError, "must be a number"),
        (dict(title=3, description="d", max_points=1), TypeError, "must be a string"),
    ],
)
def test_item_validation_names_the_fix(kwargs, error, fragment):
    with pytest.raises(error, match=fragment):
        RubricItem(**kwargs)


def test_rubric_without_items_is_rejected_with_fix():
    with pytest.raises(ValueError, match="has no items; add at least one item"):
        Rubric(task="essay", context="", items=[])
    with pytest.raises(ValueError, match="rubric task is empty"):
        make(task=" ")
    with pytest.raises(TypeError, match="expected RubricItem"):
        Rubric(task="essay", context="", items=[{"title": "x", "max_points": 1}])


def test_text_is_stripped_and_items_become_a_tuple():
    rubric = make([RubricItem("  Clarity ", " Clear. ", 5)], context="  ctx ")
    assert rubric.items == (RubricItem("Clarity", "Clear.", 5.0),)
    assert rubric.context == "ctx"
    assert isinstance(rubric.items, tuple)


def test_max_total_and_render():
    rubric = make([RubricItem("A", "first", 5), RubricItem("B", "", 2.5), RubricItem("C", "third", 1)])
    assert rubric.max_total == 8.5
    text = rubric.render()
    assert text.splitlines()[:3] == [
        "1. **A** (0-5 points): first",
        "2. **B** (0-2.5 points)",
        "3. **C** (0-1 points): third",
    ]
    assert text.endswith("Maximum total: 8.5 points.")
    assert "Maximum total" not in rubric.render(with_total=False)


def test_hash_is_stable_and_content_sensitive():
    a = make()
    # Same content built differently: int vs float points, list vs tuple, extra whitespace.
    b = Rubric(" essay", "Short essays. ", (RubricItem("Clarity", "Clear prose.", 5.0), RubricItem("Evidence ", "Claims supported.", 3)))
    assert a == b and a.content_hash == b.content_hash
    assert len(a.content_hash) == 16 and int(a.content_hash, 16) >= 0
    assert a.content_hash == Rubric.from_dict(a.to_dict()).content_hash
    changed = [
        make(context="Other."),
        make(task="summary"),
        make([RubricItem("Clarity", "Clear prose.", 4), RubricItem("Evidence", "Claims supported.", 3)]),
        make([RubricItem("Evidence", "Claims supported.", 3), RubricItem("Clarity", "Clear prose.", 5)]),
        make([RubricItem("Clarity", "Clear prose!", 5), RubricItem("Evidence", "Claims supported.", 3)]),
    ]
    hashes = {r.content_hash for r in changed} | {a.content_hash}
    assert len(hashes) == len(changed) + 1


def test_hash_pinned_value():
    # A change of canonical form must be deliberate: it orphans every stored version.
    rubric = Rubric("essay", "ctx", [RubricItem("Clarity", "Clear prose.", 5)])
    import hashlib

    canonical = (
        '{"context":"ctx","format":1,"items":[{"description":"Clear prose.","max_points":5.0,'
        '"title":"Clarity"}],"task":"essay"}'
    )
    assert rubric.canonical_json() == canonical
    assert rubric.content_hash == hashlib.sha256(canonical.encode()).hexdigest()[:16]


def test_dict_round_trip_and_errors():
    rubric = make()
    assert Rubric.from_dict(rubric.to_dict()) == rubric
    with pytest.raises(ValueError, match="has no items; add an 'items:' list"):
        Rubric.from_dict({"task": "essay", "context": "", "items": []})
    with pytest.raises(ValueError, match="has no items"):
        Rubric.from_dict({"task": "essay"})
    with pytest.raises(ValueError, match=r"unknown keys \['points'\]"):
        Rubric.from_dict({"task": "essay", "items": [{"title": "a", "points": 3}]})
    with pytest.raises(ValueError, match=r"missing \['max_points'\]"):
        Rubric.from_dict({"task": "essay", "items": [{"title": "a"}]})
    with pytest.raises(ValueError, match="does not name its task"):
        Rubric.from_dict({"items": [{"title": "a", "max_points": 1}]})
    assert Rubric.from_dict({"items": [{"title": "a", "max_points": 1}]}, task="math").task == "math"
