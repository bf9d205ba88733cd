import itertools
import random

import pytest

from mpo_fast.rubrics import Rubric, RubricItem, merge_rubrics, normalise_text


def rubric(items, context="ctx", task="essay"):
    return Rubric(task, context, [RubricItem(t, d, p) for t, d, p in items])


CURRENT = [("Clarity", "Clear prose.", 5), ("Evidence", "Claims supported.", 5)]
P1 = rubric(CURRENT + [("Length discipline", "Stays under 350 words.", 3)])
P2 = rubric([("clarity!", "Clear, precise prose with no jargon.", 5), ("Evidence", "Claims supported.", 5)])
P3 = rubric(CURRENT + [("Originality", "Fresh angle on the prompt.", 4), ("  LENGTH   discipline ", "Under 350 words.", 2)])
P4 = rubric([("Sources", "Claims supported.", 4), ("Clarity", "Clear prose.", 5)], context="other ctx")


def test_normalise_text():
    assert normalise_text("  Clarity & Flow: ") == normalise_text("clarity flow") == "clarity flow"
    assert normalise_text("Clarity—flow") == "clarity flow"
    assert normalise_text("ÉVIDENCE") == "évidence"
    assert normalise_text("...") == ""


def test_merge_dedupes_and_orders_by_support_then_position():
    merged = merge_rubrics([P1, P2, P3, P4])
    titles = [item.title for item in merged.items]
    # Clarity (4 proposals) and Evidence/Sources (4, merged by identical description) first, in
    # their position order; then Length discipline (2), then Originality (1).
    assert titles == ["clarity!", "Evidence", "Length discipline", "Originality"]
    clarity = merged.items[0]
    assert clarity.description == "Clear, precise prose with no jargon."  # longest description wins
    length = merged.items[2]
    assert length.description == "Stays under 350 words." and length.max_points == 3
    assert merged.context == "ctx"  # most common context
    assert merged.task == "essay"


def test_merge_is_independent_of_input_order():
    proposals = [P1, P2, P3, P4]
    reference = merge_rubrics(proposals)
    for perm in itertools.permutations(proposals):
        merged = merge_rubrics(list(perm))
        assert merged == reference and merged.content_hash == reference.content_hash


def test_merge_random_proposals_shuffled():
    rng = random.Random(7)
    pool = [(f"Criterion {i}", f"What earns criterion {i}.", rng.randint(1, 9)) for i in range(12)]
    proposals = []
    for _ in range(16):
        items = rng.sample(pool, rng.randint(2, 8))
        # Random surface variation that normalisation must absorb.
        items = [(rng.choice([t, t.upper(), f" {t}!", t.replace(" ", "  ")]), d, p) for t, d, p in items]
        proposals.append(rubric(items))
    reference = merge_rubrics(proposals, max_items=6)
    for _ in range(20):
        shuffled = proposals[:]
        rng.shuffle(shuffled)
        assert merge_rubrics(shuffled, max_items=6).content_hash == reference.content_hash
    assert len(reference.items) == 6
    keys = [normalise_text(i.title) for i in reference.items]
    assert len(set(keys)) == len(keys)


def test_ties_break_deterministically():
    a = rubric([("Beta", "same length", 2)])
    b = rubric([("beta", "Same Length", 3)])
    merged = merge_rubrics([a, b])
    assert merged == merge_rubrics([b, a])
    assert len(merged.items) == 1 and merged.items[0].description == "Same Length"  # "S" < "s"


def test_duplicates_chain_through_title_and_description():
    a = rubric([("Clarity", "desc one", 2)])
    b = rubric([("Readability", "desc one", 2)])
    c = rubric([("readability", "desc two longer", 2)])
    merged = merge_rubrics([a, b, c])
    assert len(merged.items) == 1 and merged.items[0].description == "desc two longer"


def test_empty_descriptions_do_not_merge_items():
    merged = merge_rubrics([rubric([("A", "", 1), ("B", "", 1)])])
    assert [i.title for i in merged.items] == ["A", "B"]


def test_merge_options_and_errors():
    assert len(merge_rubrics([P1, P3], max_items=2).items) == 2
    assert merge_rubrics([P1], context="new").context == "new"
    with pytest.raises(ValueError, match="no proposals"):
        merge_rubrics([])
    with pytest.raises(ValueError, match="max_items"):
        merge_rubrics([P1], max_items=0)
    with pytest.raises(ValueError, match="different tasks"):
        merge_rubrics([P1, rubric(CURRENT, task="math")])
    with pytest.raises(ValueError, match="not 'math'"):
        merge_rubrics([P1], task="math")
    with pytest.raises(TypeError, match="expected Rubric"):
        merge_rubrics([P1, P1.to_dict()])
