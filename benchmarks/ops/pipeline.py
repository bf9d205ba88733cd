"""pipeline: the same MPO workload under the reference's serial schedule and the overlapped pipeline.

    python -m benchmarks.run --op pipeline [--quick]

One run trains fresh copies of one policy (same seed, same data order) with the MPOTrainer's
stages (mpo_fast/trainer/pipeline/trainer_stages.py) against a real HTTP judge on localhost: the
simulated judge server (mpo_fast/testing/judge_server.py) in its own process, reached through
mpo_fast's OpenAIJudge (scoring=parse, one call per rubric item, as the reference) and MetaJudge
(analyse -> refine -> merge, structured JSON). Schedules:

  serial_reference  generate all, then judge one call at a time, then train; stop for the
                    meta-judge every `interval` steps (the reference's schedule)
  serial_batched    the same order, judge calls concurrent (mpo_fast's own serial loop)
  overlapped_s0     producer / judge pool / trainer / background meta-judge, max_staleness=0
                    (exact on-policy: judging overlaps generation only)
  overlapped_s1     the same with max_staleness=1 (generation of step j+1 overlaps update j)

Reported per schedule: samples/s, judge calls/s, busy/idle seconds of every stage, the judge
server's own busy time and peak concurrency, speedups against serial_reference and
serial_batched, and whether the rewards agree with serial_reference on the samples both runs
generated identically (they must: same text, same rubric -> same score).

Workloads. quick: a 2-layer random Llama (hidden 64) with SmolLM2's tokenizer, a judge that
answers in ~0.1 s (30 ms to first token, 2 ms per output token). full: the embedded
SmolLM2-135M-Instruct with LoRA r=16, 64-token answers, 8 samples a step, and a judge modelled
on a ~7B model served on one GPU (40 ms to first token, 10 ms per output token per sequence,
64 sequences at once).

CPU threads: every schedule runs with one torch thread per stage thread. On this shared 2-core
machine two OpenMP threads are pathological under load (measured: SmolLM2-135M generating 4 x 64
tokens took 16 s with one thread and 251 s with two at load average 8), and the overlapped
schedules need one core per computing stage anyway.

Traces: with --device cuda the policy runs on the GPU. MPO_FAST_PIPELINE_TRACE=<file.json> records a torch.profiler trace of the overlapped_s1 run
(stage ranges per thread; on CUDA also the rollout, trainer and side-stream kernels on their own
streams); the record then says for how many seconds generation and update ranges overlapped.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import torch

from benchmarks.common import BenchContext
from mpo_fast.trainer.threads import torch_threads

ROOT = Path(__file__).resolve().parent.parent.parent


@dataclass(frozen=True)
class Workload:
    name: str
    policy: str  # "tiny" | "embedded"
    lora: bool
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    steps: int
    meta_interval: int
    meta_samples: int
    judge_latency: dict


QUICK = Workload("quick", "tiny", False, 2, 4, 32, 4, 2, 4,
                 dict(base_s=0.03, decode_s_per_token=0.002, prefill_s_per_token=0.00002, rationale_tokens=40,
                      free_text_tokens=120, capacity=64))
FULL = Workload("full", "embedded", True, 2, 4, 64, 6, 2, 4,
                dict(base_s=0.04, decode_s_per_token=0.010, prefill_s_per_token=0.00002, rationale_tokens=48,
                     free_text_tokens=160, capacity=64))

SCHEDULES = [
    # name, pipeline settings, judge HTTP concurrency
    ("serial_reference", dict(mode="serial", max_staleness=0, judge_concurrency=1), 1),
    ("serial_batched", dict(mode="serial", max_staleness=0, judge_concurrency=16), 64),
    ("overlapped_s0", dict(mode="overlapped", max_staleness=0, judge_concurrency=16), 64),
    ("overlapped_s1", dict(mode="overlapped", max_staleness=1, judge_concurrency=16), 64),
]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when this process dies, however it dies (no orphan left behind)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class JudgeProcess:
    """The simulated judge in its own process (its event loop must not share our GIL)."""

    def __init__(self, latency: dict):
        self._dir = tempfile.TemporaryDirectory(prefix="mpo_judge_")
        port_file = Path(self._dir.name) / "port"
        args = [sys.executable, "-m", "mpo_fast.testing.judge_server", "--port", "0", "--port-file", str(port_file)]
        for k, v in latency.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"the judge server exited: {self.proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("the judge server did not start within 60 s")
            time.sleep(0.05)
        self.base_url = f"http://127.0.0.1:{int(port_file.read_text())}/v1"

    def stats(self) -> dict:
        return httpx.get(self.base_url.removesuffix("/v1") + "/stats", timeout=10).json()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._dir.cleanup()


def _policy(w: Workload, tokenizer, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig

    if w.policy == "embedded":
        from mpo_fast.models.embedded import load_embedded

        model, _ = load_embedded(dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    return model.to(device)


def _trainer(w: Workload, base_model, tokenizer, judge_url: str, http_concurrency: int, out_dir: Path):
    from mpo_fast.judges import EndpointConfig, JudgeSettings, MetaJudge, MetaSettings, OpenAICompatibleLLM, OpenAIJudge
    from mpo_fast.trainer import (JudgeSettings as CfgJudge, LogSettings, LoraSettings, MetaSettings as CfgMeta,
                                  MPOConfig, MPOTrainer, RolloutSettings, TaskSettings, TrainSettings)

    cfg = MPOConfig(
        output_dir=str(out_dir), seed=0,
        lora=LoraSettings(enabled=w.lora, r=16, alpha=32),
        task=TaskSettings(name="essay", max_prompt_tokens=4096, rule_weight=0.0),
        rollout=RolloutSettings(prompts_per_step=w.prompts_per_step, num_generations=w.group_size,
                                max_new_tokens=w.max_new_tokens, temperature=0.7),
        judge=CfgJudge(backend="openai", model="simulated-judge", base_url=judge_url, scoring="parse",
                       call_mode="per_item", concurrency=http_concurrency, max_failure_rate=0.5),
        meta=CfgMeta(interval=w.meta_interval, num_samples=w.meta_samples, min_steps_between=1, trigger_on_signals=False),
        train=TrainSettings(max_steps=w.steps, learning_rate=1e-5 if w.lora else 1e-3, micro_batch_size=8, kl_coef=0.0,
                            lr_scheduler="constant"),
        log=LogSettings(save_steps=0, report_to=["none"], progress=False, save_total_limit=1),
    )
    endpoint = EndpointConfig(base_url=judge_url, model="simulated-judge", structured_output="openai",
                              max_concurrency=http_concurrency, timeout_s=120, max_retries=2)
    judge = OpenAIJudge(endpoint, JudgeSettings(scoring="parse", call_mode="per_item", max_new_tokens=160))
    meta = MetaJudge(OpenAICompatibleLLM(endpoint), MetaSettings(num_samples=w.meta_samples))
    peft_config = None
    if w.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=cfg.lora.target_modules, lora_dropout=0.0)
    return MPOTrainer(copy.deepcopy(base_model), args=cfg, judge=judge, meta_judge=meta, peft_config=peft_config,
                      processing_class=tokenizer)




def _profiled(device: str, name: str):
    """A profiler trace of the overlapped_s1 run when MPO_FAST_PIPELINE_TRACE names a file: the
    stages' mpo.* ranges on their own threads (and, on CUDA, their kernels on their own streams)."""
    from mpo_fast.trainer.pipeline.trace import profile_stages

    path = os.environ.get("MPO_FAST_PIPELINE_TRACE")
    if not path or name != "overlapped_s1":
        return contextlib.nullcontext(None)
    return profile_stages(path, device=device)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a and b else None


