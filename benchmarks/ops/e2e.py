"""e2e: one training step, TRL's GRPOTrainer against mpo_fast, on TRL's own workload (issue 15).

    python -m benchmarks.run --op e2e [--quick]

Workload (full): the embedded SmolLM2-135M-Instruct, full fine-tune, 2 essay prompts x 4 samples
x 64 new tokens, lr 1e-6, KL off, one PPO epoch, fp32 on CPU. A second copy of the same model is
the in-process judge (frozen).
- TRL (the peer): GRPOTrainer (beta=0, num_iterations=1) with a reward function a TRL user
  writes: the judge's expected digit after "<prompt> <essay> Rate the essay from 0 to 9.".
- mpo_fast: MPOTrainer with LocalJudge, scoring=expected, a one-item 0-9 rubric
  ("Overall quality"), max_rationale_tokens=1; `serial` runs MPOTrainer.train_step (the
  reference's generate -> judge -> update order), `overlapped` the pipeline with max_staleness=1.
Quick: a 2-layer random Llama with SmolLM2's tokenizer, 2 x 2 samples x 8 tokens.
MPO_FAST_E2E_THREADS sets the torch threads (default torch's), MPO_FAST_E2E_ROUNDS the rounds (default 2).

Providers are measured in the same process, interleaved round by round (TRL, serial,
overlapped, TRL, ...), each round a fresh copy of the weights; the reported s/step is the
median over every round's steps after the first (warm-up: allocator, thread pools). On a shared
machine compare the ratios, not the seconds; every record carries the load average.

The physical floor printed beside them, from rates measured in the same run:
- decode: every new token reads all weights once for the whole batch: 64 x bytes / bandwidth;
- judge: 2 x decoder params FLOPs per judge token that must be computed (the rubric prefix once,
  each sample's prompt + response + score suffix), plus the LM head on one position a row;
- update: 3 x that per trained token (forward + backward), the LM head on completion tokens only;
all at the measured fp32 matmul rate (best of 10 1024^3 matmuls).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from benchmarks.common import BenchContext

RUBRIC_TASK = "Grade a short essay."
RUBRIC_ITEM = ("Overall quality", "How good the essay is overall: answers the prompt, clear, specific, well written.", 9)
TRL_QUESTION = "Rate the essay from 0 to 9."


@dataclass(frozen=True)
class Workload:
    name: str
    policy: str  # "tiny" | "embedded"
    prompts_per_step: int
    group_size: int
    max_new_tokens: int
    steps: int  # per round; the first of each round is warm-up
    rounds: int
    min_score_mass: float  # a random tiny judge puts ~1e-4 on digits: keep its scores (quick only)
    # and leaves 5-7% of that mass on tokens no score reads, around JudgeSettings' 0.05 limit: which
    # side a step lands on depended on the sampled texts (quick only)
    max_unresolved_share: float = 0.05


QUICK = Workload("quick", "tiny", 2, 2, 8, 2, 1, 0.0, max_unresolved_share=1.0)
FULL = Workload("full", "embedded", 2, 4, 64, 3, 2, 0.01)


# -- models ----------------------------------------------------------------------------------

def _load(w: Workload, tokenizer):
    if w.policy == "embedded":
        from mpo_fast.models.embedded import load_embedded

        model, _ = load_embedded(dtype=torch.float32)
        return model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config)


def _one_item_rubric():
    from mpo_fast.rubrics import Rubric, RubricItem

    return Rubric(RUBRIC_TASK, "", (RubricItem(*RUBRIC_ITEM),))


def _uptime() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


# -- TRL -------------------------------------------------------------------------------------

class _TrlReward:
    """A TRL reward function: the judge's expected digit after TRL_QUESTION (one batched forward)."""

    __name__ = "judge_expected_digit"

    def __init__(self, judge, tokenizer):
        self.judge, self.tokenizer = judge, tokenizer
        self.digits = torch.tensor([tokenizer(str(d), add_special_tokens=False)["input_ids"][-1] for d in range(10)])
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, prompts, completions, **kwargs):
        t0 = time.perf_counter()
        tok = self.tokenizer
        texts = []
        for p, c in zip(prompts, completions):
            question = p[-1]["content"] if isinstance(p, list) else p
            answer = c[-1]["content"] if isinstance(c, list) else c
            conv = [{"role": "user", "content": f"{question}\n\nEssay:\n{answer}\n\n{TRL_QUESTION}"}]
            texts.append(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True) + "Score: ")
        side = tok.padding_side
        tok.padding_side = "left"
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        tok.padding_side = side
        logits = self.judge(**enc, logits_to_keep=1).logits[:, -1].float()
        p = torch.softmax(logits[:, self.digits], -1)
        self.seconds += time.perf_counter() - t0
        return (p * torch.arange(10.0)).sum(-1).tolist()


