"""`mpo-fast experiment`: the MPO paper's comparison on your config, same budget for each arm.

Trains MPO (the config as given) and the same run with the meta-judge off (the fixed initial
rubric), then evaluates MPO vs base, fixed vs base and MPO vs fixed on the same held-out prompts
with the same evaluation judge and sampling seed, and writes a table (markdown and HTML) of
Bradley-Terry Elo ratings with bootstrap CIs and the pairwise win rates.

Layout of OUT_DIR: mpo/ and fixed/ (two ordinary run directories), eval/ (the three results,
their verdicts, one shared responses file), experiment.md, experiment.html. A rerun skips an arm
that already has its final checkpoint and reuses stored generations and verdicts.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from html import escape
from pathlib import Path
from typing import Any, Callable

from ..rubrics.atomic_file import write_text_atomic
from ..trainer.checkpoint import list_checkpoints
from ..trainer.config import MPOConfig
from .aggregate import ratings_from_results
from .judge_options import EvalJudgeOptions
from .runner import EvalSettings, run_evaluation

log = logging.getLogger("mpo_fast")

ARMS = ("mpo", "fixed")
SMALL_MODELS = ("embedded", "policy")


def arm_configs(config: MPOConfig, out_dir: Path, steps: int | None) -> dict[str, MPOConfig]:
    """The two training arms: identical but for the meta-judge (same seed, data, steps, judge)."""
    train = replace(config.train, max_steps=steps) if steps is not None else config.train
    return {
        "mpo": replace(config, output_dir=str(out_dir / "mpo"), train=train, meta=replace(config.meta, enabled=True)),
        "fixed": replace(config, output_dir=str(out_dir / "fixed"), train=train, meta=replace(config.meta, enabled=False)),
    }


def mechanics_only(config: MPOConfig, judge: EvalJudgeOptions) -> bool:
    """A run on the embedded 135M model (or judged by it) shows that the pipeline works, not whether MPO helps."""
    judge_model = judge.model or config.judge.model
    return config.model.name_or_path == "embedded" and (judge_model in SMALL_MODELS or judge.base_url is None)


def run_experiment(
    config: MPOConfig,
    out_dir: str | os.PathLike[str],
    *,
    steps: int | None = None,
    settings: EvalSettings = EvalSettings(),
    judge_options: EvalJudgeOptions = EvalJudgeOptions(),
    train: Callable[[MPOConfig], Any],
    **eval_kwargs,
) -> dict[str, Any]:
    """train: runs one arm to completion (the CLI passes its own `run_config`). eval_kwargs go to
    run_evaluation (loader / judge_llm in tests)."""
    out = Path(out_dir)
    arms = arm_configs(config, out, steps)
    for name in ARMS:
        done = list_checkpoints(arms[name].output_dir)
        if done and done[-1][0] >= arms[name].train.max_steps:
            # a rerun after an interrupted evaluation: the arm is trained already
            log.warning("experiment: %s already has a checkpoint of step %d; not training it again", name, done[-1][0])
            continue
        train(arms[name])
    mpo_dir, fixed_dir = arms["mpo"].output_dir, arms["fixed"].output_dir
    shared = out / "eval" / "responses.jsonl"
    plan = (("mpo_vs_base", mpo_dir, "base"), ("fixed_vs_base", fixed_dir, "base"), ("mpo_vs_fixed", mpo_dir, fixed_dir))
    results = {name: run_evaluation(a, b, out / "eval" / f"{name}.json", settings=settings, judge_options=judge_options,
                                    responses_path=shared, **eval_kwargs)
               for name, a, b in plan}
    ratings = ratings_from_results(list(results.values()), resamples=settings.resamples)
    table = {
        "task": config.task.name, "steps": arms["mpo"].train.max_steps, "prompts": results["mpo_vs_base"]["prompts"],
        "mechanics_only": mechanics_only(config, judge_options),
        "ratings": ratings.to_dict() if ratings is not None else None,
        "pairs": {name: {"a": r["policies"]["a"]["id"], "b": r["policies"]["b"]["id"], **_pair_row(r)}
                  for name, r in results.items()},
    }
    write_text_atomic(out / "experiment.json", json.dumps(table, indent=1) + "\n")
    write_text_atomic(out / "experiment.md", render_markdown(table))
    write_text_atomic(out / "experiment.html", render_html(table))
    return table


def _pair_row(result: dict[str, Any]) -> dict[str, Any]:
    p = result.get("pairwise") or {}
    row = {k: p.get(k) for k in ("wins", "ties", "losses", "judge_failures", "win_rate", "lc_win_rate", "position_bias")}
    if result.get("accuracy"):
        row["accuracy"] = {k: v["accuracy"] for k, v in result["accuracy"].items()}
    if result.get("rouge"):
        row["rouge"] = result["rouge"]
    return row


def _pct(d: dict | None) -> str:
    if not d or d.get("value") is None:
        return "-"
    if d.get("low") is None:
        return f"{100 * d['value']:.1f}%"
    return f"{100 * d['value']:.1f}% [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


MECHANICS_NOTE = ("This is a mechanics check: the embedded SmolLM2-135M policy judged by a 135M model cannot show "
                  "whether MPO helps. On a GPU, run it with a 1.5B-7B policy and a served judge for a real result.")


def render_markdown(table: dict[str, Any]) -> str:
    lines = [f"# MPO vs fixed rubric vs base: {table['task']}, {table['steps']} steps, {table['prompts']} test prompts", ""]
    if table["mechanics_only"]:
        lines += [f"> {MECHANICS_NOTE}", ""]
    if table["ratings"]:
        lines += ["| policy | Elo [95% CI] | games |", "|---|---|---|"]
        for name, r in sorted(table["ratings"].items(), key=lambda kv: -kv[1]["value"]):
            lines.append(f"| {name} | {r['value']:.0f} [{r['low']:.0f}, {r['high']:.0f}] | {r['games']} |")
        lines.append("")
    lines += ["| pair | W/T/L | judge failures | win rate | LC win rate | position bias |", "|---|---|---|---|---|---|"]
    for name, p in table["pairs"].items():
        wtl = f"{p['wins']}/{p['ties']}/{p['losses']}" if p.get("wins") is not None else "-"
        lines.append(f"| {p['a']} vs {p['b']} | {wtl} | {p.get('judge_failures', '-')} | {_pct(p.get('win_rate'))} | "
                     f"{_pct(p.get('lc_win_rate'))} | {_pct(p.get('position_bias'))} |")
    return "\n".join(lines) + "\n"


def render_html(table: dict[str, Any]) -> str:
    rows = "".join(f"<tr><td>{escape(n)}</td><td>{r['value']:.0f} [{r['low']:.0f}, {r['high']:.0f}]</td><td>{r['games']}</td></tr>"
                   for n, r in sorted((table["ratings"] or {}).items(), key=lambda kv: -kv[1]["value"]))
    pairs = "".join(
        f"<tr><td>{escape(p['a'])} vs {escape(p['b'])}</td><td>{p.get('wins')}/{p.get('ties')}/{p.get('losses')}</td>"
        f"<td>{p.get('judge_failures')}</td><td>{_pct(p.get('win_rate'))}</td><td>{_pct(p.get('lc_win_rate'))}</td>"
        f"<td>{_pct(p.get('position_bias'))}</td></tr>" for p in table["pairs"].values())
    note = f"<p><b>{escape(MECHANICS_NOTE)}</b></p>" if table["mechanics_only"] else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>MPO experiment</title><style>'
            "body{font:14px system-ui,sans-serif;margin:24px}td,th{border:1px solid #ccd;padding:3px 8px}"
            "table{border-collapse:collapse;margin:10px 0}</style></head><body>"
            f"<h1>MPO vs fixed rubric vs base: {escape(table['task'])}, {table['steps']} steps, {table['prompts']} test prompts</h1>"
            f"{note}<table><tr><th>policy</th><th>Elo [95% CI]</th><th>games</th></tr>{rows}</table>"
            "<table><tr><th>pair</th><th>W/T/L</th><th>judge failures</th><th>win rate</th><th>LC win rate</th>"
            f"<th>position bias</th></tr>{pairs}</table></body></html>\n")
