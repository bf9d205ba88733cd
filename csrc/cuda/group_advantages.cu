// CUDA group-relative advantages: one warp per group. Each lane strides over the group's members,
// the warp reduces the sum and count, then the squared deviations (two passes, accurate), then
// writes. Advantages are a few MB at most, so the floor is one launch (~5 us); the kernel exists
// to keep rewards on the device next to the parse and loss kernels, not for bandwidth.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"
#include "mpo_fast/advantages_math.h"

namespace mpo_fast {
namespace {

constexpr int kWarpsPerBlock = 8;

// Loads one reward in the accumulation type: fp64 stays fp64, the half types go through float.
template <typename Acc, typename T>
__device__ __forceinline__ Acc to_acc(T v) { return static_cast<Acc>(v); }
template <>
__device__ __forceinline__ float to_acc<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__device__ __forceinline__ float to_acc<float, __half>(__half v) { return __half2float(v); }

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

template <typename In, typename Out, typename Acc>
__global__ void group_advantages_kernel(const In* __restrict__ rewards, const uint8_t* __restrict__ valid,
                                        Out* __restrict__ out, int32_t* __restrict__ counts, int64_t num_groups,
                                        int64_t group_size, int mode, Acc eps) {
  const int lane = threadIdx.x & 31;
  const int64_t g = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (g >= num_groups) return;
  const int64_t base = g * group_size;
  Acc sum = 0;
  int n = 0;
  for (int64_t j = lane; j < group_size; j += 32) {
    if (valid && !valid[base + j]) continue;
    sum += to_acc<Acc>(rewards[base + j]);
    ++n;
  }
  sum = warp_sum(sum);
  n = warp_sum(n);
  const Acc mean = n > 0 ? sum / n : Acc(0);
  Acc sq = 0;
  for (int64_t j = lane; j < group_size; j += 32) {
    if (valid && !valid[base + j]) continue;
    const Acc d = to_acc<Acc>(rewards[base + j]) - mean;
    sq += d * d;
  }
  sq = warp_sum(sq);
  const Acc scale = advantage_scale<Acc>(mode, n, sq, eps);
  for (int64_t j = lane; j < group_size; j += 32) {
    const bool ok = n >= 2 && (!valid || valid[base + j]);
    out[base + j] = static_cast<Out>(ok ? (to_acc<Acc>(rewards[base + j]) - mean) * scale : Acc(0));
  }
  if (lane == 0) counts[g] = n;
}

}  // namespace
}  // namespace mpo_fast

// C ABI: rewards (dtype code), optional valid mask (uint8, null = all valid), out (float32, or float64
// for float64 input), counts (int32 per group). Returns the launch's cudaError_t.
extern "C" cudaError_t mpo_cuda_group_advantages(const void* rewards, int rdtype, const uint8_t* valid, void* out,
                                                  int32_t* counts, int64_t num_groups, int64_t group_size, int mode,
                                                  double eps, cudaStream_t stream) {
  using namespace mpo_fast;
  if (num_groups == 0) return cudaSuccess;
  const dim3 block(32 * kWarpsPerBlock);
  const dim3 grid(static_cast<unsigned>((num_groups + kWarpsPerBlock - 1) / kWarpsPerBlock));
  switch (rdtype) {
    case kFloat32:
      group_advantages_kernel<float, float, float><<<grid, block, 0, stream>>>(
          static_cast<const float*>(rewards), valid, static_cast<float*>(out), counts, num_groups, group_size, mode,
          static_cast<float>(eps));
      break;
    case kBFloat16:
      group_advantages_kernel<__nv_bfloat16, float, float><<<grid, block, 0, stream>>>(
          static_cast<const __nv_bfloat16*>(rewards), valid, static_cast<float*>(out), counts, num_groups, group_size,
          mode, static_cast<float>(eps));
      break;
    case kFloat16:
      group_advantages_kernel<__half, float, float><<<grid, block, 0, stream>>>(
          static_cast<const __half*>(rewards), valid, static_cast<float*>(out), counts, num_groups, group_size, mode,
          static_cast<float>(eps));
      break;
    case kFloat64:
      group_advantages_kernel<double, double, double><<<grid, block, 0, stream>>>(
          static_cast<const double*>(rewards), valid, static_cast<double*>(out), counts, num_groups, group_size, mode,
          eps);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}
