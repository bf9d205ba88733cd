"""One full-fine-tuning update step (PolicyUpdater.update: forward, loss, backward, AdamW step) with
the fused policy loss (fused_linear_policy_loss, 3 GEMMs at the LM head) against the path before it
(fused_linear_logprob + policy_loss, 4 GEMMs), on the embedded SmolLM2-135M (tied head, V=49152) or
the tiny random model.

    python -m benchmarks.update_step [--model smollm2|tiny] [--rows 8] [--prompt 32] [--completion 64]
                                     [--repeats 3] [--threads N] [--device cpu|cuda]

Runs alternate between the two paths (ABAB...) so machine load drifts hit both alike; prints one
JSON line with the medians, the git commit and the load average (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

import torch


def _batch(rows: int, prompt: int, completion: int, vocab: int, seed: int = 0):
    from mpo_fast.rollout import Rollout
    from mpo_fast.trainer.batch import build_train_batch

    g = torch.Generator().manual_seed(seed)
    rollouts = [Rollout(i // 2, i % 2, torch.randint(10, vocab, (prompt,), generator=g).tolist(),
                        torch.randint(10, vocab, (completion,), generator=g).tolist(), "", None, True, 0)
                for i in range(rows)]
    return build_train_batch(rollouts, torch.randn(rows, generator=g), pad_token_id=0)


def _model(name: str, device: str):
    if name == "smollm2":
        from mpo_fast.models import load_embedded

        model, _ = load_embedded(device=device)
        return model
    from tests.tiny_models import char_tokenizer, tiny_causal_lm

    return tiny_causal_lm(char_tokenizer(), tie=True, arch="qwen2").to(device)


def _updater(model, fused_loss: bool, device: str):
    from mpo_fast.trainer.config import TrainSettings
    from mpo_fast.trainer.logprobs import PolicyLogprobs
    from mpo_fast.trainer.update import PolicyUpdater

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-7)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    lp = PolicyLogprobs(model, temperature=1.0, fused_loss=fused_loss)
    assert lp.fused_loss is fused_loss
    settings = TrainSettings(micro_batch_size=4, kl_coef=0.0, max_grad_norm=1.0)
    return PolicyUpdater(lp, opt, sched, params, settings, max_tokens=64, device=torch.device(device))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2", choices=("smollm2", "tiny"))
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--completion", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = _model(args.model, args.device)
    vocab = model.get_output_embeddings().weight.shape[0]
    batch = _batch(args.rows, args.prompt, args.completion, vocab)
    updaters = {"fused_policy_loss": _updater(model, True, args.device),
                "logprob_then_loss": _updater(model, False, args.device)}
    load_before = os.getloadavg()
    times = {k: [] for k in updaters}
    for rep in range(args.repeats + 1):  # the first round warms up both
        for name, upd in updaters.items():
            if args.device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            upd.update(batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            if rep:
                times[name].append(time.perf_counter() - t0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = {
        "bench": "update_step", "model": args.model, "device": args.device, "vocab": vocab,
        "rows": args.rows, "prompt": args.prompt, "completion": args.completion, "threads": torch.get_num_threads(),
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "all_s": {k: [round(x, 4) for x in v] for k, v in times.items()},
        "commit": commit, "loadavg_before": load_before,
    }
    out["speedup"] = round(out["median_s"]["logprob_then_loss"] / out["median_s"]["fused_policy_loss"], 3)
    out["loadavg_after"] = os.getloadavg()
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
