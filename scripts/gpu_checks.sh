#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in ONE call that fits an offline, lent GPU machine: 10 minutes
# for the command, at most 8 files back from $OUT, no network (issue 18).
#   On the device tool: first, here (with network), `bash scripts/gpu_wheelhouse.sh`; then
#   run(command="bash scripts/gpu_checks.sh", carry=[".wheelhouse"], timeout_s=600)
#   Anywhere else: OUT=dir bash scripts/gpu_checks.sh   (default OUT: gpu_results/, gitignored)
# Steps, each under `timeout` and inside one budget (GPU_CHECKS_BUDGET_S, default 540 s, leaving
# the device tool's 600 s limit room to return the files):
#   1. install the build prerequisites and test tools from .wheelhouse/ (--no-index: never the network)
#   2. build the extensions against the machine's torch (sm_90 only unless MPO_FAST_CUDA_ARCHS says)
#   3. pytest -m gpu (CUDA and Triton paths against the fp64 reference; -x off, per-test timeout)
#   4. every benchmark with --device cuda, most important first, while the budget lasts
#      (the pipeline one writes the overlapped pipeline's CUDA trace)
# Files in $OUT (7): summary.txt build.txt pytest_gpu.txt bench.jsonl bench.err pipeline_trace.json
#   nvidia_smi.txt. Steps are independent: one failing does not stop the others; the exit status
#   says whether any failed. The last lines printed are the summary (the device tool returns the tail).
#   GPU_CHECKS_OPS="selective_log_softmax gae"   only these benchmarks
#   GPU_CHECKS_QUICK=1                           --quick benchmarks (smaller shapes, fewer repeats)
#   GPU_CHECKS_SKIP_BUILD=1                      use the extensions already built in the tree
#   GPU_CHECKS_SKIP_WHEELS=1                     install nothing (a machine that has it all)
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-$root/gpu_results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
budget="${GPU_CHECKS_BUDGET_S:-540}"
start=$SECONDS
status=0
export PYTHONUNBUFFERED=1
log() { echo "[gpu_checks +$((SECONDS - start))s] $*" >>"$out/summary.txt"; }
left() { echo $((budget - (SECONDS - start))); }
# step NAME LIMIT_S CMD...: runs CMD under min(LIMIT_S, budget left); returns its status (124 = timed out)
step() {
  local name=$1 limit=$2 l
  shift 2
  l=$(left)
  [ "$l" -lt "$limit" ] && limit=$l
  if [ "$limit" -lt 15 ]; then log "$name SKIPPED: budget of ${budget}s spent"; return 125; fi
  timeout --kill-after=10 "$limit" "$@"
}

nvidia-smi >"$out/nvidia_smi.txt" 2>&1 || true
log "device: $("$py" -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| cuda", torch.version.cuda)' 2>&1 | tail -1)"
log "triton $("$py" -c 'import triton; print(triton.__version__)' 2>&1 | tail -1); nvcc: $(nvcc --version 2>/dev/null | tail -1)"

# 1. wheels: only what is missing or too old is installed (no --upgrade), never a second torch (--no-deps)
if [ "${GPU_CHECKS_SKIP_WHEELS:-0}" = 1 ]; then
  log "wheels: skipped (GPU_CHECKS_SKIP_WHEELS=1)"
elif [ -d .wheelhouse ]; then
  step wheels 120 "$py" -m pip install -q --no-index --find-links .wheelhouse --no-deps --no-cache-dir \
    "pybind11>=2.12" "setuptools>=77" wheel "pytest>=8" "pytest-timeout>=2.2" "hypothesis>=6.100" \
    "pytest-benchmark>=4" py-cpuinfo trl liger-kernel datasets dill multiprocess >"$out/build.txt" 2>&1 \
    || { status=1; log "wheel install FAILED (build.txt)"; }
else
  log "no .wheelhouse/ (run scripts/gpu_wheelhouse.sh where there is network, carry it): using what is installed"
fi

# 2. build (H100 and H200 are both sm_90: one arch halves nvcc's time)
if [ "${GPU_CHECKS_SKIP_BUILD:-0}" != 1 ]; then
  if MPO_FAST_CUDA_ARCHS="${MPO_FAST_CUDA_ARCHS:-90}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-16}" \
      step build 300 "$py" -m pip install -v --no-build-isolation --no-deps --no-cache-dir -e . >>"$out/build.txt" 2>&1; then
    log "build ok"
  else
    status=1; log "build FAILED (build.txt): $(tail -3 "$out/build.txt" | tr '\n' ' ')"
  fi
fi
log "backends: $("$py" -c 'import mpo_fast; print({k: str(v) for k, v in mpo_fast.backends().items()})' 2>&1 | tail -1)"

# 3. GPU tests
tests=(tests/ops tests/test_backends.py tests/test_cuda_device_guard.py tests/trainer/test_pipeline.py tests/parsing/test_tokens.py
       tests/distributed/test_fsdp2_single_rank.py)
step pytest 240 "$py" -m pytest -q -m gpu -p no:cacheprovider --timeout=120 "${tests[@]}" \
  >"$out/pytest_gpu.txt" 2>&1 || status=1
log "pytest -m gpu: $(tail -1 "$out/pytest_gpu.txt")"
grep -E "^(FAILED|ERROR)" "$out/pytest_gpu.txt" | head -15 >>"$out/summary.txt"

# 4. benchmarks, most important first; whatever the budget leaves
quick=(); [ "${GPU_CHECKS_QUICK:-0}" = 1 ] && quick=(--quick)
first="selective_log_softmax fused_linear_policy_loss fused_linear_logprob policy_loss gae group_advantages expected_score"
all="$("$py" -c 'from benchmarks.run import available_ops; print(" ".join(available_ops()))' 2>/dev/null)"
ops="${GPU_CHECKS_OPS:-$first $(for o in $all; do case " $first " in *" $o "*) ;; *) printf '%s ' "$o";; esac; done)}"
: >"$out/bench.jsonl"; : >"$out/bench.err"
for op in $ops; do
  [ "$op" = pipeline ] && export MPO_FAST_PIPELINE_TRACE="$out/pipeline_trace.json"
  echo "=== $op" >>"$out/bench.err"
  before=$(wc -l <"$out/bench.jsonl")
  step "benchmark $op" 150 "$py" -m benchmarks.run --op "$op" --device cuda --json "${quick[@]}" \
    >>"$out/bench.jsonl" 2>>"$out/bench.err"
  rc=$?
  n=$(($(wc -l <"$out/bench.jsonl") - before))
  if [ $rc = 0 ]; then log "benchmark $op: $n records"; else status=1; log "benchmark $op FAILED (rc $rc, $n records)"; fi
  unset MPO_FAST_PIPELINE_TRACE
done
# 5. one full-fine-tune update step, fused policy loss (3 GEMMs) vs fused log-prob + loss (4), same records file
echo "=== update_step" >>"$out/bench.err"
step "benchmark update_step" 120 "$py" -m benchmarks.update_step --device cuda >>"$out/bench.jsonl" 2>>"$out/bench.err" \
  && log "benchmark update_step: ok" || { status=1; log "benchmark update_step FAILED"; }
log "done in $((SECONDS - start))s, status $status"
cat "$out/summary.txt"
exit $status