def run(ctx: BenchContext) -> Iterator[dict]:
    from mpo_fast.models.embedded import load_embedded_tokenizer
    from mpo_fast.trainer.pipeline import PipelineSettings, compare_rewards, train_pipelined

    logging.getLogger("mpo_fast").setLevel(logging.ERROR)  # the meta-judge's per-proposal warnings
    w = QUICK if ctx.quick else FULL
    device = ctx.device
    tokenizer = load_embedded_tokenizer()
    base = _policy(w, tokenizer, device)
    server = JudgeProcess(w.judge_latency)
    reports = {}
    try:
        for name, kw, http_concurrency in SCHEDULES:
            settings = PipelineSettings(**kw, prompts_per_chunk=1, judge_timeout_s=300, stall_timeout_s=900,
                                        rubric_swap="when_ready")
            with tempfile.TemporaryDirectory(prefix=f"mpo_bench_{name}_") as tmp:
                trainer = _trainer(w, base, tokenizer, server.base_url, http_concurrency, Path(tmp) / "run")
                threads = 1
                before = server.stats()
                with torch_threads(threads), _profiled(device, name) as prof:
                    report = train_pipelined(trainer, settings, device=device)
                trace = None
                if prof is not None:  # written when the profiled block ended
                    from mpo_fast.trainer.pipeline.trace import trace_overlap

                    trace = trace_overlap(os.environ["MPO_FAST_PIPELINE_TRACE"])
                after = server.stats()
            reports[name] = report
            ref = reports["serial_reference"]
            batched = reports.get("serial_batched")
            summary = report.summary()
            rec = {
                "provider": name,
                "shape": f"{w.name}: {w.policy} policy, {w.steps} steps x {w.prompts_per_step * w.group_size} samples, "
                         f"{w.max_new_tokens} new tokens",
                "pass": "train",
                "median_ms": round(1e3 * report.wall_s / max(len(report.steps), 1), 1),  # per step
                "wall_s": summary["wall_s"],
                "samples_per_s": summary["samples_per_s"],
                "judge_calls": summary["judge_calls"],
                "judge_calls_per_s": summary["judge_calls_per_s"],
                "speedup_vs_serial_reference": round(report.samples_per_s / ref.samples_per_s, 2),
                # once the pipeline is full (steps after the first): what a long run sees
                "steady_samples_per_s": summary["steady_samples_per_s"],
                "steady_speedup_vs_serial_reference": _ratio(report.steady_samples_per_s, ref.steady_samples_per_s),
                "speedup_vs_serial_batched": round(report.samples_per_s / batched.samples_per_s, 2) if batched else None,
                "max_observed_staleness": summary["max_observed_staleness"],
                "rubric_swaps": summary["rubric_swaps"],
                "meta_runs": summary["meta_runs"],
                "failed_judgements": summary["failed_judgements"],
                "stages": summary["stages"],
                "judge_server": {"requests": after["requests"] - before["requests"],
                                 "busy_s": round(after["busy_s"] - before["busy_s"], 2),
                                 "peak_running": after["max_running"]},
                "rewards_vs_serial_reference": compare_rewards(ref, report) if name != "serial_reference" else None,
                "torch_threads": threads or torch.get_num_threads(),
            }
            if trace is not None:
                rec["profiler_trace"] = {"path": os.environ["MPO_FAST_PIPELINE_TRACE"], **trace}
            yield rec
    finally:
        server.close()


def main() -> int:  # python -m benchmarks.ops.pipeline: the same as benchmarks.run --op pipeline
    from benchmarks import run as runner

    return runner.main(["--op", "pipeline", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
