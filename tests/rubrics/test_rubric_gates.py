"""The pure rubric quality gates: item matching, conservation, spread and correlation."""
import pytest

from mpo_fast.rubrics import GateSettings, Rubric, RubricItem
from mpo_fast.rubrics.gates import changed_items, check_conservation, match_items, max_abs_correlation, pearson, spread

CURRENT = Rubric(task="essay", context="", items=(
    RubricItem("Prompt adherence", "Answers the prompt that was asked.", 4),
    RubricItem("Clarity", "Clear prose, easy to follow.", 3),
    RubricItem("Depth", "Develops ideas with examples.", 3),
))


def _r(*items):
    return Rubric(task="essay", context="", items=tuple(RubricItem(*i) for i in items))


def test_match_items_pairs_rewordings_and_leaves_new_items_unmatched():
    proposed = _r(("Clarity of prose", "Clear prose, easy to follow, no jargon.", 3),
                  ("Concision", "No filler.", 2), ("prompt adherence", "Stays on the prompt.", 4))
    assert match_items(CURRENT.items, proposed.items) == {0: 1, 2: 0}
    # reworded: Clarity (title) and Prompt adherence (description); new: Concision; Depth unmatched
    assert changed_items(CURRENT, proposed) == [(0, 1), (1, None), (2, 0)]
    # reweighting only is not a rewording
    assert changed_items(CURRENT, _r(("Prompt adherence", "Answers the prompt that was asked.", 9))) == []


def test_conservation_rejects_a_replacement_of_the_whole_rubric():
    ring = _r(("The One Ring", "A magical artifact used by a noble family to control the land.", 8),
              ("The City", "A city built on a terrible waste of earth, long abandoned.", 10))
    fixed, notes = check_conservation(CURRENT, ring, initial=CURRENT, analyses=["The rubric is too lenient."])
    assert fixed is None and len(notes) == 1
    assert notes[0].gate == "conservation" and notes[0].action == "rejected" and "removes 3 of 3 items" in notes[0].reason


def test_conservation_rejects_removing_most_items_even_when_named():
    proposal = _r(("Clarity", "Clear prose.", 3))
    fixed, notes = check_conservation(CURRENT, proposal, initial=CURRENT, analyses=["Drop depth and prompt adherence: vague."])
    assert fixed is None and "removes 2 of 3" in notes[0].reason
    # a looser threshold lets the same proposal through (the removals are named)
    fixed, notes = check_conservation(CURRENT, proposal, initial=CURRENT, analyses=["Drop depth and prompt adherence: vague."],
                                      settings=GateSettings(max_removed_fraction=0.7))
    assert fixed == proposal and notes == []


def test_conservation_requires_an_item_of_the_initial_rubric():
    evolved = _r(("Concision", "No filler.", 2), ("Evidence", "Claims are supported.", 3), ("Clarity", "Clear.", 3))
    proposal = _r(("Concision", "No filler sentences at all.", 2), ("Evidence", "Claims are supported by facts.", 3),
                  ("Tone", "Fits the audience.", 2))
    initial = _r(("Prompt adherence", "Answers the prompt.", 4), ("Clarity", "Clear.", 3))
    fixed, notes = check_conservation(evolved, proposal, initial=initial, analyses=["Replace clarity with tone."])
    assert fixed is None and notes[0].reason == "keeps no item of the task's initial rubric"
    fixed, _ = check_conservation(evolved, proposal, initial=initial, analyses=["Replace clarity with tone."],
                                  settings=GateSettings(require_initial=False))
    assert fixed == proposal


def test_conservation_puts_back_an_unnamed_removal_and_makes_room_for_it():
    proposal = _r(("Prompt adherence", "Answers the prompt that was asked.", 4), ("Clarity", "Clear prose.", 3),
                  ("Concision", "No filler.", 2), ("Tone", "Fits the audience.", 2))
    fixed, notes = check_conservation(CURRENT, proposal, initial=CURRENT, analyses=["Add concision and tone."])
    assert [i.title for i in fixed.items] == ["Prompt adherence", "Clarity", "Concision", "Tone", "Depth"]
    assert [(n.item, n.action) for n in notes] == [("Depth", "restored")]
    # with a cap of 4 items, the last new item gives way to the restored one
    fixed, notes = check_conservation(CURRENT, proposal, initial=CURRENT, analyses=["Add concision and tone."], max_items=4)
    assert [i.title for i in fixed.items] == ["Prompt adherence", "Clarity", "Concision", "Depth"]
    assert [(n.item, n.action) for n in notes] == [("Depth", "restored"), ("Tone", "rejected")]
    # a removal the analysis names (and says why) stands
    fixed, notes = check_conservation(CURRENT, proposal, initial=CURRENT, analyses=["Depth is vague; remove it."])
    assert fixed == proposal and notes == []


def test_spread_and_correlation():
    assert spread([2, 2, 2], 4) == 0.0
    assert spread([0, 4], 4) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [5, 5, 5]) is None
    assert max_abs_correlation([1, 2, 3], [[5, 5, 5], [3, 2, 1]]) == pytest.approx(1.0)
    assert max_abs_correlation([1, 2, 3], [[5, 5, 5]]) == 0.0


def test_gate_settings_validate():
    with pytest.raises(ValueError, match="max_removed_fraction"):
        GateSettings(max_removed_fraction=1.5)
    with pytest.raises(ValueError, match="min_scored"):
        GateSettings(min_scored=1)


def test_copied_span_finds_a_quoted_sample():
    from mpo_fast.rubrics.gates import copied_span

    story = "The old house, once owned by a wealthy family, now resides in a small town."
    assert copied_span("The old house — once owned by a wealthy family — is described.", [story]) == \
        "the old house once owned by"
    assert copied_span("Answers the prompt that was asked and stays with it.", [story]) is None
    assert copied_span("old house", [story]) is None  # shorter than the window
