#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the whole CPU test suite. Extra args go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/ops`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
venv="${MPO_FAST_VENV:-$root/.venv}"
cd "$root"
exec "$venv/bin/python" -m pytest -q --timeout=900 "$@"
