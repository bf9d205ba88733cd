// CUDA selective log-softmax: log p(id), entropy and the gradient to the logits.
//
// Forward (and the fused op's `fold`, which merges a [tokens, vocab-chunk] tile into running
// statistics and can leave exp(z - max) in the tile): one block of 256 threads per row. Each thread streams
// 16-byte vectors (8 bf16/fp16, 4 fp32, 2 fp64), four in flight, and keeps its own online
// (shift, s = sum e^(z-shift), t = sum e^(z-shift)(z-shift)) in fp32 (fp64 for fp64 input): a
// vector whose max exceeds the shift rescales once, so the common case costs one exp per element
// and no synchronisation. One warp-shuffle + shared-memory reduction per row at the end.
// Floor (H100, N=16384, V=151936 bf16): the logits read once, 4.98 GB / 3.0 TB/s = 1.66 ms.
//
// Backward: a (row, 8192-column segment) grid; every thread reads 4 vectors, writes 4 gradient
// vectors (in place when grad == logits, as the fused op's tiles are). Floor: read + write, 3.3 ms.
//
// Rows whose base or stride is not 16-byte aligned (odd vocabularies, column slices) take the
// same kernels with 1-element "vectors".
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/dtype.h"

namespace mpo_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kWarps = kThreads / 32;

template <typename T>
struct AccOf { using type = float; };
template <>
struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_acc(float v);
template <>
__device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }

// Fast exp for the streaming loops (ex2.approx: ~2 ulp, exp(-inf) = 0, NaN stays NaN);
// the precise one where a handful of values are combined.
__device__ __forceinline__ float fast_exp(float x) { return __expf(x); }
__device__ __forceinline__ double fast_exp(double x) { return exp(x); }
__device__ __forceinline__ float precise_exp(float x) { return expf(x); }
__device__ __forceinline__ double precise_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

template <typename In, int VEC>
struct alignas(sizeof(In) * VEC) Vec {
  In v[VEC];
};

// Running statistics relative to `m` (the shift): s = sum e^(z-m), t = sum e^(z-m)(z-m).
template <typename A>
struct Stats {
  A m, s, t;
};

// Merge b into a. s == 0 means "nothing but -inf seen": it adds nothing, and is replaced whole.
// A NaN s compares unequal to 0 and poisons the merge: that row's outputs become NaN.
template <typename A>
__device__ __forceinline__ Stats<A> combine(Stats<A> a, Stats<A> b) {
  if (b.s == A(0)) return a;
  if (a.s == A(0)) return b;
  const A nm = a.m > b.m ? a.m : b.m;
  const A fa = precise_exp(a.m - nm), fb = precise_exp(b.m - nm);
  Stats<A> r;
  r.t = fa * (a.t + (a.m - nm) * a.s) + fb * (b.t + (b.m - nm) * b.s);
  r.s = fa * a.s + fb * b.s;
  r.m = nm;
  return r;
}

// Folds VEC values (already scaled by 1/T) into a thread's running statistics.
template <typename A, int VEC, bool ENT>
__device__ __forceinline__ void accumulate(Stats<A>& st, const A (&z)[VEC]) {
  A lm = z[0];
#pragma unroll
  for (int k = 1; k < VEC; ++k) lm = z[k] > lm ? z[k] : lm;  // NaN never wins; the sum catches it
  if (lm > st.m) {  // rare after the first few vectors: rescale to the new max once
    if (ENT) st.t = st.s > A(0) ? precise_exp(st.m - lm) * (st.t + (st.m - lm) * st.s) : A(0);
    st.s *= precise_exp(st.m - lm);
    st.m = lm;
  }
  const A shift = st.m == A(-INFINITY) ? A(0) : st.m;  // only -inf so far: s stays 0, never -inf - -inf
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    const A d = z[k] - shift;
    const A e = fast_exp(d);
    st.s += e;
    if (ENT) st.t += e > A(0) ? e * d : A(0);
  }
}

