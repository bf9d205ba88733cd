"""MetaJudge (prescreen, analyze -> refine -> merge) and the reward-hacking detector."""
import asyncio
import re
import json
import logging

import pytest

from mpo_fast.judges import HackingDetector, MetaJudge, MetaSample, MetaSettings, prescreen
from mpo_fast.rubrics import GateSettings, ProposalLimits, Rubric, RubricItem
from tests.helpers import has_module
from tests.judges.fakes import ScriptedLLM
from tests.judges.tiny_models import make_model, make_tokenizer

# The analyze -> refine -> deterministic merge path alone (no MRM merge, no gates; those are
# tested in test_meta_gates.py).
DETERMINISTIC = dict(mrm_merge=False, gates=GateSettings(enabled=False))
RUBRIC = Rubric(task="essay", context="Short essays.", items=(RubricItem("Clarity", "Clear prose.", 5), RubricItem("Depth", "Ideas.", 5)))


def _sample(i, reward, length=100):
    scores = (None, None) if reward is None else (reward * 5, reward * 5)
    return MetaSample(prompt=f"p{i}", response="w" * length, item_scores=scores, reward=reward, rationale="because")


def test_prescreen_picks_informative_samples_deterministically():
    samples = [_sample(i, 0.5) for i in range(10)]
    samples[2] = _sample(2, 1.0)  # saturated
    samples[3] = _sample(3, 0.0)  # zero
    samples[4] = _sample(4, 0.6, length=10)  # very short
    samples[5] = _sample(5, 0.4, length=500)  # very long
    samples[6] = _sample(6, None)  # judge failed
    samples[7] = _sample(7, 0.9)
    picked = prescreen(samples, 7)
    reasons = dict(picked)
    assert reasons[2] == "saturated" and reasons[3] == "zero" and reasons[4] == "very_short"
    assert reasons[5] == "very_long" and reasons[6] == "judge_failed" and reasons[7] == "highest_scored"
    assert len({i for i, _ in picked}) == 7
    assert prescreen(list(samples), 7) == picked  # same input, same choice
    assert len(prescreen(samples, 100)) == 10 and prescreen([], 3) == []


def _analysis(m, c):
    return "Too lenient: the response is padded; add a criterion on concision."


def _proposal(items):
    return json.dumps({"items": items})


def test_evolve_merges_valid_proposals_and_logs_invalid_ones(caplog):
    answers = iter([
        _proposal([{"title": "Clarity", "description": "Clear prose, no padding.", "max_points": 5},
                   {"title": "Concision", "description": "No filler sentences.", "max_points": 3}]),
        "Sure! Here is the rubric: clarity and stuff",  # not JSON
        _proposal([{"title": "Clarity", "description": "Clear prose.", "max_points": 5},
                   {"title": "Depth", "description": "Ideas, with examples.", "max_points": 5}]),
    ])

    def respond(m, c):
        if c["constraint"] is None:
            return _analysis(m, c)
        assert c["constraint"].json_schema["properties"]["items"]["maxItems"] == 12
        return next(answers)

    llm = ScriptedLLM(respond=respond)
    samples = [_sample(i, r) for i, r in enumerate([0.9, 0.1, 0.5])]
    with caplog.at_level(logging.WARNING, logger="mpo_fast"):
        evo = asyncio.run(MetaJudge(llm, MetaSettings(num_samples=3, **DETERMINISTIC)).evolve(RUBRIC, samples, step=20))
    assert evo.changed and evo.parent_hash == RUBRIC.content_hash and evo.step == 20
    titles = [it.title for it in evo.rubric.items]
    assert set(titles) == {"Clarity", "Concision", "Depth"}
    assert len(evo.analyses) == 3 and len(evo.proposals) == 2 and evo.calls == 6
    assert [f.stage for f in evo.failures] == ["refine"] and "clarity and stuff" in evo.failures[0].text
    assert "clarity and stuff" in caplog.text  # logged with its text
    # Determinism: the same proposals in another order merge to the same rubric.
    answers2 = iter([_proposal([{"title": "Clarity", "description": "Clear prose.", "max_points": 5},
                                {"title": "Depth", "description": "Ideas, with examples.", "max_points": 5}]),
                     "nope",
                     _proposal([{"title": "Clarity", "description": "Clear prose, no padding.", "max_points": 5},
                                {"title": "Concision", "description": "No filler sentences.", "max_points": 3}])])
    llm2 = ScriptedLLM(respond=lambda m, c: _analysis(m, c) if c["constraint"] is None else next(answers2))
    evo2 = asyncio.run(MetaJudge(llm2, MetaSettings(num_samples=3, **DETERMINISTIC)).evolve(RUBRIC, samples, step=20))
    assert evo2.rubric.content_hash == evo.rubric.content_hash


