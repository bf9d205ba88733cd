"""Every scoring mode on the embedded SmolLM2-135M-Instruct (slow: loads the model)."""
import asyncio
import math

import pytest

from mpo_fast.judges import JudgeRequest, JudgeSettings, LocalJudge, LocalLLM, MetaJudge, MetaSample, MetaSettings, ScoreChoices
from mpo_fast.judges.constrained import score_tags_constraint
from mpo_fast.parsing import ScoreSpec, parse_scores
from mpo_fast.rubrics import ProposalLimits, Rubric, RubricItem
from tests.helpers import has_module

pytestmark = pytest.mark.slow
RUBRIC = Rubric(task="essay", context="Short essays.", items=(RubricItem("Clarity", "Clear, correct prose.", 5), RubricItem("Relevance", "Answers the prompt.", 5)))
GRADER = [
    {"role": "system", "content": "You grade short essays from 0 to 10."},
    {"role": "user", "content": "Essay: 'The sea is blue. I like it.' Justify briefly, then write <score>N</score>."},
]


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_constrained_50_generations_all_valid(embedded):
    model, tok = embedded
    llm = LocalLLM(model, tok, max_batch_size=50)
    spec = ScoreSpec(hi=10.0)
    c = score_tags_constraint(spec, [ScoreChoices.for_item(spec, 0)], min_chars=8, max_chars=24)
    gens = asyncio.run(llm.generate([GRADER] * 50, max_tokens=8, temperature=0.8, constraints=[c] * 50))
    parsed = parse_scores([g.text for g in gens], spec)
    assert bool(parsed.all_ok.all()), [g.text for g, ok in zip(gens, parsed.all_ok.tolist()) if not ok][:3]


def test_expected_scores_finite_in_range_and_ordered_like_argmax(embedded):
    model, tok = embedded
    llm = LocalLLM(model, tok)
    choices = ScoreChoices.for_item(ScoreSpec(hi=10.0), 0)
    rationales = [
        "This essay is excellent, flawless and deep: a perfect 10.",
        "This essay is terrible, empty and wrong: it deserves 0.",
        "It is average.",
        "Mediocre, a 5.",
        "Poor, almost nothing.",
        "Very good work, close to perfect.",
    ]
    dists = asyncio.run(llm.score_choices([GRADER] * len(rationales), [r + "\n<score>" for r in rationales], [choices] * len(rationales)))
    values = [d.expected(choices.values) for d in dists]
    top = [choices.values[d.argmax] for d in dists]
    assert all(v is not None and math.isfinite(v) and 0.0 <= v <= 10.0 for v in values)
    assert all(0.05 < d.mass <= 1.0 for d in dists)  # measured 0.41-0.68 after a plain <score>
    concordant = discordant = 0
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            if top[i] != top[j]:
                same = (top[i] < top[j]) == (values[i] < values[j])
                concordant += same
                discordant += not same
    assert concordant > discordant, (values, top)


@pytest.mark.parametrize("scoring", ["expected", "constrained", "parse"])
def test_local_judge_modes(embedded, scoring):
    if scoring == "constrained" and not has_module("xgrammar"):
        pytest.skip("xgrammar not installed")
    model, tok = embedded
    # One request, short answers: a 380-token judge prompt costs ~3 s to prefill on a loaded 2-core CPU.
    judge = LocalJudge(model, tok, JudgeSettings(scoring=scoring, max_rationale_chars=40, rationale_tokens=16, max_new_tokens=32, parse_retries=0))
    reqs = [JudgeRequest("Write two sentences about the sea.", "The sea is vast and blue. Waves crash on the shore.", RUBRIC)]
    out = asyncio.run(judge.judge(reqs))
    if scoring == "parse":
        # The 135M model rarely writes the tag unconstrained: failures are masked, never 0.
        assert all((j.ok and 0 <= j.reward <= 1) or (j.reward is None and j.error) for j in out)
    else:
        assert judge.stats.failure_rate == 0.0, [j.error for j in out]
        assert all(0.0 <= j.reward <= 1.0 for j in out)
        for j in out:
            assert j.reward == pytest.approx(sum(j.item_scores) / RUBRIC.max_total)
            assert all(0 <= s <= it.max_points for s, it in zip(j.item_scores, RUBRIC.items))
            if scoring == "constrained":
                assert all(s == int(s) for s in j.item_scores)  # read from the validated grammar match
            else:  # in process every path is observed; the mass clears the default threshold
                assert all(m >= JudgeSettings().min_score_mass for m in j.score_mass), j.score_mass
                assert all(u == 0.0 for u in j.unresolved_mass)


@pytest.mark.skipif(not has_module("xgrammar"), reason="xgrammar not installed")
def test_meta_judge_on_the_embedded_model(embedded):
    model, tok = embedded
    settings = MetaSettings(num_samples=1, analysis_tokens=32, limits=ProposalLimits(max_items=2, max_title_chars=24), max_description_chars=48)
    sample = MetaSample("Write about the sea.", "sea", (0.0, 1.0), 0.1, "Too short.")
    evo = asyncio.run(MetaJudge(LocalLLM(model, tok), settings).evolve(RUBRIC, [sample], step=1))
    assert len(evo.analyses) == 1
    # a valid proposal, or a logged rejection (a failed MRM merge is logged as a failure of its own)
    assert len(evo.proposals) + len([f for f in evo.failures if f.stage == "refine"]) == 1
    if evo.changed:
        assert 1 <= len(evo.rubric.items) <= 2 and all(1 <= it.max_points <= 10 for it in evo.rubric.items)