template <typename A>
__device__ __forceinline__ Stats<A> block_reduce(Stats<A> st) {
  __shared__ A sm[kWarps], ss[kWarps], stt[kWarps];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Stats<A> o;
    o.m = __shfl_xor_sync(0xffffffffu, st.m, off);
    o.s = __shfl_xor_sync(0xffffffffu, st.s, off);
    o.t = __shfl_xor_sync(0xffffffffu, st.t, off);
    st = combine(st, o);
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    sm[warp] = st.m;
    ss[warp] = st.s;
    stt[warp] = st.t;
  }
  __syncthreads();
  Stats<A> r{sm[0], ss[0], stt[0]};
  for (int w = 1; w < kWarps; ++w) r = combine(r, Stats<A>{sm[w], ss[w], stt[w]});
  return r;  // every thread holds the row's statistics
}

// The row's statistics. The initial shift is 0 with s = 0: the first finite value rescales
// (0 * anything), and a row of only -inf keeps s = 0, so its lse is -inf and its logp NaN.
template <typename In, int VEC, bool ENT>
__device__ __forceinline__ Stats<typename AccOf<In>::type> row_stats(const In* __restrict__ row, int64_t cols,
                                                                    typename AccOf<In>::type inv_t) {
  using A = typename AccOf<In>::type;
  Stats<A> st{-INFINITY, A(0), A(0)};
  const int64_t nvec = cols / VEC;
  const auto* vrow = reinterpret_cast<const Vec<In, VEC>*>(row);
  int64_t v = threadIdx.x;
  for (; v + (kUnroll - 1) * kThreads < nvec; v += kUnroll * kThreads) {
    Vec<In, VEC> buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) buf[u] = vrow[v + u * kThreads];  // four 16-byte loads in flight
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      A z[VEC];
#pragma unroll
      for (int k = 0; k < VEC; ++k) z[k] = to_acc(buf[u].v[k]) * inv_t;
      accumulate<A, VEC, ENT>(st, z);
    }
  }
  for (; v < nvec; v += kThreads) {
    const Vec<In, VEC> b = vrow[v];
    A z[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) z[k] = to_acc(b.v[k]) * inv_t;
    accumulate<A, VEC, ENT>(st, z);
  }
  for (int64_t i = nvec * VEC + threadIdx.x; i < cols; i += kThreads) {
    const A z[1] = {to_acc(row[i]) * inv_t};
    accumulate<A, 1, ENT>(st, z);
  }
  // A thread that saw only -inf has s = 0 and m = -inf: combine() ignores it.
  return block_reduce(st);
}

template <typename In, int VEC, bool ENT>
__global__ void __launch_bounds__(kThreads) forward_kernel(const In* __restrict__ logits, int64_t cols,
                                                           int64_t row_stride, const int64_t* __restrict__ ids,
                                                           int64_t ignore_index, typename AccOf<In>::type inv_t,
                                                           typename AccOf<In>::type* __restrict__ logp,
                                                           typename AccOf<In>::type* __restrict__ entropy,
                                                           typename AccOf<In>::type* __restrict__ lse) {
  using A = typename AccOf<In>::type;
  const int64_t r = blockIdx.x;
  const int64_t id = ids[r];
  if (id == ignore_index) {  // padding: never read its logits
    if (threadIdx.x == 0) {
      logp[r] = A(0);
      lse[r] = A(0);
      if (ENT) entropy[r] = A(0);
    }
    return;
  }
  const In* row = logits + r * row_stride;
  const Stats<A> st = row_stats<In, VEC, ENT>(row, cols, inv_t);
  if (threadIdx.x == 0) {
    const A log_s = acc_log(st.s);
    const A l = st.m + log_s;
    const A zt = (id >= 0 && id < cols) ? to_acc(row[id]) * inv_t : A(NAN);
    logp[r] = zt - l;
    lse[r] = l;
    if (ENT) entropy[r] = log_s - st.t / st.s;
  }
}

