#!/usr/bin/env bash
# Sets up .venv (scripts/setup_env.sh) and runs the MPO demo on the embedded SmolLM2-135M model.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
venv="${MPO_FAST_VENV:-$root/.venv}"
cd "$root"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # measured faster than 2 threads on a busy 2-core box
if "$venv/bin/python" -c "import mpo_fast.cli" 2>/dev/null; then
  exec "$venv/bin/mpo-fast" demo "$@"
fi
# Until the trainer lands, the demo is the advantages benchmark.
exec "$venv/bin/python" -m benchmarks.run --op group_advantages "$@"
