#!/usr/bin/env bash
# CI smoke pass of the benchmarks (issue 19): the quick shapes of every op under pytest-benchmark with
# a short time budget (0.05 s of timed rounds per provider), then checks that every provider produced
# a result and every ratio is finite. No timing gate: CI machines are shared and noisy. Also checks
# that benchmarks.compare reads the run. Measured: ~1 min on the shared 2-core dev machine at load 12.
#   bash scripts/bench_smoke.sh            extra args go to pytest, e.g. --bench-ops gae,policy_loss
#   PYTHON=/path/to/python bash scripts/bench_smoke.sh    (default: .venv/bin/python of the repo)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
py="${PYTHON:-$root/.venv/bin/python}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # as scripts/test.sh: 2 OpenMP threads on 2 shared cores thrash
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
ops=()
for a in "$@"; do case "$a" in --bench-ops=*) ops=(--ops "${a#--bench-ops=}");; esac; done
prev=""
for a in "$@"; do [ "$prev" = "--bench-ops" ] && ops=(--ops "$a"); prev="$a"; done
"$py" -m pytest benchmarks/ --benchmark-only --benchmark-max-time=0.05 --benchmark-min-rounds=1 --benchmark-columns=median,iqr,rounds --timeout=600 -q -p no:cacheprovider \
  --benchmark-json="$out/quick.json" "$@"
"$py" -m benchmarks.smoke "$out/quick.json" "${ops[@]}"
"$py" -m benchmarks.compare "$out/quick.json" "$out/quick.json" >/dev/null
echo "bench smoke: ok"