template <typename In>
__device__ __forceinline__ In store_cast(typename AccOf<In>::type v) {
  if constexpr (std::is_same<In, double>::value) {
    return v;
  } else {
    return from_acc<In>(v);
  }
}

// WRITE_EXP: afterwards overwrite the tile row with exp(z - m_new) and write alpha = exp(m_old - m_new)
// (fused_linear_logprob accumulates E_p[W] from these for a frozen LM head).
template <typename In, int VEC, bool ENT, bool WRITE_EXP>
__global__ void __launch_bounds__(kThreads) fold_kernel(In* tile, int64_t cols, int64_t row_stride,
                                                        int64_t vocab_start, const int64_t* __restrict__ ids,
                                                        int64_t ignore_index, typename AccOf<In>::type inv_t,
                                                        typename AccOf<In>::type* __restrict__ m,
                                                        typename AccOf<In>::type* __restrict__ s,
                                                        typename AccOf<In>::type* __restrict__ t,
                                                        typename AccOf<In>::type* __restrict__ zt,
                                                        typename AccOf<In>::type* __restrict__ alpha) {
  using A = typename AccOf<In>::type;
  const int64_t r = blockIdx.x;
  const int64_t id = ids[r];
  In* row = tile + r * row_stride;
  if (id == ignore_index) {
    if (WRITE_EXP) {  // adds nothing to what the caller accumulates with the tile
      if (threadIdx.x == 0) alpha[r] = A(1);
      for (int64_t j = threadIdx.x; j < cols; j += kThreads) row[j] = store_cast<In>(A(0));
    }
    return;
  }
  const Stats<A> old{m[r], s[r], t[r]};  // read by every thread before thread 0 writes below
  const Stats<A> chunk = row_stats<In, VEC, ENT>(row, cols, inv_t);
  const Stats<A> merged = combine(old, chunk);
  if (threadIdx.x == 0) {
    m[r] = merged.m;
    s[r] = merged.s;
    if (ENT) t[r] = merged.t;
    const int64_t local = id - vocab_start;
    if (local >= 0 && local < cols) zt[r] = to_acc(row[local]) * inv_t;
    if (WRITE_EXP) alpha[r] = old.s == A(0) ? A(0) : precise_exp(old.m - merged.m);
  }
  if (WRITE_EXP) {
    __syncthreads();  // the target logit above is read before the row is overwritten
    const A shift = merged.m == A(-INFINITY) ? A(0) : merged.m;
    for (int64_t j = threadIdx.x; j < cols; j += kThreads) row[j] = store_cast<In>(fast_exp(to_acc(row[j]) * inv_t - shift));
  }
}

