"""rollout: plain `model.generate` against HFRollout's two decoders, interleaved in one process (issue 15).

    python -m benchmarks.run --op rollout [--quick] [--device cpu|cuda]

Workload (full): the embedded SmolLM2-135M-Instruct (fp32 on CPU, bf16 on CUDA), the e2e
benchmark's rollout: 2 essay prompts (chat template, ~116 tokens) x 4 samples x 64 new tokens,
temperature 0.7, no EOS (every row decodes all 64 tokens, so every provider does the same work).
Quick: a 2-layer random Llama with SmolLM2's tokenizer, 8 new tokens.
MPO_FAST_ROLLOUT_THREADS sets the torch threads (default 1, the e2e setting), MPO_FAST_ROLLOUT_ROUNDS
the rounds (default 5 full, 2 quick), MPO_FAST_ROLLOUT_LORA=r wraps the policy in a peft LoRA of rank r
on all seven projections (default 0: full weights).

Providers, one call each per round in this order (round 0 is warm-up and not counted):
- plain_generate: `model.generate` on the left-padded batch (no behaviour log-probs);
- hf_generate: HFRollout(decode="generate"), generate plus the behaviour log-prob recorder;
- hf_loop_dynamic_unpacked / hf_loop_static_unpacked: HFRollout(decode="loop") with either KV
  cache, F.linear on the live weights;
- hf_loop: the default HFRollout (loop, static cache, oneDNN-packed weights on a CPU).
Each record: median wall seconds per call and median process CPU seconds (on a shared machine the
CPU seconds are less disturbed by other processes than the wall time; compare ratios), the ratio to
plain_generate, and the load average before and after.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Iterator

import torch

from benchmarks.common import BenchContext


def _uptime() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def _model(quick: bool, tokenizer, device: str):
    if not quick:
        from mpo_fast.models.embedded import load_embedded

        model, _ = load_embedded(dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
        return model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to(device).eval()


def run(ctx: BenchContext) -> Iterator[dict]:
    from transformers import GenerationConfig

    from mpo_fast.models.embedded import load_embedded_tokenizer
    from mpo_fast.rollout.base import SamplingParams
    from mpo_fast.rollout.hf import HFRollout
    from mpo_fast.tasks import get_task
    from mpo_fast.trainer.stages import render_prompts

    threads = int(os.environ.get("MPO_FAST_ROLLOUT_THREADS", "1"))
    rounds = int(os.environ.get("MPO_FAST_ROLLOUT_ROUNDS", "2" if ctx.quick else "5"))
    torch.set_num_threads(threads)
    tokenizer = load_embedded_tokenizer()
    model = _model(ctx.quick, tokenizer, ctx.device)
    lora_r = int(os.environ.get("MPO_FAST_ROLLOUT_LORA", "0"))
    if lora_r:
        from peft import LoraConfig

        from mpo_fast.models.hf_compat import wrap_with_peft

        model = wrap_with_peft(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    task = get_task("essay")
    prompts = [p.ids for p in render_prompts(task.load(limit=2), task, tokenizer, max_prompt_tokens=4096)][:2]
    group, new_tokens = 4, (8 if ctx.quick else 64)
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=0.7)
    backends = {"hf_generate": HFRollout(model, tokenizer, decode="generate"),
                "hf_loop_dynamic_unpacked": HFRollout(model, tokenizer, cache="dynamic", packed_weights=False),
                "hf_loop_static_unpacked": HFRollout(model, tokenizer, cache="static", packed_weights=False),
                "hf_loop": HFRollout(model, tokenizer)}  # the default: static cache, packed weights on a CPU
    pad = backends["hf_generate"].pad_token_id
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                              pad_token_id=pad, eos_token_id=None)
    for backend in backends.values():
        backend.eos_token_ids = [-1]  # no EOS: every row decodes all new_tokens
    backends["hf_generate"]._generation_config = lambda s, _c=config: _c
    rows = [p for p in prompts for _ in range(group)]
    width = max(len(p) for p in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(rows):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    ids, mask = ids.to(ctx.device), mask.to(ctx.device)

    def plain():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    calls = {"plain_generate": plain}
    for name, backend in backends.items():
        calls[name] = lambda b=backend: b.generate(prompts, n=group, sampling=sampling, policy_version=0)
    wall: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    loads = [_uptime()]
    for _ in range(rounds + 1):
        for name, call in calls.items():
            if ctx.device == "cuda":
                torch.cuda.synchronize()
            w0, c0 = time.perf_counter(), time.process_time()
            call()
            if ctx.device == "cuda":
                torch.cuda.synchronize()
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    loads.append(_uptime())
    shape = (f"{'tiny llama' if ctx.quick else 'SmolLM2-135M'}: {len(prompts)} prompts x {group} samples x "
             f"{new_tokens} tokens (prompts {[len(p) for p in prompts]}), {threads} threads"
             + (f", LoRA r={lora_r}" if lora_r else ""))
    base_wall = statistics.median(wall["plain_generate"][1:])
    base_cpu = statistics.median(cpu["plain_generate"][1:])
    for name in calls:
        w, c = statistics.median(wall[name][1:]), statistics.median(cpu[name][1:])
        yield {"provider": name, "shape": shape, "pass": "generate", "median_ms": round(1e3 * w, 1),
               "cpu_s": round(c, 3), "vs_plain_wall": round(w / base_wall, 3), "vs_plain_cpu": round(c / base_cpu, 3),
               "wall_s_rounds": [round(x, 3) for x in wall[name][1:]], "load_avg": loads, "torch_threads": threads}
