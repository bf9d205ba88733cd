"""What DistributedMPOTrainer accepts or refuses before joining anything (no process group):
PPO under fsdp2, rollout.backend=vllm per rank."""
from __future__ import annotations

import pytest

from mpo_fast.trainer import data_parallel
from mpo_fast.trainer.distributed import DistContext
from tests.tiny_models import char_tokenizer, tiny_causal_lm
from tests.trainer.conftest import PROMPTS, tiny_config
from tests.trainer.fakes import ShortEssayTask, SyntheticJudge


def _build(tmp_path, monkeypatch, **cfg):
    tokenizer = char_tokenizer()
    monkeypatch.setattr(data_parallel, "current", lambda: DistContext(0, 1, 0, "gloo"))
    config = tiny_config(tmp_path, **cfg)
    return data_parallel.distributed_trainer(tiny_causal_lm(tokenizer, seed=0), args=config, train_dataset=PROMPTS,
                                             judge=SyntheticJudge(), processing_class=tokenizer, task=ShortEssayTask())


def test_ppo_under_fsdp2_is_refused_with_the_fix(tmp_path, monkeypatch):
    import torch.distributed as dist

    with pytest.raises(ValueError, match="train.algorithm=ppo runs under torchrun with train.distributed=ddp"):
        _build(tmp_path, monkeypatch, train={"distributed": "fsdp2", "algorithm": "ppo", "kl_in": "reward"})
    assert not dist.is_initialized()
