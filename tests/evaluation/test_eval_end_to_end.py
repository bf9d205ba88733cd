"""`mpo-fast eval` end to end on a tiny random policy with scripted judges: the position swap
neutralises a judge that always picks the first response, failures are counted (never a loss or
a tie), a quality judge's verdicts come out right, and a rerun resumes without judging again."""
from __future__ import annotations

import json
import re

import pytest

from mpo_fast.evaluation.judge_options import EvalJudgeOptions
from mpo_fast.evaluation.runner import EvalSettings, run_evaluation
from mpo_fast.judges.llm import Generation
from mpo_fast.trainer.checkpoint import _load_model_weights
from tests.tiny_models import tiny_causal_lm
from tests.trainer.fakes import vowel_fraction

_NONCE = re.compile(r"<verdict-([0-9a-f]+)>X</verdict-\1>")
_FENCE = re.compile(r"<response-([ab])-[0-9a-f]+>\n(.*?)\n</response-\1-[0-9a-f]+>", re.S)


class ScriptedJudge:
    """The judges' LLM interface with a scripted answer: `choose(first, second) -> "A" | "B" | None`
    (None: the call fails like a dropped connection)."""

    model_id = "scripted"
    constraint_form = None
    can_score_prefill = False
    can_chat_logprobs = False

    def __init__(self, choose):
        self.choose = choose
        self.calls = 0

    async def prepare(self):
        return None

    async def generate(self, conversations, *, max_tokens, temperature=0.0, constraints=None, stop=None, top_logprobs=0):
        out = []
        for conv in conversations:
            self.calls += 1
            text = conv[-1]["content"]
            nonce = _NONCE.search(text).group(1)
            fences = dict(_FENCE.findall(text))
            letter = self.choose(fences["a"], fences["b"])
            if letter is None:
                out.append(Generation(text="", finish_reason="error", error="scripted: connection dropped"))
            else:
                out.append(Generation(text=f"Compared both. <verdict-{nonce}>{letter}</verdict-{nonce}>", finish_reason="stop"))
        return out


def _loader(tokenizer, counter):
    def load(spec, config):
        counter.append(spec.label)
        model = tiny_causal_lm(tokenizer, seed=0)
        if spec.checkpoint is not None:
            _load_model_weights(model, spec.checkpoint / "model")
        return model.eval(), tokenizer

    return load


SETTINGS = EvalSettings(limit=6, max_new_tokens=16, temperature=1.0, resamples=300)


PARSE = EvalJudgeOptions(scoring="parse")  # the training judge's default (expected) needs prefill scoring


def _run(tiny_run, tokenizer, judge, out, loads, **kw):
    return run_evaluation(tiny_run, "base", out, settings=SETTINGS, loader=_loader(tokenizer, loads), judge_llm=judge,
                          judge_options=PARSE, **kw)


def test_swap_neutralises_a_first_position_judge_and_failures_are_masked(tiny_run, tokenizer, tmp_path):
    fail_on = set()

    def first_always(first, second):
        # fail every call whose first response is among a fixed set (both orders of some prompts)
        return None if first in fail_on else "A"

    loads: list[str] = []
    out = tmp_path / "eval" / "first.json"
    # a pass without failures first, to learn the responses
    result = _run(tiny_run, tokenizer, ScriptedJudge(lambda f, s: "A"), out, loads)
    p = result["pairwise"]
    assert (p["wins"], p["losses"], p["ties"], p["judge_failures"]) == (0, 0, 6, 0)
    assert p["position_bias"]["value"] == 1.0 and p["win_rate"]["value"] == 0.5
    assert result["policies"]["a"]["id"].endswith(":step-000004") and result["policies"]["b"]["id"] == "base:embedded"
    assert sorted(loads) == sorted([result["policies"]["a"]["id"], "base:embedded"])

    responses = [json.loads(line) for line in out.with_suffix(".responses.jsonl").read_text().splitlines()]
    a_id = result["policies"]["a"]["id"]
    a_texts = [r["text"] for r in responses if r["policy"] == a_id]
    fail_on.update(a_texts[:2])  # the A-first call of the first two prompts fails
    out2 = tmp_path / "eval" / "failing.json"
    judge = ScriptedJudge(first_always)
    loads.clear()
    r2 = _run(tiny_run, tokenizer, judge, out2, loads)
    p2 = r2["pairwise"]
    failed_prompts = sum(1 for rec in r2["records"] if rec["outcome"] == "failed")
    assert p2["judge_failures"] == failed_prompts >= 1
    assert p2["ties"] + p2["judge_failures"] == 6 and p2["wins"] == p2["losses"] == 0
    assert r2["judge"]["failed_calls"] >= 2 and r2["judge"]["errors"] == {"scripted: connection dropped": r2["judge"]["failed_calls"]}
    assert p2["win_rate"]["value"] == 0.5  # failures are not counted as losses or ties

    # resume: successes are cached, only the failed calls are asked again; nothing is regenerated
    loads.clear()
    judge3 = ScriptedJudge(first_always)
    r3 = _run(tiny_run, tokenizer, judge3, out2, loads)
    assert loads == []
    assert judge3.calls == r2["judge"]["failed_calls"]
    assert r3["judge"]["cached_verdicts"] == 12 - r2["judge"]["failed_calls"]