def _trl_round(w: Workload, base, judge, tokenizer, examples, task, out_dir: Path) -> dict:
    try:
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer
    except Exception as e:  # noqa: BLE001 - any import failure makes the peer unavailable
        return {"unavailable": f"{type(e).__name__}: {e}"}
    step_times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    n = w.prompts_per_step * w.group_size
    cfg = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=n, gradient_accumulation_steps=1, num_generations=w.group_size,
        max_completion_length=w.max_new_tokens, learning_rate=1e-6, beta=0.0, num_iterations=1, max_steps=w.steps,
        temperature=0.7, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, lr_scheduler_type="constant",
        gradient_checkpointing=False,  # TRL's default recomputes activations: slower, and pointless at 135M
    )
    data = Dataset.from_list([{"prompt": task.build_messages(e)} for e in examples])
    reward = _TrlReward(judge, tokenizer)
    model = copy.deepcopy(base)
    gen_s = [0.0]
    plain_generate = model.generate

    def timed_generate(*a, **kw):
        t0 = time.perf_counter()
        try:
            return plain_generate(*a, **kw)
        finally:
            gen_s[0] += time.perf_counter() - t0

    model.generate = timed_generate
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=cfg, train_dataset=data, processing_class=tokenizer,
                          callbacks=[Clock()])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    trainer.train()
    steps = len(step_times)
    rest = sum(step_times) - gen_s[0] - reward.seconds
    return {"step_s": step_times, "stages": {"generate_s": round(gen_s[0] / steps, 3), "judge_s": round(reward.seconds / steps, 3),
                                             "update_and_other_s": round(rest / steps, 3)}}


# -- mpo_fast --------------------------------------------------------------------------------

def _mpo_trainer(w: Workload, base, judge_model, tokenizer, examples, out_dir: Path):
    from mpo_fast.judges import JudgeSettings, LocalJudge
    from mpo_fast.trainer import (LogSettings, MetaSettings, MPOConfig, MPOTrainer, RolloutSettings, TaskSettings,
                                  TrainSettings)
    from mpo_fast.trainer.config import JudgeSettings as CfgJudge

    cfg = MPOConfig(
        output_dir=str(out_dir), seed=0,
        task=TaskSettings(name="essay", max_prompt_tokens=4096, rule_weight=0.0),
        rollout=RolloutSettings(prompts_per_step=w.prompts_per_step, num_generations=w.group_size,
                                max_new_tokens=w.max_new_tokens, temperature=0.7),
        judge=CfgJudge(backend="local", model="embedded", scoring="expected", call_mode="all_items",
                       max_rationale_tokens=1, max_failure_rate=1.0),
        meta=MetaSettings(enabled=False),
        train=TrainSettings(max_steps=w.steps, learning_rate=1e-6, micro_batch_size=w.prompts_per_step * w.group_size,
                            kl_coef=0.0, ppo_epochs=1, lr_scheduler="constant"),
        log=LogSettings(save_steps=0, report_to=["none"], progress=False, save_total_limit=1),
    )
    judge = LocalJudge(judge_model, tokenizer, JudgeSettings(scoring="expected", call_mode="all_items", rationale_tokens=1,
                                                              min_score_mass=w.min_score_mass,
                                                              max_unresolved_share=w.max_unresolved_share))
    trainer = MPOTrainer(copy.deepcopy(base), args=cfg, train_dataset=examples, judge=judge, processing_class=tokenizer)
    trainer.initial_rubric = _one_item_rubric()
    return trainer