// grad_j = (gl ([j == id] - p_j) - ge p_j (log p_j + entropy)) / T, p_j = exp(z_j - lse).
template <typename In, int VEC, bool LOGP, bool ENT>
__global__ void __launch_bounds__(kThreads) backward_kernel(
    const In* __restrict__ logits, int64_t cols, int64_t row_stride, int64_t vocab_start,
    const int64_t* __restrict__ ids, int64_t ignore_index, typename AccOf<In>::type inv_t,
    const typename AccOf<In>::type* __restrict__ lse, const typename AccOf<In>::type* __restrict__ entropy,
    const typename AccOf<In>::type* __restrict__ grad_logp, const typename AccOf<In>::type* __restrict__ grad_entropy,
    In* grad, int64_t grad_row_stride) {
  // no __restrict__ on logits/grad: they alias when the fused op turns a tile into its gradient
  using A = typename AccOf<In>::type;
  constexpr int64_t kSeg = int64_t(kThreads) * VEC * kUnroll;
  const int64_t r = blockIdx.x;
  const int64_t id = ids[r];
  const int64_t seg0 = int64_t(blockIdx.y) * kSeg;
  In* out = grad + r * grad_row_stride;
  const In* row = logits + r * row_stride;
  const bool ignored = id == ignore_index;
  const A l = ignored ? A(0) : lse[r];
  const A gl = (LOGP && !ignored) ? grad_logp[r] : A(0);
  const A ge = (ENT && !ignored) ? grad_entropy[r] : A(0);
  const A h = (ENT && !ignored) ? entropy[r] : A(0);
  const int64_t local = ignored ? -1 : id - vocab_start;
  auto grad_of = [&](A x, int64_t j) -> A {
    if (ignored) return A(0);
    const A d = x * inv_t - l;
    const A p = fast_exp(d);
    A q = LOGP ? -gl : A(0);
    if (ENT) q -= ge * (d + h);
    A g = (ENT && p == A(0)) ? A(0) : p * q;  // a -inf logit: p = 0, log p = -inf: gradient 0
    if (LOGP && j == local) g += gl;
    return g * inv_t;
  };
  const bool full = seg0 + kSeg <= cols;
  if (full && VEC > 1) {
    const auto* vin = reinterpret_cast<const Vec<In, VEC>*>(row + seg0);
    auto* vout = reinterpret_cast<Vec<In, VEC>*>(out + seg0);
    Vec<In, VEC> buf[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) buf[u] = vin[threadIdx.x + u * kThreads];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j0 = seg0 + (int64_t(threadIdx.x) + u * kThreads) * VEC;
      Vec<In, VEC> o;
#pragma unroll
      for (int k = 0; k < VEC; ++k) o.v[k] = store_cast<In>(grad_of(to_acc(buf[u].v[k]), j0 + k));
      vout[threadIdx.x + u * kThreads] = o;
    }
  } else {
    const int64_t end = seg0 + kSeg < cols ? seg0 + kSeg : cols;
    for (int64_t j = seg0 + threadIdx.x; j < end; j += kThreads) out[j] = store_cast<In>(grad_of(to_acc(row[j]), j));
  }
}

bool aligned16(const void* p, int64_t row_stride, size_t elem) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (row_stride * static_cast<int64_t>(elem)) % 16 == 0;
}

template <typename In>
cudaError_t launch_forward(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, const int64_t* ids,
                           int64_t ignore_index, double inv_t, bool ent, void* logp, void* entropy, void* lse,
                           cudaStream_t stream) {
  using A = typename AccOf<In>::type;
  constexpr int V = 16 / sizeof(In);
  const auto* x = static_cast<const In*>(logits);
  const bool vec = aligned16(logits, row_stride, sizeof(In));
  auto* lp = static_cast<A*>(logp);
  auto* en = static_cast<A*>(entropy);
  auto* ls = static_cast<A*>(lse);
  const dim3 grid(static_cast<unsigned>(rows));
  const A it = static_cast<A>(inv_t);
  if (vec && ent) forward_kernel<In, V, true><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, ids, ignore_index, it, lp, en, ls);
  else if (vec) forward_kernel<In, V, false><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, ids, ignore_index, it, lp, en, ls);
  else if (ent) forward_kernel<In, 1, true><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, ids, ignore_index, it, lp, en, ls);
  else forward_kernel<In, 1, false><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, ids, ignore_index, it, lp, en, ls);
  return cudaGetLastError();
}

