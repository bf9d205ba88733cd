"""Loop mechanics on a tiny random model with a synthetic judge (no model behind the reward)."""
import json

import pytest
import torch

from mpo_fast.trainer import JudgeFailureRateError, MPOTrainer, OutputDirInUseError
from mpo_fast.trainer.checkpoint import list_checkpoints
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge, vowel_fraction


def _trainer(tmp_path, tokenizer, model=None, *, rm=None, mrm=None, peft_config=None, **cfg):
    model = model if model is not None else tiny_causal_lm(tokenizer, seed=0)
    return MPOTrainer(
        model, args=tiny_config(tmp_path, **cfg), train_dataset=PROMPTS, judge=rm or SyntheticJudge(),
        meta_judge=mrm, peft_config=peft_config, processing_class=tokenizer, task=ShortEssayTask(),
    )


def test_every_trainable_parameter_changes_full_finetune(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, train={"max_steps": 2, "kl_coef": 0.05})
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    result = trainer.train()
    assert result.steps == 2
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(before[n], p)]
    assert not unchanged
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[1]["kl"] > 0  # the frozen copy is the reference
    for key in ("reward_mean", "reward_std", "loss", "clip_fraction", "response_length_mean", "judge_failed",
                "samples_per_s", "generate_s", "judge_s", "update_s", "lr", "grad_norm"):
        assert key in rows[0], key


def test_every_lora_parameter_changes_and_base_stays(tmp_path, tokenizer):
    from peft import LoraConfig

    trainer = _trainer(
        tmp_path, tokenizer, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]),
        train={"max_steps": 3, "kl_coef": 0.05, "learning_rate": 1e-2},
    )
    named = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in named.items()}
    trainer.train()
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # lora_B starts at 0, so lora_A only receives gradient from step 2 on: 3 steps move both.
    assert [n for n in trainable if torch.equal(before[n], named[n])] == []
    assert all(torch.equal(before[n], p) for n, p in named.items() if not p.requires_grad)
    assert (tmp_path / "run" / "checkpoints" / "step-000003" / "model" / "adapter_model.safetensors").is_file()


def test_synthetic_reward_rises(tmp_path, tokenizer):
    trainer = _trainer(
        tmp_path, tokenizer,
        rollout={"prompts_per_step": 4, "num_generations": 8, "max_new_tokens": 8},
        train={"max_steps": 25, "learning_rate": 3e-3, "micro_batch_size": 32},
        log={"save_steps": 0},
    )
    result = trainer.train()
    rewards = [r["reward_mean"] for r in result.metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards  # vowel share of a random 100-char model starts near 0.1


def test_failed_judgements_are_masked_not_zero(tmp_path, tokenizer):
    judge = SyntheticJudge(lambda text: 0.5 + 0.5 * vowel_fraction(text), fail_when=lambda call, i, req: i % 4 == 0)
    trainer = _trainer(tmp_path, tokenizer, rm=judge, train={"max_steps": 2}, judge={"max_failure_rate": 0.5})
    result = trainer.train()
    assert result.judge_failures == 4 and result.judgements == 16
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert all(r["judge_failed"] == 2 and r["valid_samples"] == 6 for r in rows)
    assert all(r["reward_min"] >= 0.5 for r in rows)  # a 0 would have pulled the minimum down
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    failed = [s for s in samples if not s["valid"]]
    assert len(failed) == 4 and all(s["reward"] is None and s["advantage"] == 0 for s in failed)
    assert all(s["judge_error"] for s in failed)


def test_failure_rate_stops_the_run_with_its_last_checkpoint(tmp_path, tokenizer):
    judge = SyntheticJudge(fail_when=lambda call, i, req: call >= 3)  # the judge dies after step 2
    trainer = _trainer(tmp_path, tokenizer, rm=judge, train={"max_steps": 6},
                       judge={"max_failure_rate": 0.3, "min_judged": 8})
    with pytest.raises(JudgeFailureRateError, match=r"stopping at step 3: 8 of 24 .*step-000002.*resume=true"):
        trainer.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "run")] == [2]
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1, 2]


