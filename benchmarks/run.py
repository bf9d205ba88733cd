"""The one entry point for every benchmark.

    python -m benchmarks.run --op group_advantages [--quick] [--device cpu|cuda] [--json]

Each op lives in benchmarks/ops/<op>.py with `run(ctx) -> Iterator[dict]`. Kernel ops build it from
their provider table, `cases(ctx) -> Iterator[common.Case]`, which `pytest benchmarks/
--benchmark-only` times too (benchmarks/test_providers.py); workload ops (judge_modes, pipeline)
have only `run`. Providers that cannot run here are named on stderr with the reason. With --json every
measurement is one JSON object per line with at least: op, provider, device, device_name, shape,
pass (fwd|fwd_bwd), median_ms, p20_ms, p80_ms, peak_mem_bytes, commit. Ratios against the reference
and peers measured in the same run are added by the op modules.
"""
from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from benchmarks import common
from benchmarks import ops as ops_pkg


def available_ops() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(ops_pkg.__path__) if not m.name.startswith("_"))


def main(argv: list[str] | None = None) -> int:
    ops = available_ops()
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--op", required=True, choices=ops + ["all"], help="which op to benchmark")
    p.add_argument("--quick", action="store_true", help="small shapes and few repeats (CI smoke run)")
    p.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when available, else cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per measurement on stdout")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5 quick / 20)")
    args = p.parse_args(argv)
    try:
        ctx = common.make_context(args.quick, args.device, args.repeats)
    except ValueError as exc:
        p.error(f"--device: {exc}")
    device = ctx.device
    stamp = {"device": device, "device_name": common.device_name(device), "commit": common.git_commit()}
    for op in ops if args.op == "all" else [args.op]:
        module = importlib.import_module(f"benchmarks.ops.{op}")
        for rec in module.run(ctx):
            rec = {"op": op, **rec, **stamp}
            if args.json:
                print(json.dumps(rec), flush=True)
            else:
                extras = {k: v for k, v in rec.items() if k not in ("op", "device", "device_name", "commit", "provider", "shape", "pass", "median_ms", "p20_ms", "p80_ms")}
                med = rec.get("median_ms")
                med_s = f"{med:10.4f} ms" if isinstance(med, (int, float)) else " " * 13
                print(f"{op:18s} {rec.get('provider', ''):22s} {rec.get('pass', ''):8s} {rec.get('shape', ''):28s} {med_s}  {extras}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