template <typename In, int V>
cudaError_t launch_fold_v(In* x, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                          const int64_t* ids, int64_t ignore_index, double inv_t, bool ent, void* m, void* s, void* t,
                          void* zt, void* alpha, cudaStream_t stream) {
  using A = typename AccOf<In>::type;
  auto *pm = static_cast<A*>(m), *ps = static_cast<A*>(s), *pt = static_cast<A*>(t), *pz = static_cast<A*>(zt);
  auto* pa = static_cast<A*>(alpha);
  const dim3 grid(static_cast<unsigned>(rows));
  const A it = static_cast<A>(inv_t);
  if (alpha && ent) fold_kernel<In, V, true, true><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, vocab_start, ids, ignore_index, it, pm, ps, pt, pz, pa);
  else if (alpha) fold_kernel<In, V, false, true><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, vocab_start, ids, ignore_index, it, pm, ps, pt, pz, pa);
  else if (ent) fold_kernel<In, V, true, false><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, vocab_start, ids, ignore_index, it, pm, ps, pt, pz, pa);
  else fold_kernel<In, V, false, false><<<grid, kThreads, 0, stream>>>(x, cols, row_stride, vocab_start, ids, ignore_index, it, pm, ps, pt, pz, pa);
  return cudaGetLastError();
}

template <typename In>
cudaError_t launch_fold(void* tile, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                        const int64_t* ids, int64_t ignore_index, double inv_t, bool ent, void* m, void* s, void* t,
                        void* zt, void* alpha, cudaStream_t stream) {
  auto* x = static_cast<In*>(tile);
  if (aligned16(tile, row_stride, sizeof(In)))
    return launch_fold_v<In, 16 / sizeof(In)>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m,
                                              s, t, zt, alpha, stream);
  return launch_fold_v<In, 1>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m, s, t, zt,
                              alpha, stream);
}

template <typename In, int V, bool LOGP, bool ENT>
cudaError_t launch_backward_t(const In* x, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                              const int64_t* ids, int64_t ignore_index, double inv_t, const void* lse,
                              const void* entropy, const void* gl, const void* ge, In* grad, int64_t grad_row_stride,
                              cudaStream_t stream) {
  using A = typename AccOf<In>::type;
  constexpr int64_t seg = int64_t(kThreads) * V * kUnroll;
  const int64_t segs = (cols + seg - 1) / seg;
  if (segs > 65535) return cudaErrorInvalidValue;  // > 500M columns: not a vocabulary
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(segs));
  backward_kernel<In, V, LOGP, ENT><<<grid, kThreads, 0, stream>>>(
      x, cols, row_stride, vocab_start, ids, ignore_index, static_cast<A>(inv_t), static_cast<const A*>(lse),
      static_cast<const A*>(entropy), static_cast<const A*>(gl), static_cast<const A*>(ge), grad, grad_row_stride);
  return cudaGetLastError();
}

template <typename In, int V>
cudaError_t launch_backward_v(const In* x, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                              const int64_t* ids, int64_t ignore_index, double inv_t, const void* lse,
                              const void* entropy, const void* gl, const void* ge, In* grad, int64_t grad_row_stride,
                              cudaStream_t stream) {
  if (gl && ge)
    return launch_backward_t<In, V, true, true>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse,
                                                entropy, gl, ge, grad, grad_row_stride, stream);
  if (gl)
    return launch_backward_t<In, V, true, false>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse,
                                                 entropy, gl, ge, grad, grad_row_stride, stream);
  return launch_backward_t<In, V, false, true>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse,
                                               entropy, gl, ge, grad, grad_row_stride, stream);
}

template <typename In>
cudaError_t launch_backward(const void* logits, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                            const int64_t* ids, int64_t ignore_index, double inv_t, const void* lse,
                            const void* entropy, const void* gl, const void* ge, void* grad, int64_t grad_row_stride,
                            cudaStream_t stream) {
  constexpr int V = 16 / sizeof(In);
  const auto* x = static_cast<const In*>(logits);
  auto* g = static_cast<In*>(grad);
  const bool vec = aligned16(logits, row_stride, sizeof(In)) && aligned16(grad, grad_row_stride, sizeof(In));
  if (vec)
    return launch_backward_v<In, V>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, gl,
                                    ge, g, grad_row_stride, stream);
  return launch_backward_v<In, 1>(x, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, gl,
                                  ge, g, grad_row_stride, stream);
}

}  // namespace
}  // namespace mpo_fast

