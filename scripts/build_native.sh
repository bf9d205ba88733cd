#!/usr/bin/env bash
# Rebuild mpo_fast._C (and mpo_fast._cuda when nvcc is found) in place while developing, without
# reinstalling. Serialised with a lock so people working in one tree never interleave builds.
#   MPO_FAST_SKIP_CUDA=1 bash scripts/build_native.sh   # C++ only (seconds)
# CMake links into build/dev/lib; each finished module is copied next to its target in mpo_fast/
# and renamed over it, so a process importing mpo_fast meanwhile loads the old module or the new
# one, never a half-written file.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
[ -x "$py" ] || py=python3
build="$root/build/dev"
stage="$build/lib"
pkg="$root/mpo_fast"
cuda=ON
if [ "${MPO_FAST_SKIP_CUDA:-0}" != "0" ] || ! command -v nvcc >/dev/null 2>&1; then cuda=OFF; fi
mkdir -p "$stage"
exec 9>"$root/build/.lock"
flock 9
# A CUDA module staged before MPO_FAST_SKIP_CUDA=1 is not this build's: drop it so the package's
# stays as it is. Staged modules are otherwise kept: a rebuild with nothing changed links nothing.
if [ "$cuda" = OFF ]; then rm -f "$stage"/_cuda*.so; fi
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE="$py" \
  -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" -DMPO_FAST_BUILD_CUDA=$cuda \
  -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$stage" >/dev/null
cmake --build "$build" --parallel "${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
# The temporary copy lives in mpo_fast/ itself so that `mv` is a rename(2) on one filesystem
# (atomic), even when build/ is a link to another disk. Hidden, and not named *.so: never imported.
tmp=""
trap '[ -z "$tmp" ] || rm -f "$tmp"' EXIT
shopt -s nullglob
for so in "$stage"/_C*.so "$stage"/_cuda*.so; do
  name="$(basename "$so")"
  cmp -s "$so" "$pkg/$name" && continue  # unchanged: leave the installed file (and its inode) alone
  tmp="$pkg/.$name.tmp.$$"
  cp "$so" "$tmp"
  mv -f "$tmp" "$pkg/$name"
  tmp=""
done
