"""benchmarks.compare: ratio-based regression checks across two runs, and that it catches a provider
slowed on purpose (MPO_FAST_BENCH_DELAY_MS) in both front ends' output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import common, compare

ROOT = Path(__file__).resolve().parents[2]


def _rec(provider, ms, role, device="cpu-A", shape="n=8", op="toy"):
    return {"op": op, "provider": provider, "shape": shape, "pass": "fwd", "median_ms": ms, "role": role,
            "device_name": device}


def _write_lines(path: Path, recs: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(path)


def _run(scale_ref=1.0, scale_cpu=1.0, scale_peer=1.0, device="cpu-A"):
    return [_rec("reference", 10.0 * scale_ref, "reference", device), _rec("cpu", 1.0 * scale_cpu, "ours", device),
            _rec("trl_x", 5.0 * scale_peer, "peer", device)]


def test_ratios_only_ours_over_baselines():
    table = compare._table(compare._from_records(_run()))
    r = compare.ratios(table[("toy", "n=8", "fwd")])
    assert r == {("reference", "trl_x"): 2.0, ("cpu", "reference"): 0.1, ("cpu", "trl_x"): 0.2}


def test_uniform_slowdown_is_no_regression_but_a_slowed_provider_is(tmp_path):
    old = compare._from_records(_run())
    # the whole machine 3x slower (a loaded CI box, another device): every ratio unchanged
    assert compare.compare(old, compare._from_records(_run(3, 3, 3, device="cpu-B"))).regressions() == []
    slowed = compare.compare(old, compare._from_records(_run(scale_cpu=1.5)))
    assert {(c.provider, c.versus) for c in slowed.regressions()} == {("cpu", "reference"), ("cpu", "trl_x")}
    within = compare.compare(old, compare._from_records(_run(scale_cpu=1.2)))  # 20% < 25% threshold
    assert within.regressions() == []


def test_a_slower_peer_is_not_our_regression_but_a_faster_one_is():
    old = compare._from_records(_run())
    assert compare.compare(old, compare._from_records(_run(scale_peer=3))).regressions() == []
    faster_peer = compare.compare(old, compare._from_records(_run(scale_peer=0.5)))
    assert {(c.provider, c.versus) for c in faster_peer.regressions()} == {("reference", "trl_x"), ("cpu", "trl_x")}


def test_absolute_times_only_on_the_same_device():
    old = compare._from_records(_run())
    other = compare.compare(old, compare._from_records(_run(3, 3, 3, device="cpu-B")))
    assert other.absolute == [] and "differ" in other.absolute_skipped
    same = compare.compare(old, compare._from_records(_run(3, 3, 3)))
    assert len(same.absolute) == 3 and all(c.regressed for c in same.absolute)
    assert same.regressions() == [] and len(same.regressions(gate_absolute=True)) == 3


def test_main_exit_status_and_both_formats(tmp_path, capsys):
    old = _write_lines(tmp_path / "old.jsonl", _run())
    new_ok = _write_lines(tmp_path / "ok.jsonl", _run(2, 2, 2))
    # pytest-benchmark's JSON (stats in seconds, our fields in extra_info), with the cpu provider 2x slower
    bench = {"machine_info": {"cpu": {"brand_raw": "cpu-A"}}, "benchmarks": [
        {"group": "toy", "name": f"test_provider[{r['provider']}]", "stats": {"median": r["median_ms"] / 1e3},
         "extra_info": {k: v for k, v in r.items() if k != "median_ms"}}
        for r in _run(scale_cpu=2.0)]}
    new_bad = tmp_path / "bad.json"
    new_bad.write_text(json.dumps(bench))
    assert compare.main([old, new_ok]) == 0
    assert compare.main([old, str(new_bad)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED toy [n=8 | fwd] cpu vs reference" in out and "regressed: toy/cpu" in out
    nothing = _write_lines(tmp_path / "other.jsonl", [_rec("cpu", 1.0, "ours", op="other")])
    assert compare.main([old, nothing]) == 2


def test_missing_provider_listed_and_optionally_fatal(tmp_path, capsys):
    old = _write_lines(tmp_path / "old.jsonl", _run())
    new = _write_lines(tmp_path / "new.jsonl", _run()[:2] + [_rec("cpu2", 1.0, "ours")])
    assert compare.main([old, new]) == 0
    assert "missing in NEW: toy | n=8 | fwd | trl_x" in capsys.readouterr().out
    assert compare.main([old, new, "--fail-missing"]) == 1


def test_old_records_without_role_infer_it():
    recs = [{k: v for k, v in r.items() if k != "role"} for r in _run()]
    roles = {r.provider: r.role for r in compare._from_records(recs)}
    assert roles == {"reference": "reference", "cpu": "ours", "trl_x": "peer"}


def test_delay_hook_parses_and_rejects_garbage(monkeypatch):
    monkeypatch.setenv(common.DELAY_ENV, "gae:cpu=3, policy_loss:reference=0.5")
    assert common._delays() == {("gae", "cpu"): 3.0, ("policy_loss", "reference"): 0.5}
    f = lambda: 1  # noqa: E731
    assert common.provider_call("gae", "cpu", f).__wrapped__ is f and common.provider_call("gae", "x", f) is f
    monkeypatch.setenv(common.DELAY_ENV, "gae-cpu-3")
    with pytest.raises(ValueError, match="op:provider=ms"):
        common._delays()


def _run_py(monkeypatch, capsys, delay: str | None) -> list[dict]:
    from benchmarks import run

    if delay:
        monkeypatch.setenv(common.DELAY_ENV, delay)
    else:
        monkeypatch.delenv(common.DELAY_ENV, raising=False)
    assert run.main(["--op", "group_advantages", "--quick", "--json", "--device", "cpu"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_compare_flags_a_deliberately_slowed_provider_from_benchmarks_run(tmp_path, monkeypatch, capsys):
    base = _run_py(monkeypatch, capsys, None)
    # group_advantages' cpu kernel takes ~0.05-0.15 ms at the quick shapes: 3 ms more is 20x or more
    slow = _run_py(monkeypatch, capsys, "group_advantages:cpu=3")
    assert {r["provider"] for r in base} >= {"reference", "cpu", "trl_inline_formula"}
    assert all(r["median_ms"] >= 3.0 for r in slow if r["provider"] == "cpu")
    report = compare.compare(compare._from_records(base), compare._from_records(slow))
    flagged = {(c.case[1], c.provider, c.versus) for c in report.regressions()}
    shapes = {r["shape"] for r in base}
    assert {(s, "cpu", "reference") for s in shapes} <= flagged
    assert all(p != "trl_inline_formula" for _, p, _ in flagged)  # peers are never judged


def _pytest_benchmark(tmp_path: Path, name: str, delay: str | None) -> Path:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(common.DELAY_ENV, None)
    if delay:
        env[common.DELAY_ENV] = delay
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "--bench-ops", "group_advantages",
         "--bench-device", "cpu", "--benchmark-max-time", "0.05", "--benchmark-min-rounds", "3", f"--benchmark-json={out}", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_pytest_benchmark_front_end_and_compare_flag_a_slowed_provider(tmp_path):
    base = _pytest_benchmark(tmp_path, "base", None)
    data = json.loads(base.read_text())
    infos = [b["extra_info"] for b in data["benchmarks"]]
    assert {i["provider"] for i in infos} >= {"reference", "cpu", "trl_inline_formula"}
    for i in infos:
        assert {"floor_ms", "ratio_to_floor", "peak_mem_bytes", "device", "device_name", "commit", "role"} <= i.keys()
    assert all(b["group"] == f"group_advantages | {b['extra_info']['shape']} | fwd" for b in data["benchmarks"])
    assert any(i.get("time_vs", {}).get("reference") for i in infos if i["provider"] == "cpu")
    slow = _pytest_benchmark(tmp_path, "slow", "group_advantages:reference=3")
    assert compare.main([str(base), str(slow)]) == 1
    report = compare.compare(compare.load(base), compare.load(slow))
    flagged = {(c.case[1], c.provider, c.versus) for c in report.regressions()}
    shapes = {i["shape"] for i in infos}
    assert {(s, "reference", "trl_inline_formula") for s in shapes} <= flagged  # ours vs a peer
    assert not any(p == "cpu" and v == "reference" for _, p, v in flagged)  # cpu over a slower reference got better


def test_smoke_check_catches_a_missing_provider_and_a_non_finite_ratio():
    from benchmarks import smoke

    ctx = common.make_context(quick=True, device="cpu")
    want = sorted(smoke.expected_results(ctx, ["group_advantages"]))
    assert {w[3] for w in want} >= {"reference", "cpu", "trl_inline_formula"}

    def bench(op, shape, pass_, provider, median=1e-4, **extra):
        info = {"op": op, "shape": shape, "pass": pass_, "provider": provider, "device": "cpu", "quick": True,
                "baselines": ["reference", "trl_inline_formula"], **extra}
        return {"stats": {"median": median}, "extra_info": info}

    full = {"benchmarks": [bench(*w) for w in want]}
    assert smoke.check(full, ["group_advantages"]) == []
    dropped = {"benchmarks": full["benchmarks"][1:]}
    assert any(e.startswith("no result: " + " | ".join(want[0])) for e in smoke.check(dropped, ["group_advantages"]))
    bad = {"benchmarks": full["benchmarks"][:-1] + [bench(*want[-1], time_vs={"reference": float("inf")})]}
    assert any("time_vs reference = inf" in e for e in smoke.check(bad, ["group_advantages"]))
    nan = {"benchmarks": full["benchmarks"][:-1] + [bench(*want[-1], median=float("nan"))]}
    assert any("median nan" in e for e in smoke.check(nan, ["group_advantages"]))
