"""The MPOTrainer's stages under both schedules: at max_staleness=0 the overlapped pipeline trains on
exactly the batches the serial one does (same samples, rewards, advantages and final weights);
at max_staleness=1 it trains off-policy with the ratio taken against the behaviour log-probs."""
from __future__ import annotations

import json

import pytest
import torch

from mpo_fast.trainer import MPOTrainer
from mpo_fast.trainer.pipeline import PipelineConfigError, PipelineSettings, compare_rewards, train_pipelined
from mpo_fast.trainer.update import PolicyUpdater
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge

FAST = dict(judge_timeout_s=10.0, stall_timeout_s=30.0, shutdown_timeout_s=5.0)


def _trainer(tmp_path, tokenizer, name, **cfg):
    return MPOTrainer(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(tmp_path / name, **cfg), train_dataset=PROMPTS,
        judge=SyntheticJudge(), meta_judge=AppendingMetaJudge(), processing_class=tokenizer, task=ShortEssayTask(),
    )


def test_overlapped_at_staleness_zero_trains_exactly_like_serial(tmp_path, tokenizer):
    cfg = dict(train={"max_steps": 4}, meta={"interval": 100})
    a, b = _trainer(tmp_path, tokenizer, "serial", **cfg), _trainer(tmp_path, tokenizer, "overlapped", **cfg)
    ser = train_pipelined(a, PipelineSettings(mode="serial", max_staleness=0, judge_concurrency=1, **FAST))
    ovl = train_pipelined(b, PipelineSettings(mode="overlapped", max_staleness=0, **FAST))
    assert compare_rewards(ser, ovl) == {"matched": 32, "of": 32, "mismatched": 0, "max_abs_diff": 0.0}
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    rows = read_jsonl(tmp_path / "overlapped" / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["staleness"] == 0 for r in rows)
    samples = read_jsonl(tmp_path / "overlapped" / "run" / "samples.jsonl")
    assert len(samples) == 32 and {s["rubric_version"] for s in samples} == {1}


def test_staleness_one_trains_off_policy_against_behaviour_logprobs(tmp_path, tokenizer, monkeypatch):
    used = []
    original = PolicyUpdater.update

    def spy(self, batch, *, behaviour_old_logp=False):
        if behaviour_old_logp:
            used.append(batch.behaviour_logp is not None)
        return original(self, batch, behaviour_old_logp=behaviour_old_logp)

    monkeypatch.setattr(PolicyUpdater, "update", spy)
    trainer = _trainer(tmp_path, tokenizer, "stale", train={"max_steps": 5}, meta={"interval": 2})
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    report = train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1, evolve_every=2,
                                                       rubric_swap="next_step", **FAST))
    stale_steps = [s.step for s in report.steps if s.staleness == 1]
    assert report.max_observed_staleness <= 1 and stale_steps, "the producer never ran ahead"
    assert used and all(used) and len(used) == len(stale_steps)
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    rows = read_jsonl(tmp_path / "stale" / "run" / "metrics.jsonl")
    stale_rows = [r for r in rows if r["staleness"] == 1]
    assert stale_rows and all(r["behaviour_logp_gap"] is not None for r in stale_rows)
    assert report.rubric_swaps, "the meta-judge should have installed a rubric"
    ckpt = sorted((tmp_path / "stale" / "run" / "checkpoints").iterdir())[-1]
    state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").exists() else None
    assert ckpt.name == "step-000005" and (state is None or state["step"] == 5)


def test_a_judge_sharing_the_policy_weights_is_refused_when_overlapped(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, "shared")
    trainer.args.judge.backend, trainer.args.judge.model = "local", "policy"  # as a LoRA run would configure it
    with pytest.raises(PipelineConfigError, match="judge.model=policy shares the policy's weights"):
        train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=0, **FAST))


def test_an_unreachable_judge_endpoint_fails_at_start_up_naming_it(tmp_path, tokenizer):
    from mpo_fast.judges import EndpointConfig, OpenAIJudge

    trainer = _trainer(tmp_path, tokenizer, "down")
    trainer.judge = OpenAIJudge(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="m", structured_output="none"))
    with pytest.raises(PipelineConfigError, match=r"the judge endpoint http://127.0.0.1:9/v1 is unreachable .*start the server"):
        train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1, **FAST))
    assert not (tmp_path / "down" / "run" / "checkpoints").exists()
