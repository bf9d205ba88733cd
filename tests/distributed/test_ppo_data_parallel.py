"""train.algorithm=ppo under torchrun (DDP, 2 gloo processes): the policy and the value head stay
bit-identical on both ranks after every step, and 2 ranks x B prompts give the weights of one
process on 2B (global whitening, global token normalisation, value head gradients summed)."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer.data import PromptSampler
from mpo_fast.trainer.run_log import read_jsonl
from tests.distributed import workers
from tests.distributed.launch import all_ok, run_ranks

pytestmark = pytest.mark.slow  # 2 Python processes and one single-process run (~30-60 s on 2 shared cores)


def test_ppo_two_ranks_of_batch_b_equal_one_process_of_batch_2b(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4},
           "train": {"distributed": "ddp", "algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05, "max_steps": 2,
                     "micro_batch_size": 3, "ppo_epochs": 2},
           "judge": {"max_failure_rate": 0.9}, "log": {"save_steps": 0}}
    # Rank 1's share of step 1 fails to be judged: it trains on a weight-0 placeholder row and still
    # joins every whitening and gradient all-reduce.
    step1 = PromptSampler(len(workers.PROMPTS8), seed=0).next(4)
    failing = [workers.PROMPTS8[i] for i in step1[2:]]
    r0, r1 = all_ok(run_ranks(workers.train_ppo, 2, tmp_path / "ranks", str(tmp_path / "dp"), cfg, failing))
    torch.set_num_threads(1)
    one = workers.train_ppo(0, 1, str(tmp_path / "one"), cfg, failing)

    assert len(r0["digests"]) == 2 and all(a == b for a, b in r0["digests"])  # identical after every step
    assert r0["digests"][0] != r0["digests"][1]  # and they moved
    start = workers.make_trainer(tmp_path / "init", scripted=True, **cfg)
    for name, w in one["weights"].items():
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
        torch.testing.assert_close(r0["weights"][name], w, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(w, start.model.get_parameter(name)), name  # every parameter trained
    for name, w in one["head"].items():
        assert torch.equal(r0["head"][name], r1["head"][name]), name
        torch.testing.assert_close(r0["head"][name], w, rtol=1e-5, atol=1e-6, msg=name)

    dp_rows = read_jsonl(tmp_path / "dp" / "run" / "metrics.jsonl")
    one_rows = read_jsonl(tmp_path / "one" / "run" / "metrics.jsonl")
    assert [r["valid_samples"] for r in dp_rows] == [r["valid_samples"] for r in one_rows]
    assert one_rows[0]["judge_failed"] >= 8  # rank 1's whole share of step 1 was masked
    for a, b in zip(dp_rows, one_rows):
        assert a["world_size"] == 2
        for key in ("loss", "value_loss", "clip_fraction", "kl", "returns_mean"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
        assert a["entropy"] == pytest.approx(b["entropy"], rel=1e-6, abs=0)  # near-uniform here: ranks differ by ~1e-5
    # samples.jsonl (gathered in rank order = one process's order): the same per-sample advantages,
    # 0 for the masked samples (rank 1's placeholder row included)
    dp_samples = read_jsonl(tmp_path / "dp" / "run" / "samples.jsonl")
    one_samples = read_jsonl(tmp_path / "one" / "run" / "samples.jsonl")
    assert len(dp_samples) == len(one_samples) > 0
    for a, b in zip(dp_samples, one_samples):
        assert a["advantage"] == pytest.approx(b["advantage"], rel=1e-4, abs=1e-5)



def test_ppo_overlapped_at_staleness_0_trains_as_the_serial_data_parallel_loop(tmp_path):
    """PPO's collectives (whitening, token counts, gradient sum) run on the trainer thread of the
    overlapped pipeline too: at max_staleness 0 it trains as the serial 2-rank loop."""
    from tests.distributed import overlapped_workers

    cfg = {"rollout": {"prompts_per_step": 4}, "meta": {"interval": 100},
           "train": {"distributed": "ddp", "algorithm": "ppo", "kl_in": "reward", "kl_coef": 0.05, "max_steps": 2,
                     "micro_batch_size": 3},
           "log": {"save_steps": 0}}
    overlapped_workers.run_overlapped_and_serial(tmp_path, cfg)
    rows = read_jsonl(tmp_path / "overlapped" / "run" / "metrics.jsonl")
    assert {r["pipeline"] for r in rows} == {"overlapped"} and {r["world_size"] for r in rows} == {2}