def test_evolve_keeps_the_rubric_when_nothing_valid_comes_back():
    llm = ScriptedLLM(respond=lambda m, c: _analysis(m, c) if c["constraint"] is None else '{"items": [{"title": "", "max_points": "lots"}]}')
    evo = asyncio.run(MetaJudge(llm, MetaSettings(num_samples=2)).evolve(RUBRIC, [_sample(0, 0.2), _sample(1, 0.8)], step=5))
    assert not evo.changed and evo.rubric is RUBRIC
    assert len(evo.failures) == 2 and all("invalid rubric" in f.error for f in evo.failures)
    # Transport failures in analysis: nothing to refine, rubric kept.
    evo = asyncio.run(MetaJudge(ScriptedLLM(fail_with="http:timeout: x"), MetaSettings(num_samples=2)).evolve(RUBRIC, [_sample(0, 0.2)], step=6))
    assert not evo.changed and evo.failures[0].stage == "analyze"


def test_proposal_bounds_are_enforced():
    judge = MetaJudge(ScriptedLLM(), MetaSettings(limits=ProposalLimits(max_items=2, max_points=5)))
    # Outside the schema the refine call was sent (5 items, 50 points): rejected, never clamped.
    text = _proposal([{"title": f"Title {i}", "description": "described well", "max_points": 50} for i in range(5)])
    with pytest.raises(ValueError, match="schema"):
        judge.parse_proposal(text, RUBRIC)
    text = _proposal([{"title": f"Title {i}", "description": "described well", "max_points": 4} for i in range(2)])
    rubric = judge.parse_proposal(text, RUBRIC)
    assert len(rubric.items) == 2 and all(it.max_points == 4 for it in rubric.items)
    assert rubric.task == "essay" and rubric.context == RUBRIC.context
    with pytest.raises(ValueError, match="items"):
        judge.parse_proposal('{"rubric": []}', RUBRIC)


def test_analyze_prompt_carries_scores_and_reason():
    llm = ScriptedLLM(respond=lambda m, c: _analysis(m, c) if c["constraint"] is None else _proposal([{"title": "Clarity", "description": "x", "max_points": 5}]))
    asyncio.run(MetaJudge(llm, MetaSettings(num_samples=1)).evolve(RUBRIC, [_sample(0, None)], step=1))
    text = llm.log[0][1][-1]["content"]
    assert "no score (grader failed)" in text and "could not produce a score" in text and re.search(r"<response-\w+>", text)


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_evolve_with_a_tiny_model_yields_a_well_formed_rubric_or_keeps_the_old_one():
    tok = make_tokenizer()
    from mpo_fast.judges import LocalLLM

    llm = LocalLLM(make_model(tok, seed=2), tok)
    settings = MetaSettings(num_samples=2, analysis_tokens=8, limits=ProposalLimits(max_items=2, max_title_chars=8), max_description_chars=16)
    evo = asyncio.run(MetaJudge(llm, settings).evolve(RUBRIC, [_sample(0, 0.9), _sample(1, 0.1)], step=3))
    # Schema-constrained output is valid JSON; what it says may still be rejected (e.g. blank titles).
    assert all(f.stage in ("refine", "merge") and "invalid rubric" in f.error for f in evo.failures)
    # Random weights write random criteria: a change needs a proposal that passed the gates, and a
    # proposal that did not change the rubric was refused by a gate with its reason.
    assert not evo.changed or evo.proposals
    if evo.proposals and not evo.changed:
        assert evo.rejections and all(r.reason for r in evo.rejections)
    if evo.changed:
        assert {i.title for i in evo.rubric.items} & {i.title for i in RUBRIC.items}
    for item in evo.rubric.items:
        assert 1 <= item.max_points <= 10


def _feed(det, steps, length, reward, rationale, start=0):
    fired = []
    for s in range(start, start + steps):
        fired += det.observe(s, [length] * 4, [reward] * 4, [rationale] * 4)
    return fired


def test_hacking_detector_length_collapse_and_cooldown():
    det = HackingDetector(baseline_steps=3, window=2, cooldown_steps=5)
    assert _feed(det, 5, 200, 0.5, 300) == []
    fired = _feed(det, 2, 40, 0.5, 300, start=5)
    assert [s.name for s in fired] == ["length_collapse"] and fired[0].step == 6
    assert _feed(det, 3, 40, 0.5, 300, start=7) == []  # cooldown
    det.rebaseline()
    assert _feed(det, 6, 40, 0.5, 300, start=20) == []  # the new normal


def test_hacking_detector_saturation_needs_shrinking_rationales():
    det = HackingDetector(baseline_steps=3, window=2)
    _feed(det, 3, 200, 0.5, 400)
    assert _feed(det, 3, 200, 0.97, 390, start=3) == []  # high reward, the judge still explains: fine
    det = HackingDetector(baseline_steps=3, window=2)
    _feed(det, 3, 200, 0.5, 400)
    fired = _feed(det, 2, 200, 0.97, 100, start=3)
    assert [s.name for s in fired] == ["reward_saturation"]
    # Failed judgements (None) do not count as rewards.
    assert HackingDetector().observe(0, [10], [None, None]) == []
    with pytest.raises(ValueError):
        HackingDetector(length_drop=1.5)
