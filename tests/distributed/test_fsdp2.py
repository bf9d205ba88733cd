"""FSDP2 (train.distributed=fsdp2) on 2 CPU processes (gloo): full parameters identical on both
ranks after every step with HF generate on the sharded policy, 2 ranks x B equal 1 process x 2B,
save/crash/resume equals the uninterrupted run, and a checkpoint resumes on another world size
(DCP reshards). Every collective has a 60 s timeout and every launch a hard deadline."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer.config import ModelConfig
from mpo_fast.trainer.data import PromptSampler
from mpo_fast.trainer.run_log import read_jsonl
from tests.distributed import fsdp_workers, workers
from tests.distributed.launch import COLLECTIVE_TIMEOUT_S, all_ok, run_ranks

pytestmark = pytest.mark.slow  # each launch starts 2-3 Python processes (~20-40 s on 2 shared cores)
FSDP = {"distributed": "fsdp2"}


def test_sharded_ranks_hold_identical_parameters_after_every_step(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4}, "meta": {"interval": 1, "min_steps_between": 1},
           "train": {**FSDP, "max_steps": 2, "kl_coef": 0.05}}  # kl_coef > 0: the frozen reference is sharded too
    r0, r1 = all_ok(run_ranks(fsdp_workers.sharded_steps_stay_identical, 2, tmp_path / "ranks", str(tmp_path), cfg))
    assert r0 == r1
    assert len(r0["digests"]) == 2 and all(a == b for a, b in r0["digests"])
    assert len({a for a, _ in r0["digests"]}) == 2  # the parameters moved every step
    # Really sharded: each rank holds its half of every parameter's first dimension (51 + 50 rows of
    # the 101-token embedding), the rest of the shape whole.
    for (shapes0, shapes1), full in r0["shards"]:
        for a, b, f in zip(shapes0, shapes1, full):
            assert a[0] + b[0] == f[0] and a[0] >= b[0] > 0 and a[1:] == b[1:] == f[1:]
    assert all(v0 == v1 for v0, v1 in r0["rubrics"])
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["world_size"] == 2 for r in rows)
    assert all(r["response_length_mean"] > 0 for r in rows)  # generated on the (unsharded) policy


def test_sharded_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4}, "train": {**FSDP, "max_steps": 2, "kl_coef": 0.05, "micro_batch_size": 3},
           "log": {"save_steps": 0}, "judge": {"max_failure_rate": 0.9}}
    # Every judgement of rank 1's share of step 1 fails: rank 1 runs one weight-0 placeholder and is
    # padded to rank 0's micro-batch count (FSDP2's all-gathers need the same forwards everywhere).
    step1 = PromptSampler(len(workers.PROMPTS8), seed=0).next(4)
    failing = [workers.PROMPTS8[i] for i in step1[2:]]
    r0, r1 = all_ok(run_ranks(fsdp_workers.train_and_report, 2, tmp_path / "ranks", str(tmp_path / "dp"), cfg,
                              True, None, None, failing))
    assert r0["sharded"] and r0["impl"] == "fused"  # the fused log-prob path, through the root unit's registered method
    from tests.trainer.fakes import AppendingMetaJudge, SyntheticJudge

    torch.set_num_threads(1)
    single = workers.make_trainer(tmp_path / "one", scripted=True, meta_judge=AppendingMetaJudge(),
                                  rm=SyntheticJudge(fail_when=workers.failing(failing)), **cfg)
    start = workers.trained_weights(single)
    single.train()
    one = workers.trained_weights(single)
    dp_rows = read_jsonl(tmp_path / "dp" / "run" / "metrics.jsonl")
    one_rows = read_jsonl(tmp_path / "one" / "run" / "metrics.jsonl")
    assert one_rows[0]["judge_failed"] >= 8 and one_rows[0]["valid_samples"] > 0
    for a, b in zip(dp_rows, one_rows):
        assert a["valid_samples"] == b["valid_samples"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # One process trains its plain LM head with fused_linear_policy_loss, the sharded ranks with
    # fused_linear_logprob + policy_loss (the head is a DTensor): the same math, other fp32 rounding.
    # Adam divides by sqrt(v), so an element whose gradient is near 0 turns that into up to ~8e-6
    # here (lr 1e-3, 2 steps); 1e-5 is 1% of one step's largest move, far below a wrong update.
    assert single.logprobs.fused_loss
    moved = 0
    for name, w in one.items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        moved += int(not torch.equal(w, start[name]))
    assert moved == len(one)


def test_sharded_resume_is_exact_and_reshards_to_another_world_size(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 2}, "meta": {"interval": 2, "min_steps_between": 1},
           "train": {**FSDP, "max_steps": 4}, "log": {"save_steps": 2, "save_total_limit": None}}
    full = all_ok(run_ranks(fsdp_workers.train_and_report, 2, tmp_path / "a", str(tmp_path / "full"), cfg, False))
    assert full[0]["sharded"]
    # Rank 1's judge dies at its 3rd call (step 3): both stop, the step-2 DCP checkpoint intact.
    crashed = run_ranks(fsdp_workers.train_and_report, 2, tmp_path / "b", str(tmp_path / "cut"), cfg, False, 1, 3,
                        timeout_s=COLLECTIVE_TIMEOUT_S + 120)
    assert [status for status, _, _ in crashed] == ["error", "error"]
    assert "injected crash on judge call 3" in crashed[1][1]
    step2 = tmp_path / "cut" / "run" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in step2.parent.iterdir()) == ["step-000002"]
    assert (step2 / "dcp" / ".metadata").is_file() and not (step2 / "model").exists()
    resumed = all_ok(run_ranks(fsdp_workers.train_and_report, 2, tmp_path / "c", str(tmp_path / "cut"),
                               {**cfg, "resume": True}, False))
    for name, w in full[0]["weights"].items():
        assert torch.equal(resumed[0]["weights"][name], w), name  # exact: shards, optimizer, RNG, sampler, rubric
    assert resumed[0]["rubric"] == full[0]["rubric"]
    full_rows = read_jsonl(tmp_path / "full" / "run" / "metrics.jsonl")
    resumed_rows = read_jsonl(tmp_path / "cut" / "run" / "metrics.jsonl")
    assert [r["reward_mean"] for r in resumed_rows] == [r["reward_mean"] for r in full_rows]

    # Another world size: the step-4 checkpoint of 2 ranks continues on 1 rank? No - one process
    # has no process group to reshard with; it stops at once naming the world size to use.
    from mpo_fast.trainer import CheckpointError

    single = workers.make_trainer(tmp_path / "full", scripted=False, **{**cfg, "resume": True,
                                                                         "train": {**cfg["train"], "max_steps": 5}})
    with pytest.raises(CheckpointError, match="world size 2.*--nproc-per-node=2"):
        single.train()
    # 2 ranks' step-4 shards resharded over 3 ranks: the run continues from exactly those weights.
    cfg3 = {**cfg, "resume": True, "rollout": {"prompts_per_step": 3}, "train": {**cfg["train"], "max_steps": 5}}
    three = all_ok(run_ranks(fsdp_workers.train_and_report, 3, tmp_path / "d", str(tmp_path / "full"), cfg3, False,
                             None, None, None, True, timeout_s=300))
    for name, w in full[0]["weights"].items():
        assert torch.equal(three[0]["start"][name], w), name
        assert torch.equal(three[0]["weights"][name], three[2]["weights"][name]), name
    rows = read_jsonl(tmp_path / "full" / "run" / "metrics.jsonl")
    assert [(r["step"], r["world_size"]) for r in rows] == [(1, 2), (2, 2), (3, 2), (4, 2), (5, 3)]
    assert three[0]["steps"] == 5


def test_sharded_logits_path_kl_in_reward_and_ppo_epochs_equal_one_process(tmp_path):
    """The other forwards FSDP2 must run the same number of times on every rank: the logits path,
    kl_in=reward's policy + reference pass over the whole batch, and ppo_epochs=2's frozen old
    log-probs; micro_batch_size 3 gives the ranks different micro-batch counts to pad."""
    cfg = {"rollout": {"prompts_per_step": 4}, "model": ModelConfig(logprob_impl="logits"),
           "train": {**FSDP, "max_steps": 2, "kl_coef": 0.05, "kl_in": "reward", "ppo_epochs": 2, "micro_batch_size": 3},
           "log": {"save_steps": 0}, "judge": {"max_failure_rate": 0.9}}
    step1 = PromptSampler(len(workers.PROMPTS8), seed=0).next(4)
    failing = [workers.PROMPTS8[i] for i in step1[:1]]  # rank 0 trains on fewer rows than rank 1
    r0, r1 = all_ok(run_ranks(fsdp_workers.train_and_report, 2, tmp_path / "ranks", str(tmp_path / "dp"), cfg,
                              True, None, None, failing))
    assert r0["sharded"] and r0["impl"] == "logits"
    from tests.trainer.fakes import AppendingMetaJudge, SyntheticJudge

    torch.set_num_threads(1)
    single = workers.make_trainer(tmp_path / "one", scripted=True, meta_judge=AppendingMetaJudge(),
                                  rm=SyntheticJudge(fail_when=workers.failing(failing)), **cfg)
    single.train()
    dp_rows = read_jsonl(tmp_path / "dp" / "run" / "metrics.jsonl")
    one_rows = read_jsonl(tmp_path / "one" / "run" / "metrics.jsonl")
    for a, b in zip(dp_rows, one_rows):
        assert a["kl_reward_mean"] == pytest.approx(b["kl_reward_mean"], rel=1e-4, abs=1e-7)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    # 4 Adam steps (2 steps x 2 epochs, lr 1e-3): Adam divides by sqrt(v), so an element whose
    # gradient is near 0 turns fp32 summation-order noise into up to ~3e-6 here; 1e-5 is 1% of one
    # step's largest move (lr), far below any real difference in the update.
    for name, w in workers.trained_weights(single).items():
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
