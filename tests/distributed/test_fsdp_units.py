"""FSDP2 and resume pieces that need no process group: shard units, checkpoint-kind refusals, the
per-rank RNG streams of a resume on another world size."""
from __future__ import annotations

import json

import pytest
import torch

from mpo_fast.trainer import CheckpointError
from mpo_fast.trainer import checkpoint as ckpt
from mpo_fast.trainer.data_parallel import _encode_rng, restore_rank_rng
from mpo_fast.trainer.distributed import DistContext
from mpo_fast.trainer.fsdp import SHARDED_FORMAT, decoder_layers, read_sharded_state
from tests.tiny_models import char_tokenizer, tiny_causal_lm


def test_shard_units_are_the_models_own_decoder_layers():
    lm = tiny_causal_lm(char_tokenizer())
    layers = decoder_layers(lm)
    assert [type(m).__name__ for m in layers] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(ValueError, match="no decoder layers.*train.distributed=ddp"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _state_dir(tmp_path, **state):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"format": ckpt.STATE_FORMAT, "step": 2, **state}))
    return tmp_path


def test_each_checkpoint_kind_refuses_the_other_loader_with_the_fix(tmp_path):
    lm = tiny_causal_lm(char_tokenizer())
    opt = torch.optim.AdamW(lm.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    (tmp_path / "a").mkdir()
    sharded = _state_dir(tmp_path / "a", world_size=2, peft=False, sharded=SHARDED_FORMAT)
    with pytest.raises(CheckpointError, match="sharded weights.*train.distributed=fsdp2"):
        ckpt.load_checkpoint(sharded, model=lm, optimizer=opt, scheduler=sched, world_size=None)
    with pytest.raises(CheckpointError, match="world size 2.*--nproc-per-node=2"):  # one process: the world size first
        ckpt.load_checkpoint(sharded, model=lm, optimizer=opt, scheduler=sched)
    (tmp_path / "b").mkdir()
    replicated = _state_dir(tmp_path / "b", world_size=2, peft=False)
    with pytest.raises(CheckpointError, match="train.distributed=ddp"):
        read_sharded_state(replicated)
    assert read_sharded_state(sharded)["world_size"] == 2


def test_rank_rng_restored_exactly_or_reseeded_per_rank_on_another_world_size():
    saved = []
    for r in range(2):
        torch.manual_seed(100 + r)
        saved.append(_encode_rng(*ckpt.capture_rng()))
    state = {"step": 4, "world_size": 2, "rank_rng": saved}
    draws = {}
    for world in (2, 3):
        for rank in range(world):
            restore_rank_rng(state, DistContext(rank=rank, world_size=world, local_rank=rank, backend="gloo"), seed=0)
            draws[world, rank] = torch.rand(3)
    torch.manual_seed(101)
    assert torch.equal(draws[2, 1], torch.rand(3))  # same world size: the very stream rank 1 saved
    assert len({tuple(draws[3, r].tolist()) for r in range(3)}) == 3  # new world size: one stream per rank
    restore_rank_rng(state, DistContext(rank=2, world_size=3, local_rank=2, backend="gloo"), seed=0)
    assert torch.equal(draws[3, 2], torch.rand(3))  # reproducible for (seed, step, rank)
