"""`mpo-fast experiment` orchestration on tiny models: two arms that differ only in the meta-judge,
three evaluations on the same prompts (each policy generates once), one Elo table."""
from __future__ import annotations

import json

from mpo_fast.evaluation.experiment import MECHANICS_NOTE, run_experiment
from mpo_fast.evaluation.judge_options import EvalJudgeOptions
from mpo_fast.evaluation.runner import EvalSettings
from mpo_fast.trainer import MPOTrainer
from tests.evaluation.test_eval_end_to_end import ScriptedJudge, _loader
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge, vowel_fraction


def test_experiment_trains_both_arms_and_tables_all_three(tmp_path, tokenizer):
    trained = []

    def train(config):
        trained.append((config.output_dir, config.meta.enabled, config.train.max_steps))
        trainer = MPOTrainer(tiny_causal_lm(tokenizer, seed=0), args=config, train_dataset=PROMPTS, judge=SyntheticJudge(),
                             meta_judge=AppendingMetaJudge() if config.meta.enabled else None,
                             processing_class=tokenizer, task=ShortEssayTask())
        trainer.train()
        trainer.close()

    loads: list[str] = []
    out = tmp_path / "exp"
    judge = ScriptedJudge(lambda f, s: "A" if vowel_fraction(f) >= vowel_fraction(s) else "B")
    table = run_experiment(tiny_config(tmp_path), out, steps=3, train=train,
                           settings=EvalSettings(limit=4, max_new_tokens=12, temperature=1.0, resamples=200),
                           judge_options=EvalJudgeOptions(scoring="parse"), loader=_loader(tokenizer, loads),
                           judge_llm=judge)
    assert trained == [(str(out / "mpo"), True, 3), (str(out / "fixed"), False, 3)]
    assert len(json.loads((out / "mpo" / "rubrics" / "index.json").read_text())["versions"]) >= 2
    assert len(json.loads((out / "fixed" / "rubrics" / "index.json").read_text())["versions"]) == 1
    assert sorted(loads) == ["base:embedded", "fixed:step-000003", "mpo:step-000003"]  # one generation each
    assert set(table["ratings"]) == {"base:embedded", "fixed:step-000003", "mpo:step-000003"}
    assert all(r["games"] > 0 for r in table["ratings"].values())
    assert [(p["a"], p["b"]) for p in table["pairs"].values()] == [
        ("mpo:step-000003", "base:embedded"), ("fixed:step-000003", "base:embedded"), ("mpo:step-000003", "fixed:step-000003")]
    md = (out / "experiment.md").read_text()
    assert MECHANICS_NOTE in md and md.count("| mpo:step-000003 vs") == 2
    assert "<table>" in (out / "experiment.html").read_text()
    for name in ("mpo_vs_base", "fixed_vs_base", "mpo_vs_fixed"):
        assert (out / "eval" / f"{name}.json").is_file()

    # a rerun trains nothing, generates nothing and judges nothing again
    trained.clear()
    loads.clear()
    calls = judge.calls
    again = run_experiment(tiny_config(tmp_path), out, steps=3, train=train,
                           settings=EvalSettings(limit=4, max_new_tokens=12, temperature=1.0, resamples=200),
                           judge_options=EvalJudgeOptions(scoring="parse"), loader=_loader(tokenizer, loads),
                           judge_llm=judge)
    assert trained == [] and loads == [] and judge.calls == calls
    assert again["ratings"] == table["ratings"]
