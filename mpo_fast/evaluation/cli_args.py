"""The `mpo-fast eval` and `mpo-fast report` subcommands (kept here so cli.py stays short)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="compare a run's checkpoint with base or another run (win rate, Elo, CIs)")
    e.add_argument("run_dir", help="the run to evaluate (its newest checkpoint unless --checkpoint)")
    e.add_argument("--checkpoint", default=None, help="step-N or N (default: the newest)")
    e.add_argument("--against", required=True, help="base (the run's starting model) or RUN_DIR2[:step-N]")
    e.add_argument("--split", default="test", help="data split to evaluate on (default: test)")
    e.add_argument("--limit", type=int, default=None, help="the first N prompts only")
    e.add_argument("--seed", type=int, default=None, help="sampling seed, the same for both policies (default: the run's)")
    e.add_argument("--max-new-tokens", type=int, default=None, help="default: the run's rollout.max_new_tokens")
    e.add_argument("--temperature", type=float, default=None, help="default: the run's rollout.temperature")
    e.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    e.add_argument("--pairwise", action=argparse.BooleanOptionalAction, default=None,
                   help="pairwise judging (default: on for essay and summarization)")
    e.add_argument("--batch-size", type=int, default=8, help="prompts per generate call and judge batch")
    for name, kind, text in (
        ("backend", str, "local | openai (default: openai when --judge.base_url is given)"),
        ("model", str, "evaluation judge model (a local path / 'embedded', or the served model name)"),
        ("base_url", str, "OpenAI-compatible endpoint of the evaluation judge, e.g. http://localhost:8000/v1"),
        ("api_key_env", str, "environment variable holding the judge's API key"),
        ("scoring", str, "parse | constrained | expected (default: the training judge's)"),
        ("temperature", float, "judge sampling temperature"),
        ("max_new_tokens", int, "judge answer budget"),
    ):
        e.add_argument(f"--judge.{name}", dest=f"judge_{name}", type=kind, default=None, help=text)
    e.add_argument("-o", "--output", default=None, help="result JSON (default: RUN_DIR/eval/<a>_vs_<b>.json)")


def add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="write one self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("-o", "--output", default=None, help="default: RUN_DIR/report.html")


def _default_output(run_dir: str, against: str, checkpoint: str | None) -> Path:
    b = "base" if against == "base" else Path(against.split(":")[0]).name + ("-" + against.split(":")[1] if ":" in against else "")
    a = "latest" if checkpoint is None else checkpoint
    return Path(run_dir) / "eval" / f"{a}_vs_{b}.json"


def run_eval_command(args) -> int:
    from .judge_options import EvalJudgeOptions
    from .runner import EvalSettings, format_result, run_evaluation

    settings = EvalSettings(split=args.split, limit=args.limit, seed=args.seed, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, resamples=args.resamples, pairwise=args.pairwise,
                            batch_size=args.batch_size)
    options = EvalJudgeOptions(backend=args.judge_backend, model=args.judge_model, base_url=args.judge_base_url,
                               api_key_env=args.judge_api_key_env, scoring=args.judge_scoring,
                               temperature=args.judge_temperature, max_new_tokens=args.judge_max_new_tokens)
    out = Path(args.output) if args.output else _default_output(args.run_dir, args.against, args.checkpoint)
    result = run_evaluation(args.run_dir, args.against, out, checkpoint=args.checkpoint, settings=settings,
                            judge_options=options)
    print(format_result(result))
    print(f"result: {out}")
    return 0


def run_report_command(args) -> int:
    from ..report.html import write_report

    path = write_report(args.run_dir, args.output)
    print(f"report: {path}")
    return 0
