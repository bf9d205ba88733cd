#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the whole CPU test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/ops`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
venv="${MPO_FAST_VENV:-$root/.venv}"
cd "$root"
# One torch thread per process: tests start servers and worker threads beside pytest, and on 2 cores
# oversubscribed OpenMP pools were measured 5-9x slower than one thread.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$venv/bin/python" -m pytest -q --timeout=900 "$@"
