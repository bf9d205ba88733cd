#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: build against the machine's own torch, the CUDA and
# Triton tests, every benchmark on the device, and a profiler trace of the overlapped pipeline.
#   OUT=dir bash scripts/gpu_checks.sh      (results: $OUT/pytest_gpu.txt, $OUT/bench_*.jsonl,
#                                             $OUT/pipeline_trace.json, $OUT/summary.txt)
#   GPU_CHECKS_OPS="selective_log_softmax gae"   only these benchmarks (default: all)
#   GPU_CHECKS_QUICK=1                           --quick benchmarks (smaller shapes, fewer repeats)
# Steps are independent: one failing does not stop the others; the exit status says if any failed.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
out="${OUT:-$root/gpu_results}"
mkdir -p "$out"
py="${PYTHON:-python3}"
status=0
log() { echo "[gpu_checks $(date +%H:%M:%S)] $*" | tee -a "$out/summary.txt" >&2; }

log "device: $("$py" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)' 2>&1)"
log "triton: $("$py" -c 'import triton; print(triton.__version__)' 2>&1)"
if ! "$py" -m pip install -q --no-build-isolation --no-deps -e . >"$out/build.txt" 2>&1; then
  log "build FAILED (see build.txt)"; exit 1
fi
log "backends: $("$py" -c 'import mpo_fast; print(mpo_fast.backends())' 2>&1)"

"$py" -m pytest -q -m gpu -p no:cacheprovider tests >"$out/pytest_gpu.txt" 2>&1 || status=1
log "pytest -m gpu: $(tail -1 "$out/pytest_gpu.txt")"

quick=(); [ "${GPU_CHECKS_QUICK:-0}" = 1 ] && quick=(--quick)
ops="${GPU_CHECKS_OPS:-$("$py" -c 'from benchmarks.run import available_ops; print(" ".join(available_ops()))')}"
for op in $ops; do
  if [ "$op" = pipeline ]; then
    export MPO_FAST_PIPELINE_TRACE="$out/pipeline_trace.json"
  fi
  if "$py" -m benchmarks.run --op "$op" --device cuda --json "${quick[@]}" >"$out/bench_$op.jsonl" 2>"$out/bench_$op.err"; then
    log "benchmark $op: $(wc -l <"$out/bench_$op.jsonl") records"
  else
    status=1; log "benchmark $op FAILED: $(tail -3 "$out/bench_$op.err" | tr '\n' ' ')"
  fi
  unset MPO_FAST_PIPELINE_TRACE
done
exit $status
