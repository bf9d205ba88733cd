#!/usr/bin/env bash
# Rebuild mpo_fast._C (and mpo_fast._cuda when nvcc is found) in place while developing, without
# reinstalling. Serialised with a lock so people working in one tree never interleave builds.
#   MPO_FAST_SKIP_CUDA=1 bash scripts/build_native.sh   # C++ only (seconds)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
build="$root/build/dev"
cuda=ON
if [ "${MPO_FAST_SKIP_CUDA:-0}" != "0" ] || ! command -v nvcc >/dev/null 2>&1; then cuda=OFF; fi
mkdir -p "$build"
exec 9>"$root/build/.lock"
flock 9
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DMPO_FAST_BUILD_CUDA=$cuda \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$root/mpo_fast" >/dev/null
cmake --build "$build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
