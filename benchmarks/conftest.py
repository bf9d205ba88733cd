"""pytest-benchmark front end: `pytest benchmarks/ --benchmark-only` times every op's provider table.

The same `cases(ctx)` the op modules give `python -m benchmarks.run` is expanded here into one test
per op x shape x pass x provider (pytest-benchmark group "op | shape | pass", so each table compares
the providers of one case). Options:

  --bench-full          the full shapes of benchmarks.run (default: its --quick shapes)
  --bench-device D      cpu | cuda (default: cuda when torch sees one)
  --bench-ops A,B       only these ops (default: all); -k works too but still lists every op

Providers that cannot run here (a peer that does not import, a GPU backend on a CPU run) are
skipped tests whose reason says why. Workload ops (judge_modes, pipeline: a model load or minutes
of training per measurement, no provider table) are skipped with a pointer to benchmarks.run.

Not collected by the default `pytest` (testpaths = tests); run it as `pytest benchmarks/`.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import pytest

from benchmarks import common
from benchmarks.run import available_ops


def pytest_addoption(parser):
    group = parser.getgroup("mpo_fast benchmarks")
    group.addoption("--bench-full", action="store_true", default=False,
                    help="full shapes (python -m benchmarks.run without --quick); default: quick shapes")
    group.addoption("--bench-device", default=None, choices=["cpu", "cuda"],
                    help="device to benchmark on (default: cuda when available, else cpu)")
    group.addoption("--bench-ops", default=None, metavar="OP[,OP...]",
                    help=f"only these ops (default: all of {', '.join(available_ops())})")


@dataclass(frozen=True)
class Param:
    op: str
    shape: str = ""
    pass_: str = ""
    provider: str = ""
    skip: str | None = None

    @property
    def id(self) -> str:
        return "-".join(x for x in (self.op, self.pass_, self.shape, self.provider) if x)


class Cursor:
    """Walks one op's cases(ctx) generator in step with the tests, so a case's inputs are built once
    and freed when the next case is reached (full shapes hold GBs); restarts if tests run out of order."""

    def __init__(self, module, ctx: common.BenchContext):
        self.module, self.ctx = module, ctx
        self.gen = None
        self.current: common.Case | None = None

    def get(self, key: tuple[str, str]) -> common.Case:
        if self.current is not None and self.current.key() == key:
            return self.current
        self.current = None
        for fresh in (self.gen is None, True):
            if fresh:
                self.gen = self.module.cases(self.ctx)
            for case in self.gen:
                if case.key() == key:
                    self.current = case
                    return case
        raise LookupError(f"{self.module.__name__}: no case {key} (cases(ctx) must yield the same cases every time)")


def _selected_ops(config) -> list[str]:
    ops = available_ops()
    chosen = config.getoption("--bench-ops")
    if not chosen:
        return ops
    wanted = [o.strip() for o in chosen.split(",") if o.strip()]
    unknown = sorted(set(wanted) - set(ops))
    if unknown:
        raise pytest.UsageError(f"--bench-ops: unknown op(s) {unknown}; choose from {ops}")
    return wanted


def _collect(config) -> tuple[common.BenchContext, list[Param], dict[str, Cursor]]:
    try:
        ctx = common.make_context(quick=not config.getoption("--bench-full"), device=config.getoption("--bench-device"))
    except ValueError as exc:
        raise pytest.UsageError(f"--bench-device: {exc}") from None
    params, cursors = [], {}
    for op in _selected_ops(config):
        try:
            module = importlib.import_module(f"benchmarks.ops.{op}")
        except Exception as exc:  # noqa: BLE001 - an op whose optional dependencies are missing: say so, go on
            params.append(Param(op, skip=f"benchmarks.ops.{op} does not import: {type(exc).__name__}: {exc}"))
            continue
        if not hasattr(module, "cases"):
            params.append(Param(op, skip=f"workload benchmark with no provider table (model loads / minutes of training "
                                          f"per measurement): run `python -m benchmarks.run --op {op}`"))
            continue
        cursors[op] = Cursor(module, ctx)
        seen = set()
        for case in module.cases(ctx):  # lists the cases; floors are lazy, so nothing is timed here
            if case.key() in seen:
                raise pytest.UsageError(f"{op}: two cases share shape and pass {case.key()}")
            seen.add(case.key())
            params += [Param(op, case.shape, case.pass_, p) for p in case.calls]
            params += [Param(op, case.shape, case.pass_, p, skip=f"{op}/{p} unavailable: {why}") for p, why in case.unavailable.items()]
    return ctx, params, cursors


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a pytest-benchmark provider measurement (benchmarks/ only)")


def pytest_generate_tests(metafunc):
    if "bench_param" not in metafunc.fixturenames:
        return
    config = metafunc.config
    if not hasattr(config, "_mpo_bench"):
        config._mpo_bench = _collect(config)
    _, params, _ = config._mpo_bench
    metafunc.parametrize("bench_param", [pytest.param(p, id=p.id) for p in params])


@pytest.fixture
def bench_ctx(request) -> common.BenchContext:
    return request.config._mpo_bench[0]


@pytest.fixture
def bench_case(request, bench_param) -> common.Case:
    if bench_param.skip:
        pytest.skip(bench_param.skip)
    return request.config._mpo_bench[2][bench_param.op].get((bench_param.shape, bench_param.pass_))


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Ratios measured in this run, per case: each provider's median over each baseline's (reference,
    peers), under extra_info["time_vs"]; benchmarks.compare recomputes them from the medians anyway."""
    by_case: dict[tuple, dict[str, float]] = {}
    for b in output_json.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "op" in info and b.get("stats"):
            by_case.setdefault((info["op"], info["shape"], info["pass"]), {})[info["provider"]] = b["stats"]["median"]
    for b in output_json.get("benchmarks", []):
        info = b.get("extra_info", {})
        medians = by_case.get((info.get("op"), info.get("shape"), info.get("pass")), {})
        mine = medians.get(info.get("provider"))
        if mine:
            info["time_vs"] = {base: round(mine / medians[base], 4) for base in info.get("baselines", [])
                               if base != info["provider"] and medians.get(base) and math.isfinite(mine / medians[base])}
