"""Data-parallel MPO on 2 CPU processes (gloo): the ranks stay bit-identical, 2 ranks x B equal
1 process x 2B, rank 0's rubric is the one every rank scores with, resume is exact, a failing rank
stops both. Every collective has a 60 s timeout and every launch a hard deadline."""
from __future__ import annotations

import time

import pytest
import torch

from mpo_fast.trainer.data import PromptSampler
from mpo_fast.trainer.run_log import read_jsonl
from tests.distributed import workers
from tests.distributed.launch import COLLECTIVE_TIMEOUT_S, all_ok, run_ranks

pytestmark = pytest.mark.slow  # each launch starts 2 Python processes (~15-30 s on 2 shared cores)


def test_ranks_stay_bit_identical_and_score_with_rank0s_rubric(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4}, "meta": {"interval": 1, "min_steps_between": 1},
           "train": {"distributed": "ddp", "max_steps": 3, "kl_coef": 0.05}}
    r0, r1 = all_ok(run_ranks(workers.steps_stay_identical, 2, tmp_path / "ranks", str(tmp_path), cfg))
    assert r0 == r1
    digests = [pair for pair in r0["digests"]]
    assert len(digests) == 3 and all(a == b for a, b in digests)  # bit-identical after every step
    assert len({a for a, _ in digests}) == 3  # and the parameters did move every step
    for (v0, h0, recomputed0), (v1, h1, recomputed1) in r0["rubrics"]:
        assert (v0, h0) == (v1, h1) and h0 == recomputed0 == recomputed1
    versions = [pair[0][0] for pair in r0["rubrics"]]
    assert versions == [2, 3, 3]  # a real MetaJudge refined at steps 1 and 2 (not at the last step)

    run = tmp_path / "run"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]  # one file, one row per step: only rank 0 wrote
    assert all(r["world_size"] == 2 and r["samples"] == 16 for r in rows)  # reduced over both ranks' 8
    assert [r["rubric_version"] for r in rows] == [1, 2, 3]  # a new rubric scores from the next step on
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 48
    for step in (1, 2, 3):
        rows_of_step = [s for s in samples if s["step"] == step]
        assert len({s["prompt_id"] for s in rows_of_step}) == 4  # both ranks' shares, gathered
        assert {s["rubric_version"] for s in rows_of_step} == {rows[step - 1]["rubric_version"]}
    assert not list(run.glob("*rank1*"))


def test_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4},
           "train": {"distributed": "ddp", "max_steps": 2, "kl_coef": 0.05, "micro_batch_size": 3},
           "log": {"save_steps": 0}}
    cfg["judge"] = {"max_failure_rate": 0.9}
    # Every judgement of rank 1's share of step 1 fails: rank 1 has no row to train on and must
    # still join the gradient all-reduce (with exact zeros) while rank 0 trains on its rows.
    step1 = PromptSampler(len(workers.PROMPTS8), seed=0).next(4)
    failing = [workers.PROMPTS8[i] for i in step1[2:]]
    r0, r1 = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "ranks", str(tmp_path / "dp"), cfg,
                              True, None, None, failing))
    from tests.trainer.fakes import AppendingMetaJudge, SyntheticJudge

    torch.set_num_threads(1)
    single = workers.make_trainer(tmp_path / "one", scripted=True, meta_judge=AppendingMetaJudge(),
                                  rm=SyntheticJudge(fail_when=workers.failing(failing)), **cfg)
    single.train()
    # Failed judgements are masked and counted the same way: summed over ranks = one process's count.
    dp_rows = read_jsonl(tmp_path / "dp" / "run" / "metrics.jsonl")
    one_rows = read_jsonl(tmp_path / "one" / "run" / "metrics.jsonl")
    keys = ("samples", "valid_samples", "judge_failed", "judge_failed_total", "degenerate_groups", "response_length_mean")
    assert [[r[k] for k in keys] for r in dp_rows] == [[r[k] for k in keys] for r in one_rows]
    assert one_rows[0]["judge_failed"] >= 8 and one_rows[0]["valid_samples"] > 0  # rank 1's 8 samples all masked
    for a, b in zip(dp_rows, one_rows):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        # the global token mean, not rank 0's (which differs by ~5e-6 relative on this near-uniform tiny model)
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-6, abs=0)
    one = workers.trained_weights(single)
    start = workers.trained_weights(workers.make_trainer(tmp_path / "init", scripted=True, **cfg))
    moved = 0
    for name, w in one.items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)
        moved += int(not torch.equal(w, start[name]))
    assert moved == len(one)  # every parameter trained, so the comparison means something


