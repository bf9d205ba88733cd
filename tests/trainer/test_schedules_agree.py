"""One step path: every schedule writes the same files and trains with the same stages.

The serial loop (MPOTrainer.train_step), the pipelined serial and overlapped schedules and the
data-parallel trainer (world size 1) write metrics.jsonl rows and samples.jsonl records with the same
keys (with the TRL users' API too: reward functions, an eval set, callbacks); PPO and KL-in-the-reward
run on the overlapped schedule, identical to the pipelined serial one at max_staleness=0 and against
the behaviour log-probs at max_staleness=1."""
from __future__ import annotations

import zlib

import pytest
import torch

from mpo_fast.trainer import MPOTrainer
from mpo_fast.trainer import kl_reward
from mpo_fast.trainer.pipeline import PipelineSettings, compare_rewards, train_pipelined
from mpo_fast.trainer.ppo_update import PPOUpdater
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import AppendingMetaJudge, ShortEssayTask, SyntheticJudge

FAST = dict(judge_timeout_s=10.0, stall_timeout_s=30.0, shutdown_timeout_s=5.0)


def _judge():
    # about one judgement in 5 fails, chosen by the response's text (not by call order, which differs
    # between schedules): masked samples and judge_errors in every schedule (P(none in 32) = 0.8^32)
    return SyntheticJudge(fail_when=lambda call, i, req: zlib.crc32(req.response.encode()) % 5 == 0)


def _trainer(root, tokenizer, cls=MPOTrainer, trl=None, **cfg):
    return cls(
        tiny_causal_lm(tokenizer, seed=0), args=tiny_config(root, **cfg), train_dataset=PROMPTS,
        judge=_judge(), meta_judge=AppendingMetaJudge(), processing_class=tokenizer, task=ShortEssayTask(),
        **(trl() if trl is not None else {}),
    )


def short_reward(completions, **kwargs):
    return [1.0 / (1 + len(c)) for c in completions]


class Recorder:
    """Which steps ended and at which steps a new rubric was installed, per run."""

    def __init__(self):
        self.steps, self.evolved = [], []

    def on_step_end(self, trainer, step, metrics):
        self.steps.append(step)

    def on_evolve(self, trainer, step, rubric_version):
        self.evolved.append((step, rubric_version.version))


def _keys(root):
    rows = read_jsonl(root / "run" / "metrics.jsonl")
    samples = read_jsonl(root / "run" / "samples.jsonl")
    row_keys = {frozenset(r) for r in rows}
    sample_keys = {frozenset(s) for s in samples}
    assert len(row_keys) == 1, "every row of one run has the same keys"
    assert len(sample_keys) == 1, "every sample record of one run has the same keys"
    return rows, samples, set(next(iter(row_keys))), set(next(iter(sample_keys)))


def _run_data_parallel(root, tokenizer, monkeypatch, trl=None, **cfg):
    import torch.distributed as dist

    from mpo_fast.trainer import data_parallel
    from mpo_fast.trainer.distributed import DistContext

    # A real gloo group of one process; `current()` reports None for world size 1 (single-process
    # runs never take the data-parallel path), so the trainer is handed its context directly.
    monkeypatch.setattr(data_parallel, "current", lambda: DistContext(0, 1, 0, "gloo"))
    root.mkdir(parents=True, exist_ok=True)
    dist.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=0, world_size=1)
    try:
        trainer = _trainer(root, tokenizer, cls=data_parallel.make_distributed_trainer_class(), trl=trl, **cfg)
        trainer.train()
    finally:
        dist.destroy_process_group()


