"""Shared-prefix prefill (judges/local_prefix.py): the same logits and scores as the unshared pass,
with the shared tokens run once."""
import asyncio

import pytest
import torch

from mpo_fast.judges import JudgeRequest, JudgeSettings, LocalJudge, ScoreChoices
from mpo_fast.judges.local_scoring import LocalChoiceScorer
from mpo_fast.judges.prompts import rm_messages, score_spec
from mpo_fast.parsing import ScoreSpec
from mpo_fast.rubrics import Rubric, RubricItem
from tests.judges.tiny_models import make_model, make_tokenizer

RUBRIC = Rubric(task="Grade a short essay on the sea.", context="Clear prose wins.",
                items=(RubricItem("Clarity", "Clear, correct prose.", 9), RubricItem("Relevance", "Answers the prompt.", 5)))
PROMPTS = ["Write about the sea and what it means to you.", "Describe a storm you remember."]
RESPONSES = ["The sea is blue. I like it.", "Waves, wind and rain all night long.", "It was loud.", "I do not remember."]


def _requests():
    return [JudgeRequest(prompt=p, response=r, rubric=RUBRIC) for p in PROMPTS for r in RESPONSES]


def _judge_seqs(tok, requests):
    spec = score_spec(RUBRIC, (0, 1), None)
    out = []
    for r in requests:
        text = tok.apply_chat_template(rm_messages(r, (0, 1), spec, "ab12cd"), tokenize=False, add_generation_prompt=True)
        out.append(tok(text + "Scores:\n<item1>", add_special_tokens=False)["input_ids"])
    return out


@pytest.fixture(scope="module")
def tiny():
    tok = make_tokenizer()
    return make_model(tok, layers=2), tok


def test_judge_prompts_put_rubric_and_instructions_before_the_sample():
    msgs = rm_messages(_requests()[0], (0, 1), score_spec(RUBRIC, (0, 1), None), "ab12cd")
    user = msgs[-1]["content"]
    assert user.index("# Rubric") < user.index("# What to do") < user.index("# Prompt") < user.index("# Response")


def test_shared_prefill_matches_one_left_padded_batch(tiny):
    model, tok = tiny
    seqs = _judge_seqs(tok, _requests())
    plain = LocalChoiceScorer(model, tok, share_prefix=False)
    shared = LocalChoiceScorer(model, tok)
    with torch.inference_mode():
        ref, _, _ = plain._prefix_pass(seqs, want_cache=True)
        assert shared.prefill.worth_it(seqs)
        got, cache, mask = shared._prefix_pass(seqs, want_cache=True)
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max()
    stats = shared.prefill.stats
    total = sum(len(s) for s in seqs)
    run = stats["head_tokens_run"] + stats["group_tokens_run"] + stats["row_tokens_run"]
    assert stats["group_tokens_run"] > 0  # the two groups' prompts each ran once
    assert run < 0.6 * total, (run, total)
    assert int(mask.sum()) == total  # the mask counts every real token exactly once


def test_scores_equal_the_unshared_path_and_the_head_is_reused(tiny):
    model, tok = tiny
    seqs = _judge_seqs(tok, _requests())
    choices = [ScoreChoices.for_item(ScoreSpec(hi=9.0), 0)] * len(seqs)
    plain = LocalChoiceScorer(model, tok, share_prefix=False).score(seqs, choices)
    scorer = LocalChoiceScorer(model, tok)
    first = scorer.score(seqs, choices)
    before = dict(scorer.prefill.stats)
    again = scorer.score(seqs, choices)  # the same rows: kept, only each row's last token runs again
    assert scorer.prefill.stats["head_tokens_run"] == before["head_tokens_run"]
    assert scorer.prefill.stats["row_hits"] == len(seqs)
    assert scorer.prefill.stats["row_tokens_run"] - before["row_tokens_run"] == len(seqs)
    for a, b, c in zip(plain, first, again):
        assert a.probs == pytest.approx(b.probs, abs=1e-5)
        assert b.probs == pytest.approx(c.probs, abs=1e-6)