def test_resume_is_exact_and_a_failing_rank_stops_both(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 2}, "meta": {"interval": 2, "min_steps_between": 1},
           "train": {"distributed": "ddp", "max_steps": 4}, "log": {"save_steps": 2, "save_total_limit": None}}
    full = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "a", str(tmp_path / "full"), cfg, False))

    # Rank 1's judge dies at its 3rd call (step 3): both ranks must stop within the collective
    # timeout, with the step-2 checkpoint intact and no step-3/4 checkpoint.
    started = time.monotonic()
    crashed = run_ranks(workers.train_and_return_weights, 2, tmp_path / "b", str(tmp_path / "cut"), cfg, False, 1, 3,
                        timeout_s=COLLECTIVE_TIMEOUT_S + 120)
    assert time.monotonic() - started < COLLECTIVE_TIMEOUT_S + 60
    assert [status for status, _, _ in crashed] == ["error", "error"] and all(code != 0 for *_, code in crashed)
    assert "injected crash on judge call 3" in crashed[1][1]
    # Rank 0 learns it from the broken collective, as an error the CLI maps to exit status 5.
    assert crashed[0][1].startswith("DistributedError: ") and "another rank stopped" in crashed[0][1], crashed[0][1]
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]

    resumed = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "c", str(tmp_path / "cut"),
                               {**cfg, "resume": True}, False))
    for name, w in full[0]["weights"].items():
        assert torch.equal(resumed[0]["weights"][name], w), name  # exact: weights, RNG streams, sampler, rubric
    assert resumed[0]["rubric"] == full[0]["rubric"]
    full_rows = read_jsonl(tmp_path / "full" / "run" / "metrics.jsonl")
    resumed_rows = read_jsonl(tmp_path / "cut" / "run" / "metrics.jsonl")
    assert [r["reward_mean"] for r in resumed_rows] == [r["reward_mean"] for r in full_rows]

    # One process cannot continue a 2-rank checkpoint: it says which world size it needs.
    from mpo_fast.trainer import CheckpointError

    single = workers.make_trainer(tmp_path / "cut", scripted=False, **{**cfg, "resume": True})
    with pytest.raises(CheckpointError, match="world size 2.*--nproc-per-node=2"):
        single.train()

    # Another torchrun world size continues from rank 0's full files: 2 ranks' step 4 on 3 ranks.
    from tests.distributed import fsdp_workers

    cfg3 = {**cfg, "resume": True, "rollout": {"prompts_per_step": 3}, "train": {**cfg["train"], "max_steps": 5}}
    three = all_ok(run_ranks(fsdp_workers.train_and_report, 3, tmp_path / "d", str(tmp_path / "full"), cfg3, False,
                             None, None, None, True, timeout_s=300))
    for name, w in full[0]["weights"].items():
        assert torch.equal(three[0]["start"][name], w), name  # continued from exactly the step-4 weights
        assert torch.equal(three[0]["weights"][name], three[2]["weights"][name]), name
    assert not three[0]["sharded"] and three[0]["steps"] == 5
    rows = read_jsonl(tmp_path / "full" / "run" / "metrics.jsonl")
    assert [(r["step"], r["world_size"]) for r in rows] == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 3)]


def test_lora_two_ranks_equal_one_process_and_save_the_adapter(tmp_path):
    """DDP's main use: LoRA adapters replicated, the KL reference is the base with adapters off."""
    cfg = {"rollout": {"prompts_per_step": 4}, "train": {"max_steps": 2, "kl_coef": 0.05, "learning_rate": 1e-2},
           "log": {"save_steps": 0}}
    r0, r1 = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "ranks", str(tmp_path / "dp"), cfg,
                              True, None, None, None, True))
    from tests.trainer.fakes import AppendingMetaJudge

    torch.set_num_threads(1)
    single = workers.make_trainer(tmp_path / "one", scripted=True, meta_judge=AppendingMetaJudge(), lora=True, **cfg)
    before = workers.trained_weights(single)
    single.train()
    one = workers.trained_weights(single)
    lora = [n for n in one if "lora_" in n]
    assert lora and all(not torch.equal(one[n], before[n]) for n in lora if "lora_B" in n)  # the adapters trained
    for name, w in one.items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)
        if "lora_" not in name:
            assert torch.equal(w, before[name]), name  # the base stays frozen
    assert (tmp_path / "dp" / "run" / "checkpoints" / "step-000002" / "model" / "adapter_model.safetensors").is_file()
