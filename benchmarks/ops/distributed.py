"""distributed: data-parallel scaling of `mpo-fast train` from 1 to N processes on one global batch.

    python -m benchmarks.run --op distributed [--quick] [--device cpu|cuda]

Each measurement runs the documented command, `torchrun --standalone --nproc-per-node=W -m
mpo_fast.cli train`, for W = 1 and W = N (N: the visible GPUs with --device cuda, 2 on CPU) on the
same config: the same global batch (rollout.prompts_per_step prompts x num_generations samples per
step, split over the ranks), a policy saved to a temporary directory, and the judge behind the
simulated OpenAI-compatible judge server (mpo_fast/testing/judge_server.py) in this process, with
the latency of a served ~7B judge. Reported per W, from metrics.jsonl (step 1 is warm-up and left
out): median step seconds, samples/s and generated tokens/s (summed over ranks), and the scaling
efficiency = (samples/s at W) / (W x samples/s at 1).

On a 2-core CPU, 2 processes share the same 2 cores as 1 process with 1 thread each per rank: the
figure measures the overhead of the collectives and the per-rank judge pool, not a speed-up of
compute. On GPUs, each rank has its own device.

Rows: 1 process and N ranks with DDP (LoRA; full fine-tuning with --quick), then full fine-tuning
on 1 process and N ranks with FSDP2 (train.distributed=fsdp2: sharded weights, gradients and
AdamW states; one all-gather of the whole policy per rollout, see mpo_fast/trainer/fsdp.py).
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import torch
import yaml

from benchmarks.common import BenchContext

ROOT = Path(__file__).resolve().parent.parent.parent


def _policy_dir(path: Path, hidden: int, layers: int) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(ROOT))
    from tests.tiny_models import char_tokenizer

    tok = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=max(hidden // 64, 2), num_key_value_heads=max(hidden // 128, 1),
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _run(world: int, config: Path, device: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "-m", "mpo_fast.cli", "train", "--config", str(config)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {world} processes failed ({done.returncode}): {done.stderr[-3000:]}")
    from mpo_fast.trainer.run_log import read_jsonl

    rows = read_jsonl(Path(yaml.safe_load(config.read_text())["output_dir"]) / "metrics.jsonl")
    return rows


def run(ctx: BenchContext) -> Iterator[dict]:
    from mpo_fast.testing import JudgeServer, LatencyModel

    n = torch.cuda.device_count() if ctx.device == "cuda" else 2
    quick = ctx.quick
    # full: sized so one CPU step is seconds (the essay prompts are ~300 character tokens); on GPUs
    # pass a larger model through the config when measuring the scaling goal.
    hidden, layers = (64, 2) if quick else (256, 4)
    steps = 4 if quick else 6
    prompts, group, new_tokens = (4, 4, 16) if quick else (8, 4, 32)
    latency = LatencyModel(base_s=0.04, decode_s_per_token=0.002 if quick else 0.01, prefill_s_per_token=0.00002)
    with tempfile.TemporaryDirectory(prefix="mpo-dist-bench-") as tmp, JudgeServer(latency) as judge:
        policy = _policy_dir(Path(tmp) / "policy", hidden, layers)
        base = {"output_dir": "", "seed": 0, "overwrite": True,
                "model": {"name_or_path": str(policy), "dtype": "float32" if ctx.device == "cpu" else "bfloat16",
                          "device": ctx.device},
                "lora": {"enabled": not quick, "r": 16, "alpha": 32},
                "task": {"name": "essay", "limit": prompts * steps, "max_prompt_tokens": 4096},
                "rollout": {"prompts_per_step": prompts, "num_generations": group, "max_new_tokens": new_tokens,
                            "temperature": 1.0},
                "judge": {"backend": "openai", "model": "simulated-judge", "base_url": judge.base_url, "scoring": "parse",
                          "call_mode": "all_items", "concurrency": 32},
                "meta": {"enabled": False},
                "train": {"max_steps": steps, "learning_rate": 1e-4, "micro_batch_size": 16, "kl_coef": 0.0},
                "log": {"save_steps": 0, "report_to": ["none"], "progress": False}}
        # (world, lora, train.distributed): the LoRA (or, --quick, full fine-tuning) DDP pair, then full
        # fine-tuning on 1 process against FSDP2 on N: efficiency is against the 1-process run of the
        # same kind (LoRA or full).
        runs = [(1, not quick, "auto"), (n, not quick, "ddp")]
        if n > 1:
            runs += ([] if quick else [(1, False, "auto")]) + [(n, False, "fsdp2")]
        baseline: dict[bool, float] = {}
        for world, lora, mode in runs:
            name = f"run{world}-{'lora' if lora else 'full'}-{mode}"
            cfg = {**base, "output_dir": str(Path(tmp) / name), "lora": {**base["lora"], "enabled": lora},
                   "train": {**base["train"], "distributed": mode}}
            path = Path(tmp) / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            rows = _run(world, path, ctx.device)
            steady = rows[1:] or rows
            step_s = statistics.median(r["step_seconds"] for r in steady)
            sps = statistics.median(r["samples_per_s"] for r in steady)
            tps = statistics.median(r["generated_tokens_per_s"] for r in steady)
            if world == 1:
                baseline[lora] = sps
            yield {
                "provider": f"torchrun_x{world}" + ("" if world == 1 else f"_{mode}"), "pass": "train_step",
                "shape": f"global {prompts}x{group} samples, {new_tokens} tok, h{hidden} L{layers}",
                "median_ms": step_s * 1000.0, "p20_ms": None, "p80_ms": None, "peak_mem_bytes": None,
                "world_size": world, "samples_per_s": sps, "generated_tokens_per_s": tps,
                "scaling_efficiency": sps / (world * baseline[lora]),
                "lora": lora, "distributed": mode if world > 1 else None,
                "peak_rss_mb_rank0": max(r.get("peak_rss_mb", 0.0) for r in rows),
            }
