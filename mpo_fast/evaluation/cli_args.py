"""The `mpo-fast eval` and `mpo-fast report` subcommands (kept here so cli.py stays short)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_eval_parser(sub) -> None:
    e = sub.add_parser("eval", help="compare a run's checkpoint with base or another run (win rate, Elo, CIs)")
    e.add_argument("run_dir", help="the run to evaluate (its newest checkpoint unless --checkpoint)")
    e.add_argument("--checkpoint", default=None, help="step-N or N (default: the newest)")
    e.add_argument("--against", required=True, help="base (the run's starting model) or RUN_DIR2[:step-N]")
    _add_eval_options(e)
    e.add_argument("-o", "--output", default=None, help="result JSON (default: RUN_DIR/eval/<a>_vs_<b>.json)")


def add_experiment_parser(sub) -> None:
    x = sub.add_parser("experiment", help="MPO vs the same run with a fixed rubric vs base, then eval of all three")
    x.add_argument("--config", required=True, help="YAML config of the MPO arm (the fixed arm turns meta off)")
    x.add_argument("--steps", type=int, default=None, help="training steps of each arm (default: the config's)")
    x.add_argument("-o", "--output", default=None, help="experiment folder (default: <config output_dir>-experiment)")
    _add_eval_options(x)
    x.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for train")


def _add_eval_options(e) -> None:
    e.add_argument("--split", default="test", help="data split to evaluate on (default: test; all: every row of a file without splits)")
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


def add_report_parser(sub) -> None:
    r = sub.add_parser("report", help="write one self-contained HTML report of a run")
    r.add_argument("run_dir")
    r.add_argument("-o", "--output", default=None, help="default: RUN_DIR/report.html")


def _default_output(run_dir: str, against: str, checkpoint: str | None) -> Path:
    b = "base" if against == "base" else Path(against.split(":")[0]).name + ("-" + against.split(":")[1] if ":" in against else "")
    a = "latest" if checkpoint is None else checkpoint
    return Path(run_dir) / "eval" / f"{a}_vs_{b}.json"


def _eval_options(args):
    from .judge_options import EvalJudgeOptions
    from .runner import EvalSettings

    settings = EvalSettings(split=args.split, limit=args.limit, seed=args.seed, max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, resamples=args.resamples, pairwise=args.pairwise,
                            batch_size=args.batch_size)
    options = EvalJudgeOptions(backend=args.judge_backend, model=args.judge_model, base_url=args.judge_base_url,
                               api_key_env=args.judge_api_key_env, scoring=args.judge_scoring,
                               temperature=args.judge_temperature, max_new_tokens=args.judge_max_new_tokens)
    return settings, options


def run_experiment_command(args) -> int:
    import time

    from ..cli import _load_config, run_config
    from .experiment import MECHANICS_NOTE, run_experiment

    config = _load_config(args.config, args.overrides)
    settings, options = _eval_options(args)
    out = Path(args.output) if args.output else Path(f"{config.output_dir.rstrip('/')}-experiment")
    table = run_experiment(config, out, steps=args.steps, settings=settings, judge_options=options,
                           train=lambda c: run_config(c, started=time.perf_counter()))
    print((out / "experiment.md").read_text(encoding="utf-8"))
    if table["mechanics_only"]:
        print(MECHANICS_NOTE)
    print(f"experiment: {out / 'experiment.md'} and {out / 'experiment.html'}")
    return 0


def run_eval_command(args) -> int:
    from .runner import format_result, run_evaluation

    settings, options = _eval_options(args)
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