def test_every_schedule_writes_the_same_fields(tmp_path, tokenizer, monkeypatch):
    cfg = dict(train={"max_steps": 4}, meta={"interval": 2})
    _trainer(tmp_path / "serial", tokenizer, **cfg).train()
    _trainer(tmp_path / "overlapped", tokenizer, pipeline={"mode": "overlapped", "max_staleness": 1,
                                                           "rubric_swap": "next_step", **FAST}, **cfg).train()
    train_pipelined(_trainer(tmp_path / "pipelined_serial", tokenizer, **cfg),
                    PipelineSettings(mode="serial", max_staleness=0, **FAST))
    _run_data_parallel(tmp_path / "dp", tokenizer, monkeypatch, **cfg)

    runs = {name: _keys(tmp_path / name) for name in ("serial", "overlapped", "pipelined_serial", "dp")}
    _, _, row_keys, sample_keys = runs["serial"]
    for name, (rows, samples, rk, sk) in runs.items():
        assert rk == row_keys, (name, sorted(rk ^ row_keys))
        assert sk == sample_keys, (name, sorted(sk ^ sample_keys))
        assert [r["step"] for r in rows] == [1, 2, 3, 4], name
        assert any(r["judge_failed"] for r in rows), name  # the scripted failures reached every schedule
        assert rows[-1]["judge_failure_rate"] == rows[-1]["judge_failed_total"] / (8 * 4), name
        assert all(r["skipped_nonfinite_total"] == 0 for r in rows), name
        assert any(r["rubric_evolved"] for r in rows), name  # meta.interval=2: a refinement was installed
        # overlapped samples carry the judge's per-item scores and rationale, as the serial ones
        ok = [s for s in samples if s["valid"]]
        assert ok and all(s["rationale"].startswith("vowel share") and s["item_scores"] for s in ok), name
        assert all(s["judge_error"] for s in samples if not s["valid"]), name
    assert {r["pipeline"] for r in runs["overlapped"][0]} == {"overlapped"}
    assert {r["world_size"] for r in runs["dp"][0]} == {1}


def test_every_schedule_writes_the_trl_api_fields_and_calls_the_callbacks(tmp_path, tokenizer, monkeypatch):
    # reward functions, an eval set judged every step and callbacks: the rewards/<name>/*, eval/* and
    # per-sample func_rewards fields are the same on every schedule, and on_step_end / on_evolve fire
    # on every schedule (the pipelined ones install rubrics in TrainerStages, not _maybe_evolve)
    cfg = dict(train={"max_steps": 4, "eval_steps": 1}, meta={"interval": 2})
    recorders = {}

    def trl(name):
        def extra():
            recorders[name] = Recorder()
            return dict(reward_funcs=[short_reward], reward_weights=[0.5], eval_dataset=PROMPTS[:2],
                        callbacks=[recorders[name]])
        return extra

    _trainer(tmp_path / "serial", tokenizer, trl=trl("serial"), **cfg).train()
    _trainer(tmp_path / "overlapped", tokenizer, trl=trl("overlapped"),
             pipeline={"mode": "overlapped", "max_staleness": 1, "rubric_swap": "next_step", **FAST}, **cfg).train()
    train_pipelined(_trainer(tmp_path / "pipelined_serial", tokenizer, trl=trl("pipelined_serial"), **cfg),
                    PipelineSettings(mode="serial", max_staleness=0, **FAST))
    _run_data_parallel(tmp_path / "dp", tokenizer, monkeypatch, trl=trl("dp"), **cfg)

    runs = {name: _keys(tmp_path / name) for name in ("serial", "overlapped", "pipelined_serial", "dp")}
    _, _, row_keys, sample_keys = runs["serial"]
    assert {"rewards/short_reward/mean", "rewards/short_reward/std", "eval/reward_mean",
            "eval/rewards/short_reward/mean"} <= row_keys and "func_rewards" in sample_keys
    for name, (rows, samples, rk, sk) in runs.items():
        assert rk == row_keys, (name, sorted(rk ^ row_keys))
        assert sk == sample_keys, (name, sorted(sk ^ sample_keys))
        for row in rows:  # the row's function mean is over its own step's samples
            values = [s["func_rewards"]["short_reward"] for s in samples if s["step"] == row["step"]]
            assert row["rewards/short_reward/mean"] == pytest.approx(sum(values) / len(values)), (name, row["step"])
            assert row["eval/samples"] == 2 * 4, name
        for s in samples:  # 0.5 x the function plus the judge's reward, where the judgement succeeded
            if s["valid"]:
                assert s["reward"] == pytest.approx(s["judge_reward"] + 0.5 * short_reward([s["response"]])[0]), name
        rec = recorders[name]
        assert rec.steps == [1, 2, 3, 4], name
        installed = sorted({r["rubric_version_next"] for r in rows} - {rows[0]["rubric_version"]})
        assert installed and [v for _, v in rec.evolved] == installed, (name, rec.evolved)


