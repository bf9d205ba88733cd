"""CI check of a quick pytest-benchmark pass: every provider produced a result, every ratio is finite.

    python -m benchmarks.smoke RESULTS.json [--ops A,B]   (from pytest benchmarks/ --benchmark-json=...)

No timing gate (CI machines are shared and noisy): it checks completeness and sanity only.
- Every provider of every case the op modules list for this device and mode (the same cases(ctx)
  the pytest front end expanded) has a benchmark in the file, and nothing else is missing.
- Every median is finite and > 0; ratio_to_floor and every time_vs ratio are finite where present.
- Every case has its baselines measured (a speedup with nothing to divide by is no result).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys

from benchmarks import common
from benchmarks.run import available_ops


def expected_results(ctx: common.BenchContext, ops: list[str]) -> set[tuple[str, str, str, str]]:
    """(op, shape, pass, provider) of every provider the op tables list for ctx. An op module that
    does not import counts as one missing result (op, "", "", "<import error>"): the benchmarks of a
    repository must at least import (workload ops import optional packages inside run())."""
    want = set()
    for op in ops:
        try:
            module = importlib.import_module(f"benchmarks.ops.{op}")
        except Exception as exc:  # noqa: BLE001
            want.add((op, "", "", f"<does not import: {type(exc).__name__}: {exc}>"))
            continue
        if hasattr(module, "cases"):
            for case in module.cases(ctx):
                want |= {(op, case.shape, case.pass_, p) for p in case.calls}
    return want


def check(data: dict, ops: list[str] | None = None) -> list[str]:
    benches = [b for b in data.get("benchmarks", []) if "op" in (b.get("extra_info") or {})]
    if not benches:
        return ["no mpo_fast benchmark results in the file"]
    infos = [b["extra_info"] for b in benches]
    devices = {i["device"] for i in infos}
    quick = {i.get("quick", True) for i in infos}
    if len(devices) != 1 or len(quick) != 1:
        return [f"mixed runs in one file: devices {devices}, quick {quick}"]
    ctx = common.make_context(quick=quick.pop(), device=devices.pop())
    got = {(i["op"], i["shape"], i["pass"], i["provider"]) for i in infos}
    errors = [f"no result: {' | '.join(k)}" for k in sorted(expected_results(ctx, ops or available_ops()) - got)]
    by_case: dict[tuple, set[str]] = {}
    for b, i in zip(benches, infos):
        name = f"{i['op']} | {i['shape']} | {i['pass']} | {i['provider']}"
        by_case.setdefault((i["op"], i["shape"], i["pass"]), set()).add(i["provider"])
        median = (b.get("stats") or {}).get("median")
        if not (isinstance(median, (int, float)) and math.isfinite(median) and median > 0):
            errors.append(f"{name}: median {median!r}")
        ratios = {"ratio_to_floor": i.get("ratio_to_floor"), **{f"time_vs {k}": v for k, v in (i.get("time_vs") or {}).items()}}
        errors += [f"{name}: {k} = {v!r}" for k, v in ratios.items()
                   if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    for b, i in zip(benches, infos):
        missing = set(i.get("baselines", [])) - by_case[(i["op"], i["shape"], i["pass"])]
        if missing:
            errors.append(f"{i['op']} | {i['shape']} | {i['pass']}: baselines not measured: {sorted(missing)}")
    return sorted(set(errors))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.smoke", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="pytest-benchmark JSON of a pytest benchmarks/ run")
    p.add_argument("--ops", default=None, help="the ops that run covered (as --bench-ops); default: all")
    args = p.parse_args(argv)
    with open(args.results) as f:
        data = json.load(f)
    errors = check(data, args.ops.split(",") if args.ops else None)
    for e in errors:
        print(f"bench smoke: {e}", file=sys.stderr)
    print(f"bench smoke: {len(data.get('benchmarks', []))} results, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