// ---- C ABI (device pointers; stats float32, float64 for float64 logits; ids int64) ------------
extern "C" cudaError_t mpo_cuda_sls_forward(const void* logits, int dtype, int64_t rows, int64_t cols,
                                             int64_t row_stride, const int64_t* ids, int64_t ignore_index,
                                             double inv_t, int with_entropy, void* logp, void* entropy, void* lse,
                                             cudaStream_t stream) {
  using namespace mpo_fast;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff || cols < 1 || row_stride < cols) return cudaErrorInvalidValue;
  const bool ent = with_entropy != 0;
  switch (dtype) {
    case kFloat32: return launch_forward<float>(logits, rows, cols, row_stride, ids, ignore_index, inv_t, ent, logp, entropy, lse, stream);
    case kBFloat16: return launch_forward<__nv_bfloat16>(logits, rows, cols, row_stride, ids, ignore_index, inv_t, ent, logp, entropy, lse, stream);
    case kFloat16: return launch_forward<__half>(logits, rows, cols, row_stride, ids, ignore_index, inv_t, ent, logp, entropy, lse, stream);
    case kFloat64: return launch_forward<double>(logits, rows, cols, row_stride, ids, ignore_index, inv_t, ent, logp, entropy, lse, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t mpo_cuda_sls_fold(void* tile, int dtype, int64_t rows, int64_t cols, int64_t row_stride,
                                          int64_t vocab_start, const int64_t* ids, int64_t ignore_index, double inv_t,
                                          int with_entropy, void* m, void* s, void* t, void* zt, void* alpha,
                                          cudaStream_t stream) {
  using namespace mpo_fast;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff || cols < 1 || row_stride < cols) return cudaErrorInvalidValue;
  const bool ent = with_entropy != 0;
  switch (dtype) {
    case kFloat32: return launch_fold<float>(tile, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m, s, t, zt, alpha, stream);
    case kBFloat16: return launch_fold<__nv_bfloat16>(tile, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m, s, t, zt, alpha, stream);
    case kFloat16: return launch_fold<__half>(tile, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m, s, t, zt, alpha, stream);
    case kFloat64: return launch_fold<double>(tile, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, ent, m, s, t, zt, alpha, stream);
    default: return cudaErrorInvalidValue;
  }
}

extern "C" cudaError_t mpo_cuda_sls_backward(const void* logits, int dtype, int64_t rows, int64_t cols,
                                              int64_t row_stride, int64_t vocab_start, const int64_t* ids,
                                              int64_t ignore_index, double inv_t, const void* lse,
                                              const void* entropy, const void* grad_logp, const void* grad_entropy,
                                              void* grad, int64_t grad_row_stride, cudaStream_t stream) {
  using namespace mpo_fast;
  if (rows == 0) return cudaSuccess;
  if (rows > 0x7fffffff || cols < 1 || row_stride < cols || grad_row_stride < cols) return cudaErrorInvalidValue;
  if (!grad_logp && !grad_entropy) return cudaErrorInvalidValue;  // nothing to differentiate: caller zero-fills
  if (grad_entropy && !entropy) return cudaErrorInvalidValue;
  switch (dtype) {
    case kFloat32: return launch_backward<float>(logits, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, grad_logp, grad_entropy, grad, grad_row_stride, stream);
    case kBFloat16: return launch_backward<__nv_bfloat16>(logits, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, grad_logp, grad_entropy, grad, grad_row_stride, stream);
    case kFloat16: return launch_backward<__half>(logits, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, grad_logp, grad_entropy, grad, grad_row_stride, stream);
    case kFloat64: return launch_backward<double>(logits, rows, cols, row_stride, vocab_start, ids, ignore_index, inv_t, lse, entropy, grad_logp, grad_entropy, grad, grad_row_stride, stream);
    default: return cudaErrorInvalidValue;
  }
}
