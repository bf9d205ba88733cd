#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the MPO demo on the embedded SmolLM2-135M model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
venv="${MPO_FAST_VENV:-$root/.venv}"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # measured faster than 2 threads on a busy 2-core box
# A broken install must fail here, loudly, with Python's own import error (no silent fallback).
if ! "$venv/bin/python" -c "import mpo_fast.cli"; then
  echo "[demo] mpo_fast.cli does not import (error above): rerun bash scripts/setup_env.sh, or report it" >&2
  exit 1
fi
exec "$venv/bin/mpo-fast" demo "$@"
