"""train.algorithm: ppo on the tiny model: a value head learns, the synthetic reward rises, resume
restores the value head, and the config refuses what PPO cannot do yet."""
import pytest
import torch

from mpo_fast.trainer import MPOConfig, MPOTrainer
from mpo_fast.trainer.config import ConfigError
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import ShortEssayTask, SyntheticJudge


def _trainer(root, tokenizer, **cfg):
    return MPOTrainer(tiny_causal_lm(tokenizer, seed=0), args=tiny_config(root, **cfg), train_dataset=PROMPTS,
                      judge=SyntheticJudge(), processing_class=tokenizer, task=ShortEssayTask())


def test_ppo_steps_train_policy_and_value_head(tmp_path, tokenizer):
    trainer = _trainer(tmp_path, tokenizer, train={"max_steps": 3, "algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05,
                                                   "learning_rate": 1e-2, "vf_coef": 1.0})
    head_before = trainer.value_head.linear.weight.detach().clone()
    policy_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["value_loss"] > 0 and r["returns_mean"] == r["returns_mean"] for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and rows[-1]["kl"] != 0.0  # KL in the reward, per token
    assert not torch.equal(head_before, trainer.value_head.linear.weight)
    assert any(not torch.equal(policy_before[n], p) for n, p in trainer.model.named_parameters())
    # samples.jsonl shows the advantages PPO trained on: whitened token advantages, so their
    # token-weighted mean over a step is 0 (not GRPO's per-group ones)
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    for step in (1, 2, 3):
        rows_ = [x for x in samples if x["step"] == step]
        weighted = sum(x["advantage"] * x["length"] for x in rows_) / sum(x["length"] for x in rows_)
        assert weighted == pytest.approx(0.0, abs=1e-4)
    # resume restores the value head exactly
    resumed = _trainer(tmp_path, tokenizer, train={"max_steps": 3, "algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05,
                                                   "learning_rate": 1e-2, "vf_coef": 1.0}, resume=True)
    resumed.train()
    assert torch.equal(resumed.value_head.linear.weight, trainer.value_head.linear.weight)


def test_ppo_config_checks():
    with pytest.raises(ConfigError, match="kl_in: reward"):
        MPOConfig.from_dict({"train": {"algorithm": "ppo", "kl_coef": 0.02}})
    # one step path: PPO runs on the overlapped schedule too (tests/trainer/test_schedules_agree.py)
    MPOConfig.from_dict({"judge": {"model": "embedded"}, "train": {"algorithm": "ppo", "kl_in": "reward"},
                         "pipeline": {"mode": "overlapped", "max_staleness": 1}})
    with pytest.raises(ConfigError, match="gamma"):
        MPOConfig.from_dict({"train": {"gamma": 1.5}})
    MPOConfig.from_dict({"train": {"algorithm": "ppo", "kl_in": "reward"}})


def test_ppo_reward_rises(tmp_path, tokenizer):
    # the same tiny task as test_trainer.py's GRPO test_synthetic_reward_rises
    trainer = _trainer(tmp_path, tokenizer, rollout={"prompts_per_step": 4, "num_generations": 8, "max_new_tokens": 8},
                       train={"max_steps": 25, "learning_rate": 3e-3, "micro_batch_size": 32, "algorithm": "ppo",
                              "kl_in": "reward", "kl_coef": 0.0, "lam": 1.0},
                       log={"save_steps": 0})
    result = trainer.train()
    rewards = [r["reward_mean"] for r in result.metrics]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.1, rewards
