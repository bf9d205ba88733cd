from __future__ import annotations

import importlib.util

import pytest

from mpo_fast.evaluation.accuracy import accuracy
from mpo_fast.tasks.example import TaskExample


def _ex(i, reference=None, label=None):
    return TaskExample(id=str(i), prompt="q", reference=reference, label=label, meta={})


def test_math_accuracy_with_the_task_checker():
    examples = [_ex(0, "3/4"), _ex(1, "12"), _ex(2, "5"), _ex(3, "7")]
    responses = ["so \\boxed{0.75}", "answer \\boxed{12 cm}", "\\boxed{6}", "seven, no box"]
    r = accuracy("math", examples, responses, resamples=500)
    assert (r.correct, r.total, r.unanswered) == (2, 4, 1)
    assert r.accuracy.value == 0.5 and 0.0 <= r.accuracy.low <= 0.5 <= r.accuracy.high <= 1.0


def test_ethics_accuracy_with_the_verdict_parser():
    from mpo_fast.tasks.ethics import RIGHT_TAG, WRONG_TAG

    examples = [_ex(0, label="RIGHT"), _ex(1, label="WRONG"), _ex(2, label="WRONG"), _ex(3, label="RIGHT")]
    responses = [f"fine. {RIGHT_TAG}", f"bad. {WRONG_TAG}", f"hedge {RIGHT_TAG} {WRONG_TAG}", "no verdict"]
    r = accuracy("ethics", examples, responses, resamples=500)
    assert (r.correct, r.unanswered) == (2, 2)


def test_accuracy_refuses_a_task_without_checker():
    with pytest.raises(ValueError, match="no answer checker"):
        accuracy("essay", [_ex(0)], ["x"])


@pytest.mark.skipif(importlib.util.find_spec("rouge_score") is not None, reason="rouge-score is installed")
def test_rouge_without_the_library_names_the_install():
    from mpo_fast.evaluation.rouge import rouge_summary

    with pytest.raises(ImportError, match="pip install rouge-score"):
        rouge_summary(["a cat"], ["the cat"])


def test_rouge_against_the_library():
    pytest.importorskip("rouge_score")
    from rouge_score import rouge_scorer

    from mpo_fast.evaluation.rouge import rouge_per_example, rouge_summary

    preds = ["the cat sat on the mat", "a quick brown fox", "nothing alike"]
    refs = ["the cat was sitting on the mat", "the quick brown fox jumps", None]
    per = rouge_per_example(preds, refs)
    lib = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for i in range(2):
        s = lib.score(refs[i], preds[i])
        for t in ("rouge1", "rouge2", "rougeL"):
            assert per[t][i] == pytest.approx(s[t].fmeasure)
    assert rouge_summary(preds, refs, resamples=200)["rouge1"].value == pytest.approx(per["rouge1"][:2].mean())
