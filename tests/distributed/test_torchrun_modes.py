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


# -- rollout.backend=vllm under torchrun: one colocated engine per rank (external launcher) ----------


@pytest.fixture
def recording_vllm(monkeypatch):
    """A fake `vllm` whose LLM records the keyword arguments it was built with (a real engine needs
    a CUDA GPU); its engine is the FakeLLM of tests/rollout/test_vllm_pure.py."""
    import importlib.machinery
    import sys
    import types

    from tests.rollout.test_vllm_pure import FakeLLM, _completion

    class VaryingLLM(FakeLLM):  # samples that differ, so their rewards (and the update) do
        def generate(self, prompts, params, use_tqdm=False, lora_request=None):
            self.calls.append(("generate", len(prompts), params["n"], None))
            return [types.SimpleNamespace(outputs=[_completion(k, [5 + k + p, 9 + 3 * k, 7 + 2 * k][: 2 + k % 2])
                                                   for k in range(params["n"])]) for p in range(len(prompts))]

    built = types.SimpleNamespace(kwargs=[], engines=[])

    def LLM(**kwargs):
        built.kwargs.append(kwargs)
        built.engines.append(VaryingLLM())
        return built.engines[-1]

    mod = types.ModuleType("vllm")
    mod.__spec__ = importlib.machinery.ModuleSpec("vllm", None)  # "installed" for importlib.util.find_spec
    mod.LLM, mod.SamplingParams = LLM, (lambda **kw: kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    return built


def _vllm_config(**rollout):
    from mpo_fast.trainer.config import MPOConfig

    return MPOConfig.from_dict({"seed": 7, "model": {"name_or_path": "/ckpt/policy"}, "lora": {"enabled": False}, "judge": {"model": "embedded"},
                                "rollout": {"backend": "vllm", **rollout}})


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_each_rank_builds_its_engine_on_the_external_launcher_with_its_own_seed(recording_vllm, monkeypatch, rank):
    from mpo_fast.trainer import build, distributed

    monkeypatch.setattr(distributed, "current", lambda: DistContext(rank, 4, rank, "nccl"))
    rollout = build.build_rollout(_vllm_config(), model=None, tokenizer=None)
    (kwargs,) = recording_vllm.kwargs
    assert kwargs["distributed_executor_backend"] == "external_launcher" and kwargs["tensor_parallel_size"] == 1
    assert kwargs["seed"] == 7 + rank and rollout.seed == 7 + rank  # rank 0 keeps the run's seed
    assert kwargs["model"] == "/ckpt/policy" and kwargs["enable_sleep_mode"] is True  # colocated, sleeps while training
    assert rollout.llm.calls == [("sleep", 1)]


def test_one_process_builds_a_plain_engine(recording_vllm, monkeypatch):
    from mpo_fast.trainer import build, distributed

    monkeypatch.setattr(distributed, "current", lambda: None)
    build.build_rollout(_vllm_config(sleep_level=None), model=None, tokenizer=None)
    (kwargs,) = recording_vllm.kwargs
    assert "distributed_executor_backend" not in kwargs and kwargs["seed"] == 7 and kwargs["enable_sleep_mode"] is False


def test_an_engine_spanning_ranks_is_refused_with_the_fix():
    from mpo_fast.rollout.vllm import torchrun_engine_options

    assert torchrun_engine_options(2, 8, seed=1) == ({"distributed_executor_backend": "external_launcher",
                                                      "tensor_parallel_size": 1}, 3)
    with pytest.raises(ValueError, match="tensor_parallel_size=1.*rollout.backend=remote"):
        torchrun_engine_options(0, 8, seed=1, tensor_parallel_size=2)


def test_missing_vllm_under_torchrun_names_the_install(monkeypatch):
    import sys

    from mpo_fast.trainer import build, distributed

    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    monkeypatch.setattr(distributed, "current", lambda: DistContext(1, 2, 1, "nccl"))
    with pytest.raises(ImportError, match=r"pip install 'mpo-fast\[vllm\]'"):
        build.build_rollout(_vllm_config(), model=None, tokenizer=None)


@pytest.mark.parametrize("cfg,fix", [
    ({"train": {"distributed": "fsdp2"}}, "use train.distributed=ddp"),
    ({"pipeline": {"mode": "overlapped", "max_staleness": 1}, "rollout": {"sleep_level": None},
      "train": {"distributed": "ddp"}}, "pipeline.mode=serial"),
])
def test_vllm_under_fsdp2_or_overlapped_is_refused(tmp_path, monkeypatch, cfg, fix):
    cfg = dict(cfg)
    rollout = {"backend": "vllm", **cfg.pop("rollout", {})}
    with pytest.raises(ValueError, match=fix):
        _build(tmp_path, monkeypatch, rollout=rollout, **cfg)


def test_a_rank_trains_with_its_own_vllm_engine_and_syncs_it_after_the_update(tmp_path, monkeypatch, recording_vllm):
    """The refusal is gone: a DDP rank (a 1-process gloo group here) generates with its VLLMRollout
    and pushes the updated weights into its own engine (no rank-0-only push: each rank has one)."""
    import torch
    import torch.distributed as dist

    from mpo_fast.rollout.vllm import VLLMRollout

    tokenizer = char_tokenizer()
    model = tiny_causal_lm(tokenizer, seed=0)
    rollout = VLLMRollout("/ckpt/policy", sleep_level=1, seed=0,
                          engine_kwargs={"distributed_executor_backend": "external_launcher", "tensor_parallel_size": 1})
    config = tiny_config(tmp_path, rollout={"backend": "vllm"}, train={"max_steps": 1, "distributed": "ddp"},
                         log={"save_steps": 0})
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        monkeypatch.setattr(data_parallel, "current", lambda: DistContext(0, 1, 0, "gloo"))
        trainer = data_parallel.distributed_trainer(model, args=config, train_dataset=PROMPTS, judge=SyntheticJudge(),
                                                    processing_class=tokenizer, task=ShortEssayTask(), rollout=rollout)
        assert trainer.rollout is rollout  # not rank 0's shared-server push
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        trainer.train()
        trainer.close()
    finally:
        dist.destroy_process_group()
    (engine,) = recording_vllm.engines
    calls = [c[0] for c in engine.calls]
    assert "generate" in calls and calls.index("generate") < calls.index("apply_model")  # generated, then synced
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert changed and all(torch.equal(engine.loaded[n], dict(model.named_parameters())[n].detach()) for n in changed)