def _mpo_serial_round(w, base, judge_model, tokenizer, examples, out_dir: Path) -> dict:
    trainer = _mpo_trainer(w, base, judge_model, tokenizer, examples, out_dir)
    from mpo_fast.trainer.run_log import RunLog

    trainer.run_log = RunLog(trainer.args, resume_step=trainer.start_run())
    rows = []
    for step in range(1, w.steps + 1):
        rows.append(trainer.train_step(step))
        trainer.step = step
    trainer.run_log.close()
    trainer.close()
    keys = ("generate_s", "judge_s", "update_s")
    warm = rows[1:] or rows
    return {"step_s": [r["step_seconds"] for r in rows],
            "stages": {k: round(statistics.median(r[k] for r in warm), 3) for k in keys},
            "reward_mean": [round(r["reward_mean"], 3) for r in rows], "judge_failed": sum(r["judge_failed"] for r in rows)}


def _mpo_overlapped_round(w, base, judge_model, tokenizer, examples, out_dir: Path) -> dict:
    from mpo_fast.trainer.pipeline import PipelineSettings
    from mpo_fast.trainer.pipeline.trainer_stages import train_pipelined

    trainer = _mpo_trainer(w, base, judge_model, tokenizer, examples, out_dir)
    settings = PipelineSettings(mode="overlapped", max_staleness=1, prompts_per_chunk=1, judge_concurrency=16,
                                judge_timeout_s=600, stall_timeout_s=1800)
    report = train_pipelined(trainer, settings, device="cpu")
    trainer.close()
    summary = report.summary()
    steady = report.steady_samples_per_s
    n = w.prompts_per_step * w.group_size
    return {"wall_s": report.wall_s, "steps": len(report.steps),
            # steady state (steps after the pipeline filled) needs >= 3 steps to mean anything
            "steady_step_s": n / steady if steady and len(report.steps) >= 3 else report.wall_s / max(len(report.steps), 1),
            "stages": {k: {kk: v.get(kk) for kk in ("busy_s", "idle_s") if kk in v} for k, v in summary["stages"].items()}}


# -- generation: mpo_fast's rollout against plain `generate` ------------------------------------

def _generate_check(w: Workload, base, tokenizer, prompts: list[list[int]], repeats: int) -> dict:
    """Plain `model.generate`, HFRollout(decode="generate") and HFRollout(decode="loop", the
    default: mpo_fast's decode loop) with the same sampling settings on the same left-padded batch
    (behaviour log-probs recorded by both rollouts), interleaved; seconds per call (median), and the
    process CPU seconds (less disturbed by other processes on a shared machine)."""
    from transformers import GenerationConfig

    from mpo_fast.rollout.base import SamplingParams
    from mpo_fast.rollout.hf import HFRollout

    model = copy.deepcopy(base).eval()
    sampling = SamplingParams(max_new_tokens=w.max_new_tokens, temperature=0.7)
    rollout = HFRollout(model, tokenizer, decode="generate")
    loop = HFRollout(model, tokenizer, decode="loop")
    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(w.group_size)]
    ids = torch.full((len(rows), width), rollout.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(rows):
        ids[r, width - len(p):] = torch.tensor(p)
        mask[r, width - len(p):] = 1
    config = GenerationConfig(max_new_tokens=w.max_new_tokens, do_sample=True, temperature=0.7, top_p=1.0, top_k=0,
                              pad_token_id=rollout.pad_token_id, eos_token_id=rollout.eos_token_ids)
    # No EOS for any: all generate the full 64 tokens, so the three time the same work.
    config.eos_token_id = None
    rollout.eos_token_ids = [-1]
    loop.eos_token_ids = [-1]
    rollout._generation_config = lambda s, _c=config: _c

    def plain():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)

    calls = {"plain_generate": plain,
             "hf_rollout": lambda: rollout.generate(prompts, n=w.group_size, sampling=sampling, policy_version=0),
             "hf_rollout_loop": lambda: loop.generate(prompts, n=w.group_size, sampling=sampling, policy_version=0)}
    times: dict[str, list[float]] = {k: [] for k in calls}
    cpu: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats + 1):
        for name, call in calls.items():
            c0 = time.process_time()
            times[name].append(_timed(call))
            cpu[name].append(time.process_time() - c0)
    out = {k: round(statistics.median(v[1:]), 3) for k, v in times.items()}
    out.update({f"{k}_cpu": round(statistics.median(v[1:]), 3) for k, v in cpu.items()})
    return out


