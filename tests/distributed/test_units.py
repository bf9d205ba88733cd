"""The single-process parts of the data-parallel trainer: sharding, modes, config, refusals."""
from __future__ import annotations

import pytest

from mpo_fast.trainer import MPOConfig
from mpo_fast.trainer.config import ConfigError
from mpo_fast.trainer.data import PromptSampler
from mpo_fast.trainer.data_parallel import ShardedSampler
from mpo_fast.trainer.distributed import DistContext, DistributedError, current, init_distributed, resolve_mode, shard_range


def test_shards_are_contiguous_whole_prompts_and_cover_the_global_list():
    contexts = [DistContext(rank=r, world_size=3, local_rank=r, backend="gloo") for r in range(3)]
    samplers = [ShardedSampler(PromptSampler(10, seed=7), c) for c in contexts]
    reference = PromptSampler(10, seed=7)
    for _ in range(4):  # across an epoch boundary too
        shares = [s.next(6) for s in samplers]
        assert [len(x) for x in shares] == [2, 2, 2]
        assert shares[0] + shares[1] + shares[2] == reference.next(6)  # rank order = one process's order
    assert all(s.state_dict() == reference.state_dict() for s in samplers)  # one data position on every rank
    with pytest.raises(ValueError, match="does not divide over 4 ranks; use a multiple of 4"):
        shard_range(6, 0, 4)


def test_modes_and_config():
    assert resolve_mode("auto", lora=True) == "ddp" and resolve_mode("ddp", lora=False) == "ddp"
    assert resolve_mode("auto", lora=False) == "fsdp2" and resolve_mode("fsdp2", lora=False) == "fsdp2"
    with pytest.raises(ValueError, match="fsdp2 with LoRA is not supported.*train.distributed=ddp"):
        resolve_mode("fsdp2", lora=True)
    with pytest.raises(ConfigError, match="train.distributed"):
        MPOConfig.from_dict({"train": {"distributed": "zero3"}})
    config = MPOConfig.from_dict({"lora": {"enabled": False},
                                  "judge": {"backend": "openai", "model": "m", "base_url": ["http://a/v1", "http://b/v1"]}})
    assert config.judge.base_url == ["http://a/v1", "http://b/v1"]
    assert MPOConfig.from_dict({"judge": {"base_url": "http://a/v1"}}).judge.base_url == "http://a/v1"


def test_single_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(5.0) is None and current() is None
    from mpo_fast.trainer.data_parallel import make_distributed_trainer_class

    with pytest.raises(DistributedError, match="init_distributed"):
        make_distributed_trainer_class()(None)


def test_cli_override_gives_a_judge_pool():
    from mpo_fast.trainer.config import apply_override

    data = {}
    apply_override(data, "judge.base_url=[http://a/v1,http://b/v1]")
    data.setdefault("lora", {})["enabled"] = False
    data["judge"].update(backend="openai", model="m")
    assert MPOConfig.from_dict(data).judge.base_url == ["http://a/v1", "http://b/v1"]


def test_a_rubric_whose_hash_does_not_match_is_refused():
    import dataclasses

    from mpo_fast.rubrics import Rubric, RubricItem, RubricStore
    from mpo_fast.trainer.data_parallel import checked_rubric

    ctx = DistContext(rank=1, world_size=2, local_rank=1, backend="gloo")
    rubric = Rubric(task="essay", context="", items=(RubricItem("Clarity", "Clear prose.", 5),))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        version = RubricStore(tmp).save(rubric, step=0, analyses=())
    assert checked_rubric(version, ctx) is version
    other = Rubric(task="essay", context="", items=(RubricItem("Clarity", "Clear prose!", 5),))
    with pytest.raises(DistributedError, match="rank 1: rubric v1 broadcast with hash"):
        checked_rubric(dataclasses.replace(version, rubric=other), ctx)


def test_cli_exit_status_5_when_another_rank_failed(monkeypatch, capsys):
    from mpo_fast import cli

    def broken(config, *, started):
        raise DistributedError("the gradient all-reduce failed on rank 0: another rank stopped")

    monkeypatch.setattr(cli, "run_config", broken)
    assert cli.main(["demo", "train.max_steps=1"]) == cli.EXIT_PEER_FAILED == 5
    assert "distributed run stopped" in capsys.readouterr().err


def test_rank0_pushes_the_adapter_and_every_rank_asks_for_it(tmp_path):
    import torch.distributed as dist

    from mpo_fast.trainer.data_parallel import MainRankWeightSync

    class Remote:
        def __init__(self):
            self.pushed, self.version, self.served_model = [], 0, "base"

        def sync_weights(self, model, version):
            self.pushed.append(version)
            self.served_model = f"base-v{version}"

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        main, other = Remote(), Remote()
        MainRankWeightSync(main, DistContext(0, 1, 0, "gloo")).sync_weights(None, 3)
        assert main.pushed == [3] and main.served_model == "base-v3" and main.version == 3
        MainRankWeightSync(other, DistContext(1, 1, 1, "gloo")).sync_weights(None, 3)  # as a rank > 0 would
        assert other.pushed == [] and other.version == 3
    finally:
        dist.destroy_process_group()


def test_gradient_buckets_cover_every_parameter_once(tmp_path, monkeypatch):
    import torch
    import torch.distributed as dist

    from mpo_fast.trainer import data_parallel

    monkeypatch.setattr(data_parallel, "BUCKET_ELEMENTS", 10)
    seen: list[int] = []
    real = data_parallel._all_reduce_bucket
    monkeypatch.setattr(data_parallel, "_all_reduce_bucket", lambda grads: (seen.append(sum(g.numel() for g in grads)), real(grads)))
    params = [torch.nn.Parameter(torch.ones(n)) for n in (4, 4, 4, 30, 2)]
    for p in params[:-1]:
        p.grad = torch.full_like(p, 2.0)  # the last one has no gradient on this rank: zeros join the sum
    updater = data_parallel.DataParallelUpdater.__new__(data_parallel.DataParallelUpdater)
    updater.params = params
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        updater._sync_gradients()
    finally:
        dist.destroy_process_group()
    assert seen == [8, 4, 30, 2]  # <= 10 elements a bucket, an oversized tensor alone
    assert all(torch.equal(p.grad, torch.full_like(p, 2.0)) for p in params[:-1]) and torch.equal(params[-1].grad, torch.zeros(2))
