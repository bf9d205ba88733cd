"""Reward functions under data parallelism: every rank scores its share, rank 0's metrics row holds
the per-function means over the whole step (gathered), equal to one process's."""
from __future__ import annotations

from pathlib import Path

import pytest

from mpo_fast.trainer.config import RewardSettings
from mpo_fast.trainer.run_log import read_jsonl
from tests.distributed import workers
from tests.distributed.launch import all_ok, run_ranks

pytestmark = pytest.mark.slow  # 2 Python processes (~15-30 s on 2 shared cores)

CFG = {"rollout": {"prompts_per_step": 4}, "train": {"max_steps": 2}, "log": {"save_steps": 0},
       "reward": RewardSettings(funcs=["tests.trainer.test_trl_api:short_reward"], weights=[0.5])}


def train_rank(rank, world, tmp):
    trainer = workers.make_trainer(Path(tmp), scripted=True, world=world, **CFG)
    trainer.train()
    trainer.close()
    return True


def test_reward_func_metrics_are_over_every_rank(tmp_path):
    all_ok(run_ranks(train_rank, 2, tmp_path / "ranks", str(tmp_path / "dp")))
    single = workers.make_trainer(tmp_path / "one", scripted=True, **CFG)
    single.train()
    dp = read_jsonl(tmp_path / "dp" / "run" / "metrics.jsonl")
    one = read_jsonl(tmp_path / "one" / "run" / "metrics.jsonl")
    assert [r["rewards/short_reward/mean"] for r in dp] == pytest.approx([r["rewards/short_reward/mean"] for r in one])
    assert [r["reward_mean"] for r in dp] == pytest.approx([r["reward_mean"] for r in one], abs=1e-6)
    samples = read_jsonl(tmp_path / "dp" / "run" / "samples.jsonl")
    assert len(samples) == 2 * 16 and all("short_reward" in s["func_rewards"] for s in samples)


class StopOnRank0:
    def on_step_end(self, trainer, step, metrics):
        import torch.distributed as dist

        if step == 1 and dist.get_rank() == 0:
            trainer.control.should_training_stop = True


def train_until_stopped(rank, world, tmp):
    trainer = workers.make_trainer(Path(tmp), scripted=True, world=world, **{**CFG, "train": {"max_steps": 3}})
    trainer.callbacks = type(trainer.callbacks)([StopOnRank0()], trainer)
    trainer.control = trainer.callbacks.control
    result = trainer.train()
    trainer.close()
    return result.steps


def test_a_stop_asked_by_one_rank_stops_every_rank(tmp_path):
    from mpo_fast.trainer.checkpoint import list_checkpoints

    assert all_ok(run_ranks(train_until_stopped, 2, tmp_path / "ranks", str(tmp_path / "dp"))) == [1, 1]
    assert [s for s, _ in list_checkpoints(tmp_path / "dp" / "run")] == [1]