def test_a_quality_judge_is_read_the_same_in_both_orders(tiny_run, tokenizer, tmp_path):
    def vowels(first, second):
        return "A" if vowel_fraction(first) >= vowel_fraction(second) else "B"

    out = tmp_path / "eval" / "quality.json"
    result = _run(tiny_run, tokenizer, ScriptedJudge(vowels), out, [])
    a_id, b_id = result["policies"]["a"]["id"], result["policies"]["b"]["id"]
    rows = [json.loads(line) for line in out.with_suffix(".responses.jsonl").read_text().splitlines()]
    texts = {(r["policy"], r["example_id"]): r["text"] for r in rows}
    for rec in result["records"]:
        fa, fb = vowel_fraction(texts[(a_id, rec["prompt_id"])]), vowel_fraction(texts[(b_id, rec["prompt_id"])])
        expected = "win" if fa > fb else "loss" if fa < fb else "tie"
        assert rec["outcome"] == expected, (rec, fa, fb)
    p = result["pairwise"]
    assert p["wins"] + p["losses"] + p["ties"] == 6 and p["judge_failures"] == 0
    ratings = result["ratings"]
    assert set(ratings) == {a_id, b_id}
    if p["wins"] > p["losses"]:
        assert ratings[a_id]["value"] > ratings[b_id]["value"]
    assert ratings[a_id]["low"] <= ratings[a_id]["value"] <= ratings[a_id]["high"]


def test_checkpoint_choice_and_errors(tiny_run, tokenizer, tmp_path):
    result = _run(tiny_run, tokenizer, ScriptedJudge(lambda f, s: "B"), tmp_path / "e.json", [], checkpoint="step-2")
    assert result["policies"]["a"]["id"].endswith(":step-000002")
    with pytest.raises(FileNotFoundError, match="no checkpoint of step 3"):
        _run(tiny_run, tokenizer, ScriptedJudge(lambda f, s: "B"), tmp_path / "f.json", [], checkpoint="step-3")
    with pytest.raises(ValueError, match="both sides"):
        run_evaluation(tiny_run, f"{tiny_run}:step-4", tmp_path / "g.json", settings=SETTINGS,
                       loader=_loader(tokenizer, []), judge_llm=ScriptedJudge(lambda f, s: "A"), judge_options=PARSE)


def test_two_runs_with_the_same_folder_name_get_distinct_ids(tiny_run, tokenizer, tmp_path):
    import shutil

    other = tmp_path / "elsewhere" / tiny_run.name
    shutil.copytree(tiny_run, other)
    result = run_evaluation(tiny_run, str(other), tmp_path / "same.json", settings=SETTINGS, loader=_loader(tokenizer, []),
                            judge_llm=ScriptedJudge(lambda f, s: "A"), judge_options=PARSE)
    a, b = result["policies"]["a"]["id"], result["policies"]["b"]["id"]
    assert a != b and a.endswith("/run:step-000004") and b == "elsewhere/run:step-000004"


@pytest.mark.parametrize("task", ["math", "ethics", "summarization"])
def test_tasks_with_references_get_accuracy_or_rouge(tiny_run, tokenizer, tmp_path, task):
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["task"].update(name=task, rubric=None, max_prompt_tokens=100_000)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    judge = ScriptedJudge(lambda f, s: "A")
    result = run_evaluation(run, "base", run / "eval" / "x.json", settings=EvalSettings(limit=3, max_new_tokens=8, resamples=200),
                            loader=_loader(tokenizer, []), judge_llm=judge, judge_options=PARSE)
    ids = [result["policies"]["a"]["id"], result["policies"]["b"]["id"]]
    if task in ("math", "ethics"):
        assert "pairwise" not in result and judge.calls == 0
        for pid in ids:
            acc = result["accuracy"][pid]
            assert acc["total"] == 3 and acc["correct"] + acc["unanswered"] <= 3
    else:
        assert result["pairwise"]["ties"] == 3 and judge.calls == 6  # summaries are also compared pairwise
        for pid in ids:
            assert set(result["rouge"][pid]) == {"rouge1", "rouge2", "rougeL"}
            assert 0.0 <= result["rouge"][pid]["rouge1"]["value"] <= 1.0
