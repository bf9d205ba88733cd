"""A small synthetic run directory with everything the report shows: three rubric versions with
analyses, a hacking signal, judge failures, samples with per-item scores, and an eval result."""
from __future__ import annotations

import json
from pathlib import Path

from mpo_fast.rubrics import Rubric, RubricItem, RubricStore
from mpo_fast.trainer import MPOConfig

INJECTION = "<script>alert('x')</script>"


def _rubrics() -> list[Rubric]:
    base = (RubricItem("Answers the prompt", "Stays on the question.", 5), RubricItem("Clarity", "Reads easily.", 3))
    v2 = (base[0], RubricItem("Clarity", "Reads easily, short sentences.", 3), RubricItem("Evidence", "Cites examples.", 4))
    v3 = (v2[0], v2[2])
    return [Rubric("essay", "Grade essays.", items) for items in (base, v2, v3)]


def make_run(root: Path, steps: int = 12) -> Path:
    run = root / "synthetic-run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(MPOConfig(output_dir=str(run)).to_yaml(), encoding="utf-8")
    store = RubricStore(run / "rubrics")
    r1, r2, r3 = _rubrics()
    store.save(r1, step=0)
    store.save(r2, parent=1, step=4, analyses=["Responses ignore evidence; add an Evidence item. " + INJECTION])
    store.save(r3, parent=2, step=8, analyses=["Clarity saturated at full marks: drop it."])
    version_at = lambda s: 1 if s <= 4 else 2 if s <= 8 else 3  # noqa: E731
    metrics, samples = [], []
    for step in range(1, steps + 1):
        v = version_at(step)
        k = len(_rubrics()[v - 1].items)
        rewards = [0.1 * step / steps + 0.05 * i for i in range(4)]
        failed = 1 if step == 3 else 0
        metrics.append({
            "step": step, "rubric_version": v, "reward_mean": sum(rewards) / 4, "judge_reward_mean": sum(rewards) / 4,
            "rule_reward_mean": None, "samples": 4, "valid_samples": 4 - failed, "judge_failed": failed,
            "judge_failed_total": 1 if step >= 3 else 0, "judge_failure_rate": (1 if step >= 3 else 0) / (4 * step),
            "response_length_mean": 40 + step, "response_length_max": 60 + step, "kl": 0.001 * step,
            "approx_kl": 0.0005 * step, "loss": 0.1 - 0.01 * step, "grad_norm": 1.0, "entropy": 2.5 - 0.05 * step,
            "signals": ["length_collapse: mean length fell 40% in 3 steps"] if step == 6 else [],
            "rubric_evolved": {4: 2, 8: 3}.get(step), "generate_s": 1.0, "judge_s": 2.0, "update_s": 0.5,
            "evolve_s": 3.0 if step in (4, 8) else 0.0, "samples_per_s": 1.2, "generated_tokens_per_s": 150.0,
        })
        for i, reward in enumerate(rewards):
            bad = failed and i == 0
            samples.append({
                "step": step, "prompt_id": f"p{step % 3}", "prompt": "Write about the sea.", "sample_index": i,
                "response": f"response {i} of step {step} " + (INJECTION if i == 3 else ""),
                "reward": None if bad else reward, "item_scores": [None] * k if bad else [float(j + i) % 4 for j in range(k)],
                "rationale": f"rationale {step}/{i}", "judge_error": "no score" if bad else None,
                "rubric_version": v, "length": 40 + i,
            })
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics), encoding="utf-8")
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in samples), encoding="utf-8")
    return run


def eval_result(a: str, b: str, outcomes: list[str], prompts: list[str] | None = None) -> dict:
    prompts = prompts or [f"e{i}" for i in range(len(outcomes))]
    wins, ties, losses, fails = (outcomes.count(x) for x in ("win", "tie", "loss", "failed"))
    est = {"value": 0.6, "low": 0.4, "high": 0.8, "level": 0.95, "resamples": 1000}
    return {
        "format": 1, "task": "essay", "split": "test", "prompts": len(outcomes), "resamples": 1000,
        "policies": {"a": {"id": a}, "b": {"id": b}}, "mean_length_chars": {a: 300.0, b: 250.0},
        "judge": {"separate_from_training": False},
        "pairwise": {"wins": wins, "ties": ties, "losses": losses, "judge_failures": fails, "win_rate": est,
                     "lc_win_rate": est, "position_bias": est},
        "ratings": {a: {"value": 1040.0, "low": 990.0, "high": 1090.0}, b: {"value": 960.0, "low": 910.0, "high": 1010.0}},
        "records": [{"prompt_id": p, "outcome": o} for p, o in zip(prompts, outcomes)],
    }
