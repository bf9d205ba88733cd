"""Rubric items v2: weight, kind (criterion | pitfall | veto), aggregation (sum | weighted |
veto_min), backwards compatible with v1 rubric files and hashes."""
import asyncio
import json

import pytest

from mpo_fast.judges import JudgeRequest, JudgeSettings, RubricJudge
from mpo_fast.rubrics import Rubric, RubricItem
from mpo_fast.rubrics.gates import carry_over
from mpo_fast.trainer.stages import item_score_stats
from tests.judges.fakes import ScriptedLLM, score_names, tags

V1 = {"task": "essay", "context": "c", "items": [{"title": "Clarity", "description": "Clear.", "max_points": 5},
                                                 {"title": "Depth", "description": "Ideas.", "max_points": 3}]}


def test_v1_rubrics_serialise_and_hash_as_before():
    r = Rubric.from_dict(V1)
    # the canonical form of a v1 rubric gains no keys, so stored versions keep their hashes
    assert r.canonical_json() == (
        '{"context":"c","format":1,"items":[{"description":"Clear.","max_points":5.0,"title":"Clarity"},'
        '{"description":"Ideas.","max_points":3.0,"title":"Depth"}],"task":"essay"}')
    assert r.aggregation == "sum" and all(i.kind == "criterion" and i.weight == 1.0 for i in r.items)
    assert r.aggregate([5, 0]) == pytest.approx(5 / 8)


def test_v2_fields_round_trip_and_validate():
    data = {**V1, "aggregation": "veto_min",
            "items": V1["items"] + [{"title": "Padding", "description": "Filler.", "max_points": 2, "kind": "pitfall"},
                                    {"title": "On topic", "description": "Answers.", "max_points": 2, "kind": "veto", "weight": 2}]}
    r = Rubric.from_dict(data)
    assert Rubric.from_dict(json.loads(json.dumps(r.to_dict()))) == r
    assert r.content_hash != Rubric.from_dict(V1).content_hash
    assert "pitfall, subtracted" in r.render() and "must pass" in r.render() and r.max_total == 10
    with pytest.raises(ValueError, match="kind is 'bonus'"):
        RubricItem("x", "", 1, kind="bonus")
    with pytest.raises(ValueError, match="aggregation is 'max'"):
        Rubric("essay", "", (RubricItem("x", "", 1),), aggregation="max")
    with pytest.raises(ValueError, match="only pitfall items"):
        Rubric("essay", "", (RubricItem("x", "", 1, kind="pitfall"),))
    with pytest.raises((TypeError, ValueError), match="weight"):
        RubricItem("x", "", 1, weight=0)


ITEMS = (RubricItem("Clarity", "", 5), RubricItem("Depth", "", 5, weight=3.0),
         RubricItem("Padding", "", 2, kind="pitfall"), RubricItem("On topic", "", 4, kind="veto", weight=2.0))


@pytest.mark.parametrize(("aggregation", "scores", "want"), [
    ("sum", [5, 5, 0, 4], 14 / 14),
    ("sum", [5, 5, 2, 4], 12 / 14),  # a pitfall subtracts its points
    ("sum", [0, 0, 2, 0], -2 / 14),
    # weighted: (1*5/5 + 3*2/5 - 1*1/2 + 2*4/4) / (1 + 3 + 2)
    ("weighted", [5, 2, 1, 4], (1 + 1.2 - 0.5 + 2) / 6),
    ("veto_min", [5, 2, 1, 4], (1 + 1.2 - 0.5 + 2) / 6),
    ("veto_min", [5, 5, 0, 1], 0.0),  # the veto failed (1 < 4 / 2): capped at 0
    ("veto_min", [0, 0, 2, 1], (-1 * 2 / 2 + 2 * 1 / 4) / 6),  # already <= 0: the cap changes nothing
])
def test_aggregation_by_hand(aggregation, scores, want):
    r = Rubric("essay", "", ITEMS, aggregation=aggregation)
    assert r.aggregate(scores) == pytest.approx(want)


def test_the_judge_reward_uses_the_aggregation():
    r = Rubric("essay", "", ITEMS, aggregation="veto_min")
    llm = ScriptedLLM(respond=lambda m, c: tags(score_names(m), [5, 5, 0, 1]))
    (j,) = asyncio.run(RubricJudge(llm, JudgeSettings(scoring="parse")).judge([JudgeRequest("p", "resp", r)]))
    assert j.ok and j.item_scores == (5, 5, 0, 1) and j.reward == 0.0
    assert "pitfall, subtracted" in llm.log[0][1][-1]["content"]


def test_evolution_keeps_kinds_weights_and_aggregation():
    current = Rubric("essay", "", ITEMS, aggregation="weighted")
    proposed = Rubric("essay", "", (RubricItem("Clarity", "Clear prose.", 5), RubricItem("Padding", "Filler, repeats.", 2),
                                    RubricItem("Evidence", "Facts.", 3)))
    out = carry_over(current, proposed)
    assert out.aggregation == "weighted"
    assert [(i.title, i.kind, i.weight) for i in out.items] == [
        ("Clarity", "criterion", 1.0), ("Padding", "pitfall", 1.0), ("Evidence", "criterion", 1.0)]


def test_item_score_stats_by_hand():
    from mpo_fast.judges.types import Judgement
    from mpo_fast.parsing.spec import ScoreStatus

    def j(scores, ok=True):
        return Judgement(item_scores=scores, item_status=(ScoreStatus.OK,) * len(scores), reward=0.5 if ok else None,
                         ok=ok, mode="t", calls=1, latency_s=0.0)
    stats = item_score_stats([j((1.0, 4.0)), j((3.0, 4.0)), j((None, None), ok=False)])
    assert stats == {"item_score_mean": [2.0, 4.0], "item_score_std": [1.0, 0.0]}
    assert item_score_stats([]) == {"item_score_mean": [], "item_score_std": []}