def test_a_new_nonce_reuses_the_rubric_part_of_the_kept_head(tiny):
    model, tok = tiny
    scorer = LocalChoiceScorer(model, tok)
    seqs = _judge_seqs(tok, _requests())
    spec = score_spec(RUBRIC, (0, 1), None)
    other = []
    for r in _requests():
        text = tok.apply_chat_template(rm_messages(r, (0, 1), spec, "ff9900"), tokenize=False, add_generation_prompt=True)
        other.append(tok(text + "Scores:\n<item1>", add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        scorer._prefix_pass(seqs, want_cache=True)
        head = scorer.prefill.stats["head_tokens_run"]
        got, _, _ = scorer._prefix_pass(other, want_cache=True)
        ref, _, _ = LocalChoiceScorer(model, tok, share_prefix=False)._prefix_pass(other, want_cache=True)
    assert scorer.prefill.stats["head_tokens_run"] - head < head / 4  # only the stretch after the nonce
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


def test_rows_continuing_the_last_batch_run_only_their_new_tokens(tiny):
    model, tok = tiny
    seqs = _judge_seqs(tok, _requests())
    longer = [s + tok(" fine work. Scores:", add_special_tokens=False)["input_ids"] for s in seqs]
    scorer = LocalChoiceScorer(model, tok)
    with torch.inference_mode():
        scorer._prefix_pass(seqs[::-1], want_cache=True)  # another row order: rows are matched by content
        before = scorer.prefill.stats["row_tokens_run"]
        got, cache, mask = scorer._prefix_pass(longer, want_cache=True)
        ref, _, _ = LocalChoiceScorer(model, tok, share_prefix=False)._prefix_pass(longer, want_cache=True)
    assert scorer.prefill.stats["row_hits"] == len(seqs)
    assert scorer.prefill.stats["row_tokens_run"] - before <= len(seqs) * 12
    assert torch.allclose(got, ref, atol=1e-4, rtol=0), (got - ref).abs().max()
    assert int(mask.sum()) == sum(len(s) for s in longer)


def test_changed_weights_empty_the_kept_caches(tiny):
    model, tok = tiny
    model = __import__("copy").deepcopy(model)
    seqs = _judge_seqs(tok, _requests())
    scorer = LocalChoiceScorer(model, tok)
    with torch.inference_mode():
        scorer._prefix_pass(seqs, want_cache=True)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.01)  # what an optimizer step does: in place
    with torch.inference_mode():
        got, _, _ = scorer._prefix_pass(seqs, want_cache=True)
        ref, _, _ = LocalChoiceScorer(model, tok, share_prefix=False)._prefix_pass(seqs, want_cache=True)
    assert scorer.prefill.stats["row_hits"] == 0 and scorer.prefill.stats["head_hits"] == 0
    assert torch.allclose(got, ref, atol=1e-4, rtol=0)


def test_expected_judge_scores_do_not_change_with_sharing(tiny, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(ScoreSpec, "new_nonce", staticmethod(lambda: "ab12cd"))  # one prompt text for both judges
    settings = JudgeSettings(scoring="expected", call_mode="all_items", rationale_tokens=3, min_score_mass=0.0)
    shared = LocalJudge(model, tok, settings)
    plain = LocalJudge(model, tok, settings)
    plain.llm.scorer.prefill = None
    plain.llm.share_prefix = False
    a = asyncio.run(shared.judge(_requests()))
    b = asyncio.run(plain.judge(_requests()))
    for x, y in zip(a, b):
        assert x.ok and y.ok
        assert x.item_scores == pytest.approx(y.item_scores, abs=1e-4)


@pytest.mark.slow
def test_embedded_judge_scores_within_fp32_noise(embedded):
    model, tok = embedded
    seqs = _judge_seqs(tok, _requests())
    choices = [ScoreChoices.for_item(ScoreSpec(hi=9.0), 0)] * len(seqs)
    plain = LocalChoiceScorer(model, tok, share_prefix=False).score(seqs, choices)
    shared = LocalChoiceScorer(model, tok).score(seqs, choices)
    for a, b in zip(plain, shared):
        assert a.probs == pytest.approx(b.probs, abs=2e-4)


@pytest.mark.slow
def test_embedded_rationales_equal_with_the_shared_prefill(embedded):
    from mpo_fast.judges import LocalLLM

    model, tok = embedded
    spec = score_spec(RUBRIC, (0, 1), None)
    convs = [rm_messages(r, (0, 1), spec, "ab12cd") for r in _requests()]
    shared = asyncio.run(LocalLLM(model, tok).generate(convs, max_tokens=12))
    plain = asyncio.run(LocalLLM(model, tok, share_prefix=False).generate(convs, max_tokens=12))
    assert [g.text for g in shared] == [g.text for g in plain]


def test_one_row_at_a_time_shares_the_head_with_the_rows_before(tiny):
    # The pipeline judges one sample per call: the second sample runs only what follows the
    # part it shares with the first, and its scoring pass continues its own rationale pass.
    model, tok = tiny
    seqs = _judge_seqs(tok, _requests())
    scorer = LocalChoiceScorer(model, tok)
    plain = LocalChoiceScorer(model, tok, share_prefix=False)
    with torch.inference_mode():
        for i, s in enumerate(seqs[:3]):
            got, _, _ = scorer._prefix_pass([s[:-6]], want_cache=True)  # "rationale pass"
            ran = scorer.prefill.stats["head_tokens_run"]
            got2, _, _ = scorer._prefix_pass([s], want_cache=True)  # "scoring pass"
            assert scorer.prefill.stats["head_tokens_run"] == ran
            ref, _, _ = plain._prefix_pass([s], want_cache=True)
            assert torch.allclose(got2, ref, atol=1e-4, rtol=0)
        assert scorer.prefill.stats["row_hits"] == 3
        assert scorer.prefill.stats["head_tokens_run"] < len(seqs[0]) + 2 * (len(seqs[0]) // 2)