# -- floors ----------------------------------------------------------------------------------

def _rates(quick: bool) -> dict:
    """Memory read bandwidth (sum of a 256 MB fp32 tensor) and fp32 matmul rate (1024^3 and a
    decode-like [8, 576] x [576, 1536]), best of a few tries."""
    n = (16 if quick else 64) * 2**20
    x = torch.ones(n)
    x.sum()
    best = min(_timed(lambda: x.sum()) for _ in range(5))
    bw = n * 4 / best
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(10))
    return {"read_gb_per_s": round(bw / 1e9, 2), "matmul_gflop_per_s": round(2 * 1024**3 / best / 1e9, 1)}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _floor(w: Workload, base, trainer_prompts: list[int], judge_tokens: int, rates: dict) -> dict:
    """Seconds the step cannot beat at the measured rates. FLOPs per token: 2 x the decoder's
    parameters (the embedding lookup is no matmul), plus 2 x the LM head (hidden x vocab) only on
    positions whose logits are needed: every new token in decode, one per judge row, the
    completion tokens in the update (the fused log-prob op skips the prompt positions)."""
    head = base.get_output_embeddings().weight.numel()
    params = sum(p.numel() for p in base.parameters())
    body = params - base.get_input_embeddings().weight.numel()  # tied or not, the lookup is free
    nbytes = sum(p.numel() * p.element_size() for p in base.parameters())
    n = w.prompts_per_step * w.group_size
    flops = rates["matmul_gflop_per_s"] * 1e9
    decode = w.max_new_tokens * nbytes / (rates["read_gb_per_s"] * 1e9)
    prefill = 2 * body * sum(trainer_prompts) / flops
    judge = (2 * body * judge_tokens + 2 * head * n) / flops
    completion = n * w.max_new_tokens
    train_tokens = sum(trainer_prompts) + completion
    update = 3 * (2 * body * train_tokens + 2 * head * completion) / flops  # forward + backward (2x)
    return {"generate_s": round(decode + prefill, 3), "judge_s": round(judge, 3), "update_s": round(update, 3),
            "step_s": round(decode + prefill + judge + update, 3), "judge_tokens": judge_tokens,
            "train_tokens": train_tokens, "params": params}


def _judge_tokens(trainer, tokenizer, w: Workload) -> int:
    """Tokens the judge must compute for one step: the common prefix of every sample's judge prompt
    once, the rest of each (prompt + response + score suffix) per sample (responses of max length)."""
    from mpo_fast.judges.prompts import rm_messages, score_spec
    from mpo_fast.judges.types import JudgeRequest

    rubric = _one_item_rubric()
    spec = score_spec(rubric, (0,), None)
    fake = " word" * w.max_new_tokens
    seqs = []
    for p in trainer.prompts[: w.prompts_per_step]:
        for _ in range(w.group_size):
            msgs = rm_messages(JudgeRequest(prompt=p.text, response=fake, rubric=rubric), (0,), spec, "ab12cd")
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            seqs.append(tokenizer(text, add_special_tokens=False)["input_ids"] + [0] * 8)  # + rationale and score tag
    common = len(os.path.commonprefix(seqs)) if seqs else 0
    return common + sum(len(s) - common for s in seqs)


