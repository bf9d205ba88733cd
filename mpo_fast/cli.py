"""The `mpo-fast` command line.

    mpo-fast train --config FILE.yaml [key=value ...]   train (overrides nest with dots)
    mpo-fast train --config FILE.yaml resume=true       continue from the newest checkpoint
    mpo-fast demo [key=value ...]                       the embedded-model demo (< 15 min on 2 cores)
    mpo-fast rubric show RUN_DIR [--version V]          a rubric version of a run (default: latest)
    mpo-fast rubric show FILE.yaml                      a rubric file, rendered as the judge sees it
    mpo-fast rubric diff RUN_DIR [A B]                  what changed (default: first -> latest)
    mpo-fast eval RUN_DIR --against base|RUN_DIR2[:step-N] [-o FILE.json]   does the run beat base? (CIs)
    mpo-fast report RUN_DIR [-o RUN_DIR/report.html]    one self-contained HTML report of a run
    mpo-fast experiment --config FILE.yaml [--steps N]  MPO vs fixed rubric vs base, same budget, Elo table

Exit status: 0 done, 2 bad input (config, data, rubric, unreachable judge: nothing trained),
3 stopped by the judge failure rate (last checkpoint intact), 4 a pipeline stage failed
(pipeline.mode=overlapped; every stage stopped, last checkpoint intact), 5 another rank of a
torchrun job failed or a collective timed out (train.dist_timeout_s; last checkpoint intact),
130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import resource
import sys
import time
from pathlib import Path
from typing import Sequence

EXIT_BAD_INPUT = 2
EXIT_JUDGE_FAILURES = 3
EXIT_STAGE_FAILED = 4
EXIT_PEER_FAILED = 5
EXIT_INTERRUPTED = 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpo-fast", description="Meta Policy Optimization for LLMs")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train with a YAML config")
    train.add_argument("--config", required=True, help="YAML config (see mpo_fast/configs/)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.learning_rate=3e-6")
    demo = sub.add_parser("demo", help="train the embedded SmolLM2-135M on essays, evolving the rubric")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. train.max_steps=4")
    rubric = sub.add_parser("rubric", help="inspect rubric versions")
    rsub = rubric.add_subparsers(dest="rubric_command", required=True)
    show = rsub.add_parser("show", help="print a rubric version or file")
    show.add_argument("source", help="a run directory (or its rubrics/ folder) or a rubric file")
    show.add_argument("--version", default=None, help="version number, vN or hash prefix (default: latest)")
    diff = rsub.add_parser("diff", help="diff two rubric versions of a run")
    diff.add_argument("run_dir")
    diff.add_argument("a", nargs="?", default=None, help="default: the first version")
    diff.add_argument("b", nargs="?", default=None, help="default: the latest version")
    _add_eval_commands(sub)
    return p


def _add_eval_commands(sub) -> None:
    from .evaluation.cli_args import add_eval_parser, add_experiment_parser, add_report_parser

    add_eval_parser(sub)
    add_report_parser(sub)
    add_experiment_parser(sub)


class BadInput(Exception):
    """Raised for anything wrong before training starts; main prints it without a traceback."""


_SETUP_ERRORS = (ValueError, TypeError, FileNotFoundError, NotADirectoryError, ModuleNotFoundError, ImportError,
                 LookupError, RuntimeError)


def _error(message: str) -> None:
    print(f"mpo-fast: error: {message}", file=sys.stderr)


def _store_of(source: str):
    from .rubrics import RubricStore

    path = Path(source)
    folder = path / "rubrics" if (path / "rubrics" / "index.json").is_file() else path
    if not (folder / "index.json").is_file():
        raise FileNotFoundError(f"{source} holds no rubric store (rubrics/index.json); pass a run directory")
    return RubricStore(folder)


def _version_ref(ref: str | None):
    if ref is None:
        return None
    return int(ref) if ref.isdigit() else ref


def _rubric_command(args) -> int:
    if args.rubric_command == "show":
        path = Path(args.source)
        if path.is_file():
            from .rubrics import load_rubric

            rubric = load_rubric(path)
            print(f"{path} ({rubric.content_hash}, task {rubric.task})")
        else:
            store = _store_of(args.source)
            version = store.get(_version_ref(args.version)) if args.version else store.latest()
            if version is None:
                raise FileNotFoundError(f"{args.source} holds no rubric versions yet")
            rubric = version.rubric
            parent = f", parent {version.parent}" if version.parent else ""
            print(f"rubric v{version.version} ({version.hash}{parent}, step {version.step}, task {rubric.task})")
        if rubric.context:
            print(f"context: {rubric.context}")
        print(rubric.render())
        return 0
    store = _store_of(args.run_dir)
    versions = store.versions()
    a = _version_ref(args.a) if args.a is not None else versions[0].version
    b = _version_ref(args.b) if args.b is not None else versions[-1].version
    print(store.diff(a, b))
    return 0


def run_config(config, *, started: float):
    """Build (every check before training), train, summarise. Shared by `train` and `demo`.
    Under torchrun (WORLD_SIZE > 1) every rank runs this; rank 0 alone summarises."""
    from .trainer.distributed import init_distributed, shutdown

    ctx = init_distributed(config.train.dist_timeout_s, device=config.model.device)
    try:
        return _run_config(config, started=started, main=ctx is None or ctx.is_main)
    finally:
        shutdown()


def _run_config(config, *, started: float, main: bool):
    from .trainer.build import make_trainer
    from .trainer.report import render_summary, summarise_run, write_summary

    try:
        trainer = make_trainer(config)
    except _peer_errors():
        raise  # another rank failed while this one was setting up: not this rank's input
    except _SETUP_ERRORS as exc:
        raise BadInput(str(exc)) from exc
    from .trainer.pipeline import PipelineConfigError

    try:
        result = trainer.train()
    except PipelineConfigError as exc:  # refused at pipeline start-up, before any step
        raise BadInput(str(exc)) from exc
    finally:
        trainer.close()
    if not main:
        return None  # rank 0 writes the summary
    from .process_memory import peak_rss_mb

    usage = resource.getrusage(resource.RUSAGE_SELF)
    extra = {"judge scoring": f"{config.judge.scoring}/{config.judge.call_mode}",
             # CPU seconds of this process: on a shared machine, the work done independent of the wait
             "cpu time": f"{usage.ru_utime + usage.ru_stime:.0f} s", "threads": torch_threads(),
             "peak memory": f"{peak_rss_mb():.0f} MB"}
    if result.pipeline is not None:
        p = result.pipeline
        extra["pipeline"] = (f"{p['mode']}, max_staleness {p['max_staleness']}: {p['samples_per_s']:.3g} samples/s, "
                             f"{p['judge_calls_per_s']:.3g} judge calls/s, staleness <= {p['max_observed_staleness']}")
    summary = summarise_run(config.output_dir, wall_seconds=time.perf_counter() - started, **extra)
    write_summary(summary)
    render_summary(summary)
    return summary


def _write_demo_report(output_dir: str) -> None:
    from .report import write_report

    try:
        path = write_report(output_dir)
    except (OSError, ValueError) as exc:  # the run itself succeeded; say why there is no report
        _error(f"the run finished but its report could not be written ({exc}); retry with `mpo-fast report {output_dir}`")
        return
    print(f"report: {path}")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _load_config(path: str, overrides: Sequence[str]):
    from .trainer import MPOConfig

    try:
        return MPOConfig.from_yaml(path, list(overrides))
    except ValueError as exc:  # ConfigError included
        raise BadInput(str(exc)) from exc


def _peer_errors() -> tuple[type[BaseException], ...]:
    """A collective that failed (a rank died: gloo/nccl report it) or ranks that disagree."""
    import torch.distributed as dist

    from .trainer.distributed import DistributedError

    return (DistributedError, dist.DistError)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .process_memory import limit_heap_fragmentation

    limit_heap_fragmentation()  # before any model is loaded: halves the demo's peak RSS (see the module)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .rubrics import RubricNotFoundError, RubricStoreError
    from .trainer import CheckpointError, JudgeFailureRateError, OutputDirInUseError
    from .trainer.pipeline import JudgeFailureError, PipelineError

    try:
        if args.command == "rubric":
            return _rubric_command(args)
        if args.command in ("eval", "report"):
            from .evaluation.cli_args import run_eval_command, run_report_command

            try:
                return run_eval_command(args) if args.command == "eval" else run_report_command(args)
            except _SETUP_ERRORS as exc:
                raise BadInput(str(exc)) from exc
        if args.command == "experiment":
            from .evaluation.cli_args import run_experiment_command

            return run_experiment_command(args)
        started = time.perf_counter()
        if args.command == "demo":
            from .demo import demo_config_path

            config = _load_config(demo_config_path(), ["overwrite=true", *args.overrides])
        else:
            config = _load_config(args.config, args.overrides)
        run_config(config, started=started)
        if args.command == "demo":
            _write_demo_report(config.output_dir)
        return 0
    except BadInput as exc:
        _error(str(exc))
        return EXIT_BAD_INPUT
    except (OutputDirInUseError, CheckpointError, RubricStoreError, RubricNotFoundError, FileNotFoundError) as exc:
        # raised by train() while opening the run directory, before the first step
        _error(str(exc))
        return EXIT_BAD_INPUT
    except JudgeFailureRateError as exc:
        _error(str(exc))
        return EXIT_JUDGE_FAILURES
    except PipelineError as exc:
        if isinstance(exc.__cause__, _peer_errors()):  # torchrun: the trainer thread's collective failed
            _error(f"distributed run stopped: {exc.__cause__}. The last checkpoint is intact: fix the failing rank (its "
                   "own error is in its log) and continue with resume=true on the same number of processes")
            return EXIT_PEER_FAILED
        _error(f"pipeline stopped: {exc}. Every stage was stopped and the last checkpoint is intact: fix the cause "
               "and continue with resume=true")
        return EXIT_JUDGE_FAILURES if isinstance(exc, JudgeFailureError) else EXIT_STAGE_FAILED
    except _peer_errors() as exc:
        _error(f"distributed run stopped: {exc}. The last checkpoint is intact: fix the failing rank (its own "
               "error is in its log) and continue with resume=true on the same number of processes")
        return EXIT_PEER_FAILED
    except KeyboardInterrupt:
        _error("interrupted; resume with resume=true (the last checkpoint is intact)")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
