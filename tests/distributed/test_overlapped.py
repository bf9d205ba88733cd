"""The overlapped pipeline on 2 CPU processes (gloo): every rank scores each step with the rubric
rank 0 installed (same version and hash, swapped at the same boundary), the ranks stay identical,
rank 0 writes one run; at max_staleness=0 it trains exactly as the serial data-parallel loop.
Every collective has a 60 s timeout and every launch a hard deadline."""
from __future__ import annotations

import pytest
import torch

from mpo_fast.trainer.run_log import read_jsonl
from tests.distributed import overlapped_workers
from tests.distributed.launch import all_ok, run_ranks

pytestmark = pytest.mark.slow  # each launch starts 2 Python processes (~15-30 s on 2 shared cores)

FAST = {"judge_timeout_s": 30.0, "stall_timeout_s": 60.0, "shutdown_timeout_s": 10.0}


def test_overlapped_two_ranks_score_every_step_with_rank0s_rubric(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4}, "meta": {"interval": 1, "min_steps_between": 1},
           "train": {"distributed": "ddp", "max_steps": 5},
           "pipeline": {"mode": "overlapped", "max_staleness": 1, "rubric_swap": "next_step", **FAST}}
    r0, r1 = all_ok(run_ranks(overlapped_workers.overlapped_with_meta, 2, tmp_path / "ranks", str(tmp_path), cfg))
    assert r0["digest"] == r1["digest"]  # the ranks' parameters are identical after the run
    assert r0["steps"] == r1["steps"] == 5 and r0["pipeline"]["max_observed_staleness"] <= 1
    # Per step, both ranks scored with the same rubric version and hash, which hashes right on each
    # rank and is the one in rank 0's store; every sample of a step carries that version.
    assert [b[0] for b in r0["batches"]] == [b[0] for b in r1["batches"]] == [1, 2, 3, 4, 5]
    for b0, b1 in zip(r0["batches"], r1["batches"]):
        assert b0 == b1
        step, board_version, version, digest, recomputed, sample_versions = b0
        assert board_version == version and sample_versions == [version]
        assert digest == recomputed == r0["store"][version][0]
    versions = [b[2] for b in r0["batches"]]
    assert versions == sorted(versions) and versions[-1] > 1  # a real MetaJudge refined, every rank adopted it

    run = tmp_path / "run"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # one file, one row per step: only rank 0 wrote
    assert all(r["world_size"] == 2 and r["samples"] == 16 and r["pipeline"] == "overlapped" for r in rows)
    assert [r["rubric_version"] for r in rows] == versions
    samples = read_jsonl(run / "samples.jsonl")
    for row in rows:
        of_step = [s for s in samples if s["step"] == row["step"]]
        assert len({s["prompt_id"] for s in of_step}) == 4  # both ranks' shares, gathered
        assert {s["rubric_version"] for s in of_step} == {row["rubric_version"]}
    assert not list(run.glob("*rank1*"))


def test_overlapped_at_staleness_0_trains_as_the_serial_data_parallel_loop(tmp_path):
    cfg = {"rollout": {"prompts_per_step": 4}, "meta": {"interval": 100},
           "train": {"distributed": "ddp", "max_steps": 3, "micro_batch_size": 3}, "log": {"save_steps": 0}}
    overlapped_workers.run_overlapped_and_serial(tmp_path, cfg)
    serial_rows = read_jsonl(tmp_path / "serial" / "run" / "metrics.jsonl")
    overlapped_rows = read_jsonl(tmp_path / "overlapped" / "run" / "metrics.jsonl")
    assert {r["pipeline"] for r in overlapped_rows} == {"overlapped"} and {r["world_size"] for r in overlapped_rows} == {2}
    for a, b in zip(serial_rows, overlapped_rows, strict=True):
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)