def test_rubric_evolves_at_step_boundaries_and_samples_record_it(tmp_path, tokenizer):
    meta = AppendingMetaJudge()
    trainer = _trainer(tmp_path, tokenizer, mrm=meta, train={"max_steps": 5}, meta={"interval": 2, "num_samples": 4})
    result = trainer.train()
    # the meta-judge gets every sample since the last MPO step (2 steps x 8), capped at 4 x num_samples
    assert [c[2] for c in meta.calls] == [2, 4] and all(c[1] == 16 for c in meta.calls)
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["rubric_version"] for r in rows] == [1, 1, 2, 2, 3]
    assert [r["rubric_evolved"] for r in rows] == [None, 2, None, 3, None]
    by_step = {}
    for s in read_jsonl(tmp_path / "run" / "samples.jsonl"):
        by_step.setdefault(s["step"], set()).add(s["rubric_version"])
    assert by_step == {1: {1}, 2: {1}, 3: {2}, 4: {2}, 5: {3}}
    # the judge saw the rubric of the version recorded (one more item per version)
    n = len(trainer.task.initial_rubric().items)
    assert [len(reqs[0].rubric.items) for reqs in trainer.judge.requests] == [n, n, n + 1, n + 1, n + 2]
    assert result.rubric_versions == [1, 2, 3]
    index = json.loads((tmp_path / "run" / "rubrics" / "index.json").read_text())
    assert [v["version"] for v in index["versions"]] == [1, 2, 3]


def test_output_dir_of_another_run_is_not_overwritten_silently(tmp_path, tokenizer):
    _trainer(tmp_path, tokenizer, train={"max_steps": 1}).train()
    with pytest.raises(OutputDirInUseError, match="resume=true.*overwrite=true"):
        _trainer(tmp_path, tokenizer, train={"max_steps": 1}).train()
    _trainer(tmp_path, tokenizer, train={"max_steps": 1}, overwrite=True).train()
    assert [r["step"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]


_COMPARED = ("reward_mean", "reward_std", "loss", "grad_norm", "lr", "response_length_mean", "rubric_version", "kl")


@pytest.mark.parametrize("lora", [False, True])
def test_interrupted_and_resumed_run_matches_uninterrupted(tmp_path, tokenizer, lora):
    from peft import LoraConfig

    def peft():
        return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]) if lora else None

    cfg = dict(train={"max_steps": 5, "kl_coef": 0.05, "lr_scheduler": "cosine", "warmup_steps": 1},
               meta={"interval": 2, "num_samples": 4}, log={"save_steps": 2})
    straight = _trainer(tmp_path / "a", tokenizer, mrm=AppendingMetaJudge(), peft_config=peft(), **cfg)
    straight.train()

    crashing = _trainer(tmp_path / "b", tokenizer, mrm=AppendingMetaJudge(), peft_config=peft(),
                        rm=SyntheticJudge(crash_on_call=4), **cfg)
    with pytest.raises(RuntimeError, match="injected crash on judge call 4"):
        crashing.train()
    assert [s for s, _ in list_checkpoints(tmp_path / "b" / "run")] == [2]
    resumed = _trainer(tmp_path / "b", tokenizer, mrm=AppendingMetaJudge(), peft_config=peft(), resume=True, **cfg)
    resumed.train()

    a = read_jsonl(tmp_path / "a" / "run" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5]
    for ra, rb in zip(a, b):
        for key in _COMPARED:
            assert ra[key] == rb[key], (ra["step"], key, ra[key], rb[key])
    sa = read_jsonl(tmp_path / "a" / "run" / "samples.jsonl")
    sb = read_jsonl(tmp_path / "b" / "run" / "samples.jsonl")
    assert [s["response"] for s in sa] == [s["response"] for s in sb]
    pa = dict(straight.model.named_parameters())
    for name, p in resumed.model.named_parameters():
        assert torch.equal(pa[name], p), name
