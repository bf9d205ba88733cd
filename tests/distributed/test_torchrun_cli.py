"""`torchrun --standalone --nproc-per-node=2 -m mpo_fast.cli train`: the documented command, on
CPU (gloo), a tiny random Llama saved to disk and a judge pool of two loopback judge servers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpo_fast.testing import JudgeServer, LatencyModel
from mpo_fast.trainer.run_log import read_jsonl
from tests.tiny_models import char_tokenizer, tiny_causal_lm

pytestmark = pytest.mark.slow  # two Python processes load torch + transformers (~30 s on 2 shared cores)
ROOT = Path(__file__).resolve().parents[2]
FAST = LatencyModel(base_s=0.002, decode_s_per_token=0.0, prefill_s_per_token=0.0)


def _tiny_model_dir(path: Path) -> Path:
    tok = char_tokenizer()
    tiny_causal_lm(tok, seed=0).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _torchrun(config: Path, *overrides: str, timeout_s: float = 300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "mpo_fast.cli", "-v", "train", "--config", str(config), *overrides]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)


def test_torchrun_two_ranks_write_one_run(tmp_path):
    with JudgeServer(FAST) as a, JudgeServer(FAST) as b:
        config = {
            "output_dir": str(tmp_path / "run"), "seed": 0,
            "model": {"name_or_path": str(_tiny_model_dir(tmp_path / "model")), "dtype": "float32", "device": "cpu"},
            "lora": {"enabled": False},
            "task": {"name": "essay", "limit": 8, "max_prompt_tokens": 4096},
            "rollout": {"prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 8, "temperature": 1.0},
            "judge": {"backend": "openai", "model": "simulated-judge", "base_url": [a.base_url, b.base_url],
                      "scoring": "parse", "call_mode": "all_items", "concurrency": 4},
            "meta": {"enabled": True, "backend": "judge", "interval": 1, "min_steps_between": 1, "num_samples": 2,
                         "gates": False},  # the simulated server rewrites the whole rubric; only the broadcast is tested
            "train": {"max_steps": 2, "learning_rate": 1e-3, "micro_batch_size": 4, "kl_coef": 0.0,
                      "dist_timeout_s": 120},
            "log": {"save_steps": 0, "report_to": ["none"], "progress": False, "samples_per_step": 3},
        }
        path = tmp_path / "tiny.yaml"
        path.write_text(yaml.safe_dump(config))
        done = _torchrun(path)
    assert done.returncode == 0, done.stderr[-4000:]
    run = tmp_path / "run"
    rows = read_jsonl(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["world_size"] == 2 and r["samples"] == 4 and r["judge_failed"] == 0 for r in rows)
    assert rows[1]["rubric_version"] == 2  # rank 0's meta-judge refined after step 1, both ranks used it
    samples = read_jsonl(run / "samples.jsonl")  # log.samples_per_step=3 counts the global step, as in one process
    assert [s["step"] for s in samples] == [1, 1, 1, 2, 2, 2]
    assert [s["prompt_id"] for s in samples[:3]].count(samples[0]["prompt_id"]) == 2  # rank 0's group first, then rank 1's
    assert json.loads((run / "summary.json").read_text())  # rank 0 summarised
    assert (run / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    # train.distributed=auto with full fine-tuning is FSDP2: the checkpoint is DCP shards, no model/ folder
    assert (run / "checkpoints" / "step-000002" / "dcp" / ".metadata").is_file()
    assert not (run / "checkpoints" / "step-000002" / "model").exists()
    assert "judge pool:" in done.stderr  # per-endpoint counters logged
    endpoints = rows[-1]["judge_endpoints"]  # both ranks' pools, summed per server
    assert set(endpoints) == {a.base_url, b.base_url} and all(e["failures"] == 0 for e in endpoints.values())
    assert sum(e["ok"] for e in endpoints.values()) == a.stats.requests + b.stats.requests
    assert a.stats.requests > 0 and b.stats.requests > 0  # the pool spread the judging over both servers
