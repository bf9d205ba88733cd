"""Regression check between two benchmark runs, by ratios measured within each run.

    python -m benchmarks.compare OLD NEW [--threshold 0.25] [--all] [--gate-absolute]
    python -m benchmarks.compare            # the two newest pytest-benchmark saves under .benchmarks/

OLD and NEW are pytest-benchmark JSON (--benchmark-autosave / --benchmark-json) or the JSON lines of
`python -m benchmarks.run --json` (the two can be mixed). For every case (op, shape, pass) it takes,
within each run, every provider of ours (fast paths and the reference) over every baseline of that
case (the reference, and the peers: TRL, Liger, plain torch, Python `re`):

    ratio = median(provider) / median(baseline)          (lower is better)
    change = ratio(NEW) / ratio(OLD)

and flags a regression when change > 1 + threshold. Both medians of a ratio come from the same run
on the same machine, so the load of a shared machine cancels out to first order; absolute times
from two runs do not.
Absolute medians are compared only when both runs name the same device (device_name), reported for
diagnosis (was it ours that slowed, or the baseline that sped up?) and gated only with
--gate-absolute. Peers are never judged: TRL getting slower is not our regression.

Exit status: 0 no regression, 1 regression, 2 nothing comparable (no case in both runs).
Cases or providers missing from NEW are listed; with --fail-missing they fail the check too.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

# 25%: above the ratio noise measured on the shared 2-core dev machine at load 6.7 (two unchanged
# `benchmarks.run --op group_advantages --quick` runs: ratios moved <= 8%; run.py vs pytest-benchmark
# of the same commit: <= 22%, so compare runs of the same front end).
DEFAULT_THRESHOLD = 0.25
# Providers of old JSON lines that carry no "role": the reference and peers by the names the op modules use.
PEER_PREFIXES = ("trl_", "torch_", "liger_", "python_re", "host_")


@dataclass(frozen=True)
class Result:
    op: str
    shape: str
    pass_: str
    provider: str
    median_s: float
    role: str
    device_name: str | None

    @property
    def case(self) -> tuple[str, str, str]:
        return (self.op, self.shape, self.pass_)


def _infer_role(provider: str) -> str:
    if provider == "reference":
        return "reference"
    return "peer" if provider.startswith(PEER_PREFIXES) else "ours"


def _from_pytest_benchmark(data: dict) -> list[Result]:
    cpu = (data.get("machine_info") or {}).get("cpu") or {}
    machine = cpu.get("brand_raw") or (data.get("machine_info") or {}).get("processor")
    out = []
    for b in data.get("benchmarks", []):
        info, stats = b.get("extra_info") or {}, b.get("stats") or {}
        if stats.get("median") is None:
            continue
        # Benchmarks not written by benchmarks/test_providers.py: the group is the case, the name the provider.
        provider = info.get("provider", b.get("name", "?"))
        out.append(Result(
            op=info.get("op", b.get("group") or "?"), shape=info.get("shape", ""), pass_=info.get("pass", ""),
            provider=provider, median_s=float(stats["median"]), role=info.get("role") or _infer_role(provider),
            device_name=info.get("device_name") or machine,
        ))
    return out


def _from_records(records: list[dict]) -> list[Result]:
    out = []
    for r in records:
        if not isinstance(r, dict) or r.get("median_ms") is None or "provider" not in r:
            continue
        out.append(Result(
            op=r.get("op", "?"), shape=str(r.get("shape", "")), pass_=str(r.get("pass", "")), provider=r["provider"],
            median_s=float(r["median_ms"]) / 1e3, role=r.get("role") or _infer_role(r["provider"]),
            device_name=r.get("device_name"),
        ))
    return out


def load(path: str | Path) -> list[Result]:
    """Results from a pytest-benchmark JSON file or benchmarks.run JSON lines."""
    text = Path(path).read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "benchmarks" in data:
        return _from_pytest_benchmark(data)
    if isinstance(data, dict):
        return _from_records([data])
    if isinstance(data, list):
        return _from_records(data)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: neither pytest-benchmark JSON nor benchmarks.run JSON lines ({exc})") from None
    return _from_records(records)


def _table(results: list[Result]) -> dict[tuple, dict[str, Result]]:
    """case -> provider -> result; a provider measured several times (concatenated runs) keeps the median."""
    groups: dict[tuple, dict[str, list[Result]]] = {}
    for r in results:
        groups.setdefault(r.case, {}).setdefault(r.provider, []).append(r)
    table = {}
    for case, providers in groups.items():
        table[case] = {}
        for name, rs in providers.items():
            med = statistics.median(r.median_s for r in rs)
            table[case][name] = Result(*case, name, med, rs[-1].role, rs[-1].device_name)
    return table


def ratios(case_results: dict[str, Result]) -> dict[tuple[str, str], float]:
    """(provider, baseline) -> median(provider) / median(baseline), within one run."""
    baselines = [n for n, r in case_results.items() if r.role in ("reference", "peer")]
    out = {}
    for name, r in case_results.items():
        if r.role == "peer":
            continue
        for base in baselines:
            b = case_results[base].median_s
            if base != name and b > 0 and math.isfinite(r.median_s / b):
                out[(name, base)] = r.median_s / b
    return out


@dataclass(frozen=True)
class Change:
    case: tuple[str, str, str]
    provider: str
    versus: str | None  # baseline name; None for an absolute (same-device) comparison
    old: float
    new: float
    threshold: float

    @property
    def change(self) -> float:
        return self.new / self.old

    @property
    def regressed(self) -> bool:
        return self.change > 1 + self.threshold

    @property
    def improved(self) -> bool:
        return self.change < 1 / (1 + self.threshold)

    def line(self) -> str:
        op, shape, pass_ = self.case
        what = f"vs {self.versus}" if self.versus else "absolute"
        unit = "x" if self.versus else " s"
        mark = "REGRESSED" if self.regressed else "improved" if self.improved else "same"
        return (f"{mark:9s} {op} [{shape} | {pass_}] {self.provider} {what}: "
                f"{self.old:.4g}{unit} -> {self.new:.4g}{unit} ({(self.change - 1) * 100:+.1f}%)")


@dataclass
class Report:
    relative: list[Change]
    absolute: list[Change]
    missing: list[str]
    added: list[str]
    absolute_skipped: str | None

    def regressions(self, gate_absolute: bool = False) -> list[Change]:
        return [c for c in self.relative + (self.absolute if gate_absolute else []) if c.regressed]


def compare(old: list[Result], new: list[Result], threshold: float = DEFAULT_THRESHOLD) -> Report:
    old_t, new_t = _table(old), _table(new)
    rel, absolute, missing, added = [], [], [], []
    old_dev = {r.device_name for r in old}
    new_dev = {r.device_name for r in new}
    same_device = len(old_dev) == 1 and old_dev == new_dev and None not in old_dev
    for case in sorted(old_t):
        if case not in new_t:
            missing.append(" | ".join(case))
            continue
        o, n = old_t[case], new_t[case]
        missing += [f"{' | '.join(case)} | {p}" for p in o if p not in n]
        added += [f"{' | '.join(case)} | {p}" for p in n if p not in o]
        ro, rn = ratios(o), ratios(n)
        rel += [Change(case, p, b, ro[(p, b)], rn[(p, b)], threshold) for (p, b) in ro if (p, b) in rn]
        if same_device:
            absolute += [Change(case, p, None, o[p].median_s, n[p].median_s, threshold)
                         for p in o if p in n and o[p].median_s > 0]
    added += [" | ".join(case) for case in sorted(new_t) if case not in old_t]
    skipped = None if same_device else f"devices differ or unknown (old {sorted(map(str, old_dev))}, new {sorted(map(str, new_dev))})"
    return Report(rel, absolute, missing, added, skipped)


def _newest_saves(root: Path = Path(".benchmarks")) -> list[Path]:
    saves = sorted(root.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if len(saves) < 2:
        raise SystemExit(f"benchmarks.compare: need OLD and NEW, or two saves under {root}/ "
                         f"(run `pytest benchmarks/ --benchmark-only --benchmark-autosave` twice)")
    return saves[-2:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", nargs="?", help="baseline run: pytest-benchmark JSON or benchmarks.run JSON lines")
    p.add_argument("new", nargs="?", help="run to check, same formats")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help=f"relative slowdown of a ratio that counts as a regression (default {DEFAULT_THRESHOLD})")
    p.add_argument("--all", action="store_true", help="print every comparison, not only regressions and improvements")
    p.add_argument("--gate-absolute", action="store_true",
                   help="also fail on absolute slowdowns (same device name only; noisy on shared machines)")
    p.add_argument("--fail-missing", action="store_true", help="fail when a case or provider of OLD is missing from NEW")
    args = p.parse_args(argv)
    if (args.old is None) != (args.new is None):
        p.error("give both OLD and NEW, or neither (the two newest saves under .benchmarks/)")
    old_path, new_path = (args.old, args.new) if args.old else _newest_saves()
    report = compare(load(old_path), load(new_path), args.threshold)
    print(f"benchmarks.compare: {old_path} -> {new_path} (threshold {args.threshold:.0%}; ratio = time / baseline's time "
          f"in the same run, lower is better)")
    if not report.relative:
        print("nothing comparable: no case with a provider and a baseline in both runs")
        return 2
    shown = [c for c in report.relative if args.all or c.regressed or c.improved]
    for c in sorted(shown, key=lambda c: -c.change):
        print("  " + c.line())
    if report.absolute_skipped:
        print(f"absolute times not compared: {report.absolute_skipped}")
    else:
        for c in sorted(report.absolute, key=lambda c: -c.change):
            if args.all or c.regressed or c.improved:
                print("  " + c.line())
    for m in report.missing:
        print(f"  missing in NEW: {m}")
    for a in report.added:
        print(f"  new in NEW: {a}")
    bad = report.regressions(args.gate_absolute)
    print(f"{len(report.relative)} ratios compared, {len(bad)} regressed"
          + (f": {', '.join(sorted({f'{c.case[0]}/{c.provider}' for c in bad}))}" if bad else ""))
    if bad or (args.fail_missing and report.missing):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
