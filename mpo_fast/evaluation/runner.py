"""`mpo-fast eval`: generate with two policies on the task's held-out split, compare, write JSON.

What is measured depends on the task (the MPO paper's table):
- essay, summarization: pairwise judgements in both orders -> win/tie/loss, win rate, length-
  controlled win rate, position bias, Bradley-Terry (Elo-scale) ratings, all with paired-bootstrap
  CIs over prompts; summarization adds ROUGE-1/2/L against the references;
- math, ethics: accuracy with the task's checker (pairwise too with `pairwise=True`).
Resumable: generations (`NAME.responses.jsonl`) and verdicts (`NAME.verdicts.jsonl`) are stored
beside the result as they are made.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..rollout.base import SamplingParams
from ..rubrics.atomic_file import write_text_atomic
from ..tasks.registry import get_task
from .accuracy import CHECKERS, accuracy
from .bootstrap import DEFAULT_RESAMPLES
from .judge_options import EvalJudgeOptions, build_eval_llm
from .length_control import lc_win_rate
from .pairwise import PairRecord, scores_of, summarise_pairs
from .pairwise_judge import PairRequest, PairwiseJudge, VerdictCache, judge_sync
from .policies import PolicySpec, load_policy_model, resolve_policy, run_config
from .ratings import Comparison, rate
from .responses import ResponseStore, generate_responses


PAIRWISE_TASKS = ("essay", "summarization")
RESULT_FORMAT = 1


@dataclass(frozen=True)
class EvalSettings:
    split: str = "test"
    limit: int | None = None
    seed: int | None = None  # None: the run's seed
    max_new_tokens: int | None = None  # None: the run's rollout.max_new_tokens
    temperature: float | None = None  # None: the run's rollout.temperature
    top_p: float | None = None
    resamples: int = DEFAULT_RESAMPLES
    pairwise: bool | None = None  # None: for essay and summarization
    batch_size: int = 8


def _sampling(settings: EvalSettings, config) -> SamplingParams:
    r = config.rollout
    return SamplingParams(
        max_new_tokens=settings.max_new_tokens or r.max_new_tokens,
        temperature=r.temperature if settings.temperature is None else settings.temperature,
        top_p=r.top_p if settings.top_p is None else settings.top_p, top_k=r.top_k,
        seed=config.seed if settings.seed is None else settings.seed,
    )


def run_evaluation(
    run_dir: str | os.PathLike[str],
    against: str,
    out: str | os.PathLike[str],
    *,
    checkpoint: str | None = None,
    settings: EvalSettings = EvalSettings(),
    judge_options: EvalJudgeOptions = EvalJudgeOptions(),
    loader: Callable[[PolicySpec, Any], tuple[Any, Any]] = load_policy_model,
    judge_llm=None,
    responses_path: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Compare RUN_DIR's checkpoint (A) with `against` (B); write and return the result.

    loader / judge_llm: injection points for tests (a tiny model, a scripted judge).
    responses_path: where generations are stored (default: beside `out`); evaluations that share
    one file generate each policy's answers once.
    """
    started = time.perf_counter()
    out = Path(out)
    config = run_config(run_dir)
    task = get_task(config.task.name)
    # "all": every row, for a dataset without a split column (the loader reads those as train only)
    examples = task.load(config.task.data, None if settings.split == "all" else settings.split, limit=settings.limit)
    a = resolve_policy(str(run_dir), base_run=run_dir, checkpoint=checkpoint)
    b = resolve_policy(against, base_run=run_dir)
    if a.label == b.label and a.checkpoint is not None and b.checkpoint is not None and a.checkpoint != b.checkpoint:
        a, b = (replace(spec, label=f"{spec.checkpoint.parents[1].parent.name}/{spec.label}") for spec in (a, b))
    if a.label == b.label:
        raise ValueError(f"both sides are {a.label}; compare two different policies")
    sampling = _sampling(settings, config)
    store = ResponseStore(responses_path if responses_path is not None else out.with_suffix(".responses.jsonl"))
    answers = {}
    for spec in (a, b):
        answers[spec.label] = generate_responses(
            spec.label, lambda spec=spec: loader(spec, config), task, examples, sampling, store,
            max_prompt_tokens=config.task.max_prompt_tokens, batch_size=settings.batch_size)
    result: dict[str, Any] = {
        "format": RESULT_FORMAT, "task": task.name, "split": settings.split, "prompts": len(examples),
        "policies": {"a": a.to_dict(), "b": b.to_dict()}, "sampling": asdict(sampling),
        "resamples": settings.resamples, "run_dir": str(run_dir),
        "mean_length_chars": {p: float(np.mean([len(r.text) for r in rs])) for p, rs in answers.items()},
        "finished_fraction": {p: float(np.mean([r.finished for r in rs])) for p, rs in answers.items()},
    }
    pairwise = settings.pairwise if settings.pairwise is not None else task.name in PAIRWISE_TASKS
    if pairwise:
        result.update(_pairwise(task, examples, a, b, answers, out, config, settings, judge_options, judge_llm))
    if task.name == "summarization":
        from .rouge import rouge_summary

        refs = [e.reference for e in examples]
        result["rouge"] = {p: {t: e.to_dict() for t, e in rouge_summary([r.text for r in rs], refs,
                                                                        resamples=settings.resamples).items()}
                           for p, rs in answers.items()}
    if task.name in CHECKERS:
        result["accuracy"] = {p: accuracy(task.name, examples, [r.text for r in rs], resamples=settings.resamples).to_dict()
                              for p, rs in answers.items()}
    result["wall_seconds"] = time.perf_counter() - started
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


