// Group-relative advantage math shared by the C++ CPU path and the CUDA kernel.
// Modes (keep in sync with mpo_fast/ops/advantages.py: MODES):
//   0 grpo     (r - mean) / (std + eps), std unbiased over the valid members (as TRL)
//   1 dr_grpo  r - mean (Dr. GRPO: no std scaling)
//   2 rloo     r - mean of the other valid members = (r - mean) * n / (n - 1)
// A group with fewer than 2 valid members gets advantage 0 everywhere; invalid members get 0.
#pragma once

#if defined(__CUDACC__)
#define MPO_HD __host__ __device__ __forceinline__
#else
#define MPO_HD inline
#endif

namespace mpo_fast {
enum AdvantageMode : int { kGrpo = 0, kDrGrpo = 1, kRloo = 2 };

// Scale applied to (r - mean) once the group's valid count n and sum of squared deviations are
// known. Returns 0 for degenerate groups so callers need no special case.
template <typename T>
MPO_HD T advantage_scale(int mode, int n, T sq_dev_sum, T eps) {
  if (n < 2) return T(0);
  if (mode == kGrpo) {
    T var = sq_dev_sum / T(n - 1);
    T sd = var > T(0) ? sqrt(var) : T(0);
    return T(1) / (sd + eps);
  }
  if (mode == kRloo) return T(n) / T(n - 1);
  return T(1);
}
}  // namespace mpo_fast