@pytest.mark.parametrize("train", [
    {"algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05, "learning_rate": 1e-2},
    {"algorithm": "grpo", "kl_in": "reward", "kl_coef": 0.5, "learning_rate": 1e-2},
], ids=["ppo", "grpo-kl-in-reward"])
def test_ppo_and_kl_in_reward_run_overlapped_exactly_as_serial(tmp_path, tokenizer, train):
    cfg = dict(train={"max_steps": 3, **train}, meta={"interval": 100})
    a, b = _trainer(tmp_path / "s", tokenizer, **cfg), _trainer(tmp_path / "o", tokenizer, **cfg)
    ser = train_pipelined(a, PipelineSettings(mode="serial", max_staleness=0, judge_concurrency=1, **FAST))
    ovl = train_pipelined(b, PipelineSettings(mode="overlapped", max_staleness=0, **FAST))
    assert compare_rewards(ser, ovl)["mismatched"] == 0
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    if train["algorithm"] == "ppo":
        assert torch.equal(a.value_head.linear.weight, b.value_head.linear.weight)
        assert not torch.equal(a.value_head.linear.weight, _trainer(tmp_path / "fresh", tokenizer, **cfg).value_head.linear.weight)
    rows_a = read_jsonl(tmp_path / "s" / "run" / "metrics.jsonl")
    rows_b = read_jsonl(tmp_path / "o" / "run" / "metrics.jsonl")
    for ra, rb in zip(rows_a, rows_b):
        for key in ("loss", "kl_reward_mean", "value_loss", "returns_mean"):
            assert ra.get(key) == rb.get(key), (ra["step"], key)
    if train["algorithm"] == "grpo":
        assert abs(rows_b[-1]["kl_reward_mean"]) > 1e-4  # the policy moved away from the reference
    else:
        assert rows_b[-1]["value_loss"] > 0


def test_stale_ppo_and_kl_in_reward_use_the_behaviour_logprobs(tmp_path, tokenizer, monkeypatch):
    seen = {"ppo": [], "k1": []}
    ppo_update, sequence_k1 = PPOUpdater.update, kl_reward.sequence_k1

    def ppo_spy(self, batch, scores, *, behaviour_old_logp=False):
        seen["ppo"].append(behaviour_old_logp)
        return ppo_update(self, batch, scores, behaviour_old_logp=behaviour_old_logp)

    def k1_spy(*args, behaviour=False, **kw):
        seen["k1"].append(behaviour)
        return sequence_k1(*args, behaviour=behaviour, **kw)

    monkeypatch.setattr(PPOUpdater, "update", ppo_spy)
    monkeypatch.setattr("mpo_fast.trainer.trainer.sequence_k1", k1_spy)
    for name, train in (("ppo", {"algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05}),
                        ("k1", {"kl_in": "reward", "kl_coef": 0.5})):
        trainer = _trainer(tmp_path / name, tokenizer, train={"max_steps": 5, **train}, meta={"interval": 100})
        report = train_pipelined(trainer, PipelineSettings(mode="overlapped", max_staleness=1, **FAST))
        stale = [s.staleness for s in report.steps]
        assert report.max_observed_staleness <= 1 and 1 in stale, "the producer never ran ahead"
        assert seen[name] == [s == 1 for s in stale]  # stale batches, and only those, against the behaviour log-probs
        rows = read_jsonl(tmp_path / name / "run" / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and all(r["loss"] == r["loss"] for r in rows)


def test_a_stale_batch_without_behaviour_logprobs_is_refused_naming_the_fix(tmp_path, tokenizer):
    from mpo_fast.rollout import Rollout
    from mpo_fast.trainer.batch import build_train_batch

    rollouts = [Rollout(prompt_index=0, sample_index=i, prompt_ids=[5, 6, 7], completion_ids=[8, 9], text="ab",
                        behaviour_logprobs=None, finished=True, policy_version=0) for i in range(2)]
    batch = build_train_batch(rollouts, torch.tensor([1.0, -1.0]), pad_token_id=tokenizer.pad_token_id)
    ppo = _trainer(tmp_path / "ppo", tokenizer, train={"algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05})
    with pytest.raises(ValueError, match=r"no behaviour log-probs.*pipeline.max_staleness: 0"):
        ppo.updater.update(batch, torch.tensor([1.0, 0.0]), behaviour_old_logp=True)
    grpo = _trainer(tmp_path / "grpo", tokenizer, train={"kl_in": "reward", "kl_coef": 0.5})
    with pytest.raises(ValueError, match=r"no behaviour log-probs.*pipeline.max_staleness: 0"):
        kl_reward.sequence_k1(grpo.logprobs, batch, micro_batch_size=2, device=torch.device("cpu"), behaviour=True)
    got = kl_reward.sequence_k1(grpo.logprobs, batch, micro_batch_size=2, device=torch.device("cpu"))
    assert got.shape == (2,)  # on-policy (behaviour=False) needs none