def test_torchrun_runs_the_documented_lora_config_overlapped(tmp_path):
    """The README's command: mpo_fast/configs/gpu_7b_lora.yaml (LoRA, pipeline.mode=overlapped,
    max_staleness=1) under torchrun, shrunk to the tiny model on CPU and a loopback judge server."""
    import yaml

    from mpo_fast.testing import JudgeServer
    from tests.distributed.test_torchrun_cli import FAST as SERVER_FAST
    from tests.distributed.test_torchrun_cli import ROOT, _tiny_model_dir, _torchrun

    config = yaml.safe_load((ROOT / "mpo_fast" / "configs" / "gpu_7b_lora.yaml").read_text())
    assert config["pipeline"]["mode"] == "overlapped" and config["lora"]["enabled"]  # what is under test
    with JudgeServer(SERVER_FAST) as server:
        config.update({
            "output_dir": str(tmp_path / "run"),
            "model": {"name_or_path": str(_tiny_model_dir(tmp_path / "model")), "dtype": "float32", "device": "cpu"},
            "lora": {**config["lora"], "r": 4, "alpha": 8},
            "task": {"name": "essay", "limit": 8, "max_prompt_tokens": 4096},
            "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 8, "temperature": 1.0},
            "judge": {"backend": "openai", "model": "simulated-judge", "base_url": server.base_url, "scoring": "parse",
                      "call_mode": "all_items", "concurrency": 4},
            "meta": {"enabled": True, "backend": "judge", "interval": 1, "min_steps_between": 1, "num_samples": 2,
                     "gates": False},  # the simulated server rewrites the whole rubric; only the broadcast is tested
            "train": {**config["train"], "max_steps": 4, "learning_rate": 1e-3, "warmup_steps": 0, "dist_timeout_s": 120},
            "log": {"save_steps": 0, "report_to": ["none"], "progress": False},
            # next_step: rank 0 waits for the refinement launched after step 1 and installs it after
            # step 2, so at max_staleness=1 step 4 is the first scored with it (when_ready: timing's call)
            "pipeline": {**config["pipeline"], "rubric_swap": "next_step"},
        })
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(config))
        done = _torchrun(path)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "run"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 and r["samples"] == 4 and r["pipeline"] == "overlapped" for r in rows)
    assert all(r["judge_failed"] == 0 for r in rows)
    samples = read_jsonl(run / "samples.jsonl")
    for row in rows:
        assert {s["rubric_version"] for s in samples if s["step"] == row["step"]} == {row["rubric_version"]}
    assert [r["rubric_version"] for r in rows] == [1, 1, 1, 2]  # rank 0's refinement, scored with on both ranks
    assert (run / "checkpoints" / "step-000004" / "model" / "adapter_model.safetensors").is_file()  # DDP: rank 0 saved


def test_a_failing_rank_stops_both_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path):
    import time

    from tests.distributed import workers
    from tests.distributed.launch import COLLECTIVE_TIMEOUT_S

    # meta.interval=2 with rubric_swap=next_step: the refinement launched after step 2 is still
    # pending in the step-2 checkpoint, so the resumed run relaunches it on rank 0's restored window
    # (every rank's samples: AppendingMetaJudge's rubric names how many it read).
    cfg = {"rollout": {"prompts_per_step": 2}, "meta": {"interval": 2, "min_steps_between": 1},
           "train": {"distributed": "ddp", "max_steps": 4}, "log": {"save_steps": 2, "save_total_limit": None},
           "pipeline": {"mode": "overlapped", "max_staleness": 0, "rubric_swap": "next_step", **FAST}}
    full = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "a", str(tmp_path / "full"), cfg, True))

    # Rank 1 judges one sample per call, 4 per step: call 9 is step 3's first. Its producer starts
    # step 3 only after boundary 2 was published, while its trainer thread is still in the step-2
    # checkpoint with rank 0, so that checkpoint completes and no later one can.
    started = time.monotonic()
    crashed = run_ranks(workers.train_and_return_weights, 2, tmp_path / "b", str(tmp_path / "cut"), cfg, True, 1, 9,
                        timeout_s=COLLECTIVE_TIMEOUT_S + 120)
    assert time.monotonic() - started < COLLECTIVE_TIMEOUT_S + 60
    assert [status for status, _, _ in crashed] == ["error", "error"] and all(code != 0 for *_, code in crashed)
    assert "injected crash on judge call 9" in crashed[1][1]
    # Rank 0's trainer thread learns it from the broken collective (the CLI's exit status 5).
    assert crashed[0][1].startswith("PipelineError: ") and "another rank stopped" in crashed[0][1], crashed[0][1]
    checkpoints = sorted(p.name for p in (tmp_path / "cut" / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-000002"]

    resumed = all_ok(run_ranks(workers.train_and_return_weights, 2, tmp_path / "c", str(tmp_path / "cut"),
                               {**cfg, "resume": True}, True))
    for name, w in full[0]["weights"].items():
        assert torch.equal(resumed[0]["weights"][name], w), name
        assert torch.equal(resumed[1]["weights"][name], w), name
    assert resumed[0]["rubric"] == resumed[1]["rubric"] == full[0]["rubric"]
    full_rows = read_jsonl(tmp_path / "full" / "run" / "metrics.jsonl")
    resumed_rows = read_jsonl(tmp_path / "cut" / "run" / "metrics.jsonl")
    assert [r["rubric_version"] for r in full_rows] == [1, 1, 1, 2]  # the refinement was installed after step 3
    stored = " ".join(p.read_text() for p in (tmp_path / "full" / "run" / "rubrics").rglob("*") if p.is_file())
    assert "analysing 16 samples" in stored  # steps 1-2 of both ranks (rank 0 alone has 4 a step): gathered
    assert [(r["reward_mean"], r["rubric_version"]) for r in resumed_rows] == \
        [(r["reward_mean"], r["rubric_version"]) for r in full_rows]