def _pairwise(task, examples, a: PolicySpec, b: PolicySpec, answers, out: Path, config, settings: EvalSettings,
              judge_options: EvalJudgeOptions, judge_llm) -> dict[str, Any]:
    options = judge_options.resolved(config)
    llm = judge_llm if judge_llm is not None else build_eval_llm(options, config)
    judge = PairwiseJudge(llm, mode=options.scoring, temperature=options.temperature or 0.0,
                          max_new_tokens=options.max_new_tokens or 256, cache=VerdictCache(out.with_suffix(".verdicts.jsonl")),
                          batch_size=settings.batch_size)
    ra, rb = answers[a.label], answers[b.label]
    reference = task.requires_reference
    requests = []
    for e, x, y in zip(examples, ra, rb):
        prompt = task.format_prompt(e)
        ref = e.reference if reference else None
        requests.append(PairRequest(prompt, x.text, y.text, a.label, b.label, task.judge_context, ref))
        requests.append(PairRequest(prompt, y.text, x.text, b.label, a.label, task.judge_context, ref))
    verdicts = judge_sync(judge, requests)
    records = [PairRecord(e.id, verdicts[2 * i].position, verdicts[2 * i + 1].position, len(x.text), len(y.text))
               for i, (e, x, y) in enumerate(zip(examples, ra, rb))]
    summary = summarise_pairs(records, resamples=settings.resamples)
    scores, valid = scores_of(records)
    lc, phi = lc_win_rate(scores, valid, [r.length_a for r in records], [r.length_b for r in records],
                          resamples=settings.resamples)
    comparisons = [Comparison(i, a.label, b.label, float(s)) for i, (s, v) in enumerate(zip(scores, valid)) if v]
    ratings = rate(comparisons, len(records), policies=[a.label, b.label], resamples=settings.resamples) if comparisons else None
    errors: dict[str, int] = {}
    for v in verdicts:
        if not v.ok:
            errors[v.error or "unknown"] = errors.get(v.error or "unknown", 0) + 1
    return {
        "judge": {**options.to_dict(), "id": judge.judge_id, "separate_from_training": options.separate,
                  "calls": judge.calls, "cached_verdicts": sum(v.cached for v in verdicts),
                  "failed_calls": sum(not v.ok for v in verdicts), "errors": errors},
        "pairwise": {**summary.to_dict(), "lc_win_rate": lc.to_dict(), "length_coefficient": phi},
        "ratings": ratings.to_dict() if ratings is not None else None,
        "records": [{"prompt_id": r.prompt_id, "a_first": r.a_first.value if r.a_first else None,
                     "b_first": r.b_first.value if r.b_first else None, "outcome": r.outcome.value,
                     "length_a": r.length_a, "length_b": r.length_b} for r in records],
    }


def format_result(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    a, b = result["policies"]["a"]["id"], result["policies"]["b"]["id"]
    lines = [f"{result['task']} ({result['split']}, {result['prompts']} prompts): {a} vs {b}"]
    p = result.get("pairwise")
    if p:
        def pct(d):
            return "-" if d["value"] is None else f"{100 * d['value']:.1f}% [{100 * (d['low'] or 0):.1f}, {100 * (d['high'] or 0):.1f}]"

        lines.append(f"  win/tie/loss {p['wins']}/{p['ties']}/{p['losses']}, judge failures {p['judge_failures']}")
        lines.append(f"  win rate {pct(p['win_rate'])}, length-controlled {pct(p['lc_win_rate'])}, "
                     f"position bias {pct(p['position_bias'])}")
        for name, r in (result.get("ratings") or {}).items():
            lines.append(f"  Elo {name}: {r['value']:.0f} [{r['low']:.0f}, {r['high']:.0f}]")
        if not result["judge"]["separate_from_training"]:
            lines.append("  (judged by the training judge; see the warning above)")
    for name, acc in (result.get("accuracy") or {}).items():
        e = acc["accuracy"]
        lines.append(f"  accuracy {name}: {100 * e['value']:.1f}% [{100 * e['low']:.1f}, {100 * e['high']:.1f}] "
                     f"({acc['correct']}/{acc['total']}, {acc['unanswered']} unanswered)")
    for name, scores in (result.get("rouge") or {}).items():
        lines.append(f"  ROUGE {name}: " + ", ".join(f"{t} {100 * (s['value'] or 0):.1f}" for t, s in scores.items()))
    return "\n".join(lines)