# -- run ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    loggers = [logging.getLogger(n) for n in ("mpo_fast", "transformers", "trl")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def run(ctx: BenchContext) -> Iterator[dict]:
    from mpo_fast.models.embedded import load_embedded_tokenizer
    from mpo_fast.tasks import get_task

    if ctx.device != "cpu":
        yield {"provider": "all", "shape": "e2e", "pass": "train", "median_ms": None,
               "unavailable": "e2e measures the CPU workload of issue 15; run with --device cpu"}
        return
    w = QUICK if ctx.quick else FULL
    if os.environ.get("MPO_FAST_E2E_ROUNDS"):  # fewer rounds on a loaded machine, more on an idle one
        w = dataclasses.replace(w, rounds=int(os.environ["MPO_FAST_E2E_ROUNDS"]))
    threads = int(os.environ.get("MPO_FAST_E2E_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    tokenizer = load_embedded_tokenizer()
    base = _load(w, tokenizer)
    judge_model = _load(w, tokenizer).eval().requires_grad_(False)
    task = get_task("essay")
    examples = task.load(limit=w.prompts_per_step * w.steps * 2)
    shape = (f"{w.name}: {w.policy} full fine-tune, {w.prompts_per_step} prompts x {w.group_size} samples x "
             f"{w.max_new_tokens} tokens, {threads} threads")
    results: dict[str, list] = {"trl": [], "mpo_fast_serial": [], "mpo_fast_overlapped": []}
    loads: list[str] = [_uptime()]
    with _quiet(), tempfile.TemporaryDirectory(prefix="mpo_e2e_") as tmp:
        for r in range(w.rounds):
            results["trl"].append(_trl_round(w, base, judge_model, tokenizer, examples, task, Path(tmp) / f"trl{r}"))
            results["mpo_fast_serial"].append(_mpo_serial_round(w, base, judge_model, tokenizer, examples, Path(tmp) / f"s{r}"))
            results["mpo_fast_overlapped"].append(_mpo_overlapped_round(w, base, judge_model, tokenizer, examples, Path(tmp) / f"o{r}"))
            loads.append(_uptime())
        probe = _mpo_trainer(w, base, judge_model, tokenizer, examples, Path(tmp) / "probe")
        prompt_lens = [len(p.ids) for p in probe.prompts[: w.prompts_per_step] for _ in range(w.group_size)]
        judge_tokens = _judge_tokens(probe, tokenizer, w)
        gen = _generate_check(w, base, tokenizer, [p.ids for p in probe.prompts[: w.prompts_per_step]], 1 if ctx.quick else 3)
        loads.append(_uptime())
    rates = _rates(ctx.quick)
    floor = _floor(w, base, prompt_lens, judge_tokens, rates)
    n = w.prompts_per_step * w.group_size

    def per_step(rounds: list[dict]) -> float | None:
        if not rounds or "unavailable" in rounds[0]:
            return None
        if "step_s" in rounds[0]:
            warm = [t for rd in rounds for t in (rd["step_s"][1:] or rd["step_s"])]
        else:
            warm = [rd["steady_step_s"] for rd in rounds]
        return statistics.median(warm)

    trl_s = per_step(results["trl"])
    for name, rounds in results.items():
        s = per_step(rounds)
        rec = {"provider": name, "shape": shape, "pass": "train", "median_ms": round(1e3 * s, 1) if s else None,
               "s_per_step": round(s, 3) if s else None, "samples_per_s": round(n / s, 4) if s else None,
               "speedup_vs_trl": round(trl_s / s, 2) if s and trl_s else None,
               "x_of_floor": round(s / floor["step_s"], 2) if s else None,
               "rounds": rounds, "load_avg": loads, "torch_threads": threads}
        if rounds and "unavailable" in rounds[0]:
            rec["unavailable"] = rounds[0]["unavailable"]
        yield rec
    yield {"provider": "generate_check", "shape": shape, "pass": "generate", "median_ms": round(1e3 * gen["hf_rollout_loop"], 1),
           "seconds": gen, "rollout_vs_plain": round(gen["hf_rollout"] / gen["plain_generate"], 3),
           "loop_vs_plain": round(gen["hf_rollout_loop"] / gen["plain_generate"], 3),
           "loop_vs_plain_cpu": round(gen["hf_rollout_loop_cpu"] / gen["plain_generate_cpu"], 3), "load_avg": loads}
    yield {"provider": "physical_floor", "shape": shape, "pass": "train", "median_ms": round(1e3 * floor["step_s"], 1),
           "samples_per_s": round(n / floor["step_s"], 4), "floor": floor, "rates": rates, "load_avg": loads}


def main() -> int:  # python -m benchmarks.ops.e2e: the same as benchmarks.run --op e2e
    from benchmarks import run as runner

    return runner.main(["--op", "e2e", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
