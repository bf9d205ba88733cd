#!/usr/bin/env bash
# Prepare, on a machine WITH network, the wheels scripts/gpu_checks.sh installs on an offline GPU
# machine (Python 3.12, x86-64, torch/triton/nvcc already there). Writes .wheelhouse/ (gitignored);
# the GPU run carries it (device tool: carry [".wheelhouse"]) and installs with --no-index.
#   bash scripts/gpu_wheelhouse.sh            # PYTHON=... to pick the pip that downloads
# Build prerequisites (pip install --no-build-isolation needs them installed): pybind11>=2.12,
# setuptools>=77, wheel. Test tools: pytest, pytest-timeout, hypothesis, pytest-benchmark.
# Comparison baselines for benchmarks/: trl and liger-kernel (pure Python; their torch/triton/
# transformers/accelerate come from the GPU image) and the few trl needs that the image lacks.
# --no-deps everywhere: each wheel is named here, so nothing unexpected (a second torch) comes along.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.wheelhouse"
py="${PYTHON:-python3}"
pyver="${WHEELHOUSE_PYTHON_VERSION:-3.12}"
mkdir -p "$dest"
pkgs=(
  "pybind11>=2.12" "setuptools>=77" "wheel"
  "pytest>=8" "pytest-timeout>=2.2" "hypothesis>=6.100" "pytest-benchmark>=4" "py-cpuinfo"
  "trl>=0.17" "liger-kernel" "datasets" "dill" "multiprocess"
)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  "${plat[@]}" -d "$dest" "${pkgs[@]}"
size_kib=$(du -sk "$dest" | cut -f1)
echo "wheelhouse: $(ls "$dest" | wc -l) wheels, $((size_kib / 1024)) MiB in $dest"
# The device tool carries at most 64 MiB with the whole working tree: stay well under it.
if [ "$size_kib" -gt $((48 * 1024)) ]; then
  echo "wheelhouse is over 48 MiB: too large to carry to the GPU machine" >&2; exit 1
fi
