// C++ CPU selective log-softmax: log p(id), entropy and their gradient, one streaming pass per row.
//
// Each row is read once from memory in blocks of kBlock elements; each block's sum of e^(z - max)
// (and of e^(z - max)(z - max) for the entropy) is folded into the row's running statistics in
// double. No [N, V] temporary exists: the forward writes three floats per row, the backward writes
// the gradient row directly. The forward is compute-bound on this machine's AVX2 cores (an exp
// per element): ~0.40 ns per fp32 element per core (0.50 with the entropy), against ~0.25 ns for
// one core streaming the logits from memory (2 cores: ~0.17).
//
// The same two kernels serve fused_linear_logprob: `fold` merges a [rows, cols] tile of logits
// (vocabulary columns [vocab_start, vocab_start + cols)) into per-row running statistics (and can
// leave exp(z - running max) in the tile), and `backward` turns a tile into its gradient in place.
//
// Vectorisation without intrinsics: GCC vector extensions (8 x float), compiled twice, for the
// baseline ISA and for AVX2+FMA (chosen at run time), because the build passes no -march flag.
// exp is a polynomial 2^u that returns exactly 0 below 2^-127 (so -inf logits are zero-probability
// entries) and propagates NaN (so a NaN row gives NaN, and only that row).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "common/dtype.h"
#include "common/registry.h"

// The 8-lane helpers are always inlined into one ISA variant or the other, so the vector ABI
// note GCC prints for them (-Wpsabi) concerns no call that exists.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace py = pybind11;

namespace mpo_fast {
namespace {

#define MPO_INLINE inline __attribute__((always_inline))

typedef float f32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));

constexpr int kLanes = 8;
// 1024 elements per block: a block read twice (its max, then its sums: only until the row has a
// finite max) stays in L1 (4 KB fp32), the fp32 partial sums stay short (64 terms a lane), and the
// double-precision bookkeeping per block is < 0.2% of the work. 512 and 4096 measured the same.
constexpr int64_t kBlock = 1024;
constexpr float kInf = std::numeric_limits<float>::infinity();

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

MPO_INLINE f32x8 splat(float v) { return f32x8{v, v, v, v, v, v, v, v}; }
MPO_INLINE f32x8 as_f32(u32x8 v) { return __builtin_bit_cast(f32x8, v); }
MPO_INLINE f32x8 as_f32(i32x8 v) { return __builtin_bit_cast(f32x8, v); }
MPO_INLINE u32x8 as_u32(f32x8 v) { return __builtin_bit_cast(u32x8, v); }
MPO_INLINE i32x8 as_i32(f32x8 v) { return __builtin_bit_cast(i32x8, v); }

// ---- loads and stores, 8 lanes and 1 element ---------------------------------------------------
MPO_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
MPO_INLINE f32x8 load8(const BF16* p) {
  u16x8 h;
  std::memcpy(&h, p, sizeof(h));
  return as_f32(__builtin_convertvector(h, u32x8) << 16);
}
// Half -> float by rebiasing: (bits << 13) read as float times 2^112 is exact for normals and
// subnormals; exponent 31 (inf/NaN) gets the float exponent 255 instead.
MPO_INLINE f32x8 load8(const F16* p) {
  u16x8 h16;
  std::memcpy(&h16, p, sizeof(h16));
  const u32x8 h = __builtin_convertvector(h16, u32x8);
  const u32x8 em = (h & 0x7fffu) << 13;
  f32x8 f = as_f32(em) * 0x1p112f;
  f = (em >= 0x0f800000u) ? as_f32(em | 0x7f800000u) : f;
  return as_f32(as_u32(f) | ((h & 0x8000u) << 16));
}
MPO_INLINE float load1(const float* p) { return *p; }
MPO_INLINE float load1(const BF16* p) { return bf16_to_float(p->bits); }
MPO_INLINE float load1(const F16* p) { return fp16_to_float(p->bits); }

MPO_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40u);  // stay a (quiet) NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);  // round to nearest even
}
MPO_INLINE uint16_t float_to_fp16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u : 0u));
  if (x < 0x38800000u)  // below 2^-14: a half subnormal, in units of 2^-24 (nearbyint: ties to even)
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(std::fabs(f) * 0x1p24f)));
  uint32_t r = x - 0x38000000u;       // rebias the exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);     // round the mantissa to 10 bits, ties to even (carry -> inf)
  return static_cast<uint16_t>(sign | std::min(r >> 13, 0x7c00u));
}

MPO_INLINE void store8(float* p, f32x8 v) { std::memcpy(p, &v, sizeof(v)); }
MPO_INLINE void store8(BF16* p, f32x8 v) {
  const u32x8 u = as_u32(v);
  u32x8 r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  r = (v != v) ? ((u >> 16) | 0x40u) : r;
  const u16x8 h = __builtin_convertvector(r, u16x8);
  std::memcpy(p, &h, sizeof(h));
}
MPO_INLINE void store8(F16* p, f32x8 v) {  // fp16 training is rare: a scalar conversion is enough
  for (int k = 0; k < kLanes; ++k) p[k].bits = float_to_fp16(v[k]);
}
MPO_INLINE void store1(float* p, float v) { *p = v; }
MPO_INLINE void store1(BF16* p, float v) { p->bits = float_to_bf16(v); }
MPO_INLINE void store1(F16* p, float v) { p->bits = float_to_fp16(v); }

// exp(x) for x <= ~0 (every call here exponentiates z - max or z - lse), as 2^u with u = x log2(e):
// u = n + f, |f| <= 1/2, n from the 1.5 * 2^23 rounding trick (no float->int conversion), 2^f by a
// degree-6 polynomial (relative error 1.1e-7 in fp32), 2^n built in the exponent bits. 15 vector
// ops where a Cody-Waite exp takes ~20; the rounding of u costs |x| * 6e-8 relative, which only
// matters where e^x is already negligible against the row's largest terms.
// u is clamped at -127: n = -127 gives exponent bits 0, so the result is exactly 0 (subnormal
// results are flushed: relative to a row sum >= 1 they are nothing, and -inf must give 0).
// `u < -127 ? -127 : u` keeps NaN (the comparison is false), so a NaN row stays NaN.
MPO_INLINE f32x8 vexp(f32x8 x) {
  const f32x8 magic = splat(12582912.0f);
  f32x8 u = x * 1.44269504088896341f;
  u = (u < -127.0f) ? splat(-127.0f) : u;
  const f32x8 t = u + magic;
  const f32x8 f = u - (t - magic);
  f32x8 p = splat(1.5372982306871563e-4f);
  p = p * f + 1.3399908784776926e-3f;
  p = p * f + 9.618386626243591e-3f;
  p = p * f + 5.550328642129898e-2f;
  p = p * f + 2.4022647738456726e-1f;
  p = p * f + 6.931471824645996e-1f;
  p = p * f + 1.0f;
  const i32x8 scale = (as_i32(t) - as_i32(magic) + 127) << 23;
  return p * as_f32(scale);
}
MPO_INLINE float sexp(float x) {  // the same function for a tail element (lane 0 of a vector)
  return vexp(splat(x))[0];
}

MPO_INLINE float hmax(f32x8 v) {
  float m = v[0];
  for (int k = 1; k < kLanes; ++k) m = v[k] > m ? v[k] : m;
  return m;
}
MPO_INLINE double hsum(f32x8 v) {
  double s = 0;
  for (int k = 0; k < kLanes; ++k) s += v[k];
  return s;
}

// Running statistics of a row relative to its max m: s = sum e^(z-m), t = sum e^(z-m) (z-m).
// Then lse = m + log s and entropy = log s - t / s.
struct RowStats {
  double m, s, t;
};

// Merges a block's (shift, sb, tb) into (m, s, t). A block of only -inf adds nothing (sb == 0);
// NaN compares unequal to 0, so it falls through and poisons the row, which is what we want.
MPO_INLINE void combine(RowStats& acc, double shift, double sb, double tb) {
  if (sb == 0) return;
  if (acc.s == 0) {
    acc = {shift, sb, tb};
    return;
  }
  const double nm = std::max(acc.m, shift);
  const double fa = std::exp(acc.m - nm), fb = std::exp(shift - nm);
  acc.t = fa * (acc.t + (acc.m - nm) * acc.s) + fb * (tb + (shift - nm) * sb);
  acc.s = fa * acc.s + fb * sb;
  acc.m = nm;
}

// ---- the row kernels (float math; inlined into an ISA-specific wrapper below) ---------------
// Sums of one block relative to `shift`: sb = sum e^(z - shift), tb = sum e^(z - shift)(z - shift),
// and (when track_max) the block's max of z. e * d with e = 0 at d = -inf must be 0, not NaN.
template <typename In, bool ENT, bool TRACK_MAX>
MPO_INLINE void block_sums(const In* x, int64_t n, float inv_t, float shift, double* sb, double* tb, float* bmax) {
  f32x8 s0 = splat(0), s1 = splat(0), t0 = splat(0), t1 = splat(0);
  f32x8 mx0 = splat(-kInf), mx1 = splat(-kInf);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {  // two accumulators: independent chains
    const f32x8 z0 = load8(x + i) * inv_t, z1 = load8(x + i + kLanes) * inv_t;
    if (TRACK_MAX) {
      mx0 = z0 > mx0 ? z0 : mx0;
      mx1 = z1 > mx1 ? z1 : mx1;
    }
    const f32x8 d0 = z0 - shift, d1 = z1 - shift;
    const f32x8 e0 = vexp(d0), e1 = vexp(d1);
    s0 += e0;
    s1 += e1;
    if (ENT) {
      t0 += (e0 > 0) ? e0 * d0 : splat(0);
      t1 += (e1 > 0) ? e1 * d1 : splat(0);
    }
  }
  for (; i + kLanes <= n; i += kLanes) {
    const f32x8 z0 = load8(x + i) * inv_t;
    if (TRACK_MAX) mx0 = z0 > mx0 ? z0 : mx0;
    const f32x8 d0 = z0 - shift;
    const f32x8 e0 = vexp(d0);
    s0 += e0;
    if (ENT) t0 += (e0 > 0) ? e0 * d0 : splat(0);
  }
  double s = hsum(s0 + s1), t = ENT ? hsum(t0 + t1) : 0.0;
  float bm = TRACK_MAX ? hmax(mx0 > mx1 ? mx0 : mx1) : 0.0f;
  for (; i < n; ++i) {
    const float z = load1(x + i) * inv_t;
    if (TRACK_MAX) bm = std::max(bm, z);
    const float d = z - shift;
    const float e = sexp(d);
    s += e;
    if (ENT && e > 0) t += static_cast<double>(e) * d;
  }
  *sb = s;
  *tb = t;
  if (TRACK_MAX) *bmax = bm;
}

template <typename In>
MPO_INLINE float block_max(const In* x, int64_t n) {
  f32x8 mx0 = splat(-kInf), mx1 = splat(-kInf);
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
    const f32x8 a = load8(x + i), b = load8(x + i + kLanes);
    mx0 = a > mx0 ? a : mx0;
    mx1 = b > mx1 ? b : mx1;
  }
  for (; i + kLanes <= n; i += kLanes) {
    const f32x8 a = load8(x + i);
    mx0 = a > mx0 ? a : mx0;
  }
  float bm = hmax(mx0 > mx1 ? mx0 : mx1);
  for (; i < n; ++i) bm = std::max(bm, load1(x + i));  // NaN never wins a max; the sums catch it
  return bm;
}

// One row (or a tile's slice of it). Until something finite is seen, a block takes two passes
// (its max, then its sums relative to it). After that one pass suffices: the sums are taken
// relative to the running max, which later values may exceed; e^(z - shift) stays finite while
// z - shift < 64 (1024 x e^64 < FLT_MAX), and a block whose max jumps further is redone in two
// passes. The running max then moves up to the block's max, so the terms stay <= 1 as a rule.
template <typename In, bool ENT>
MPO_INLINE RowStats fold_row_body(const In* row, int64_t cols, float inv_t) {
  constexpr float kMaxJump = 64.0f;
  RowStats acc{-INFINITY, 0.0, 0.0};
  for (int64_t b0 = 0; b0 < cols; b0 += kBlock) {
    const int64_t n = std::min(kBlock, cols - b0);
    const In* x = row + b0;
    double sb, tb;
    if (acc.s > 0) {
      const float shift = static_cast<float>(acc.m);  // exact: a max of float values
      float bm;
      block_sums<In, ENT, true>(x, n, inv_t, shift, &sb, &tb, &bm);
      if (!(bm - shift > kMaxJump)) {  // NaN in the sums falls through here and poisons the row
        acc.s += sb;
        acc.t += tb;
        if (bm > shift) {  // move the reference up to the new max
          const double f = std::exp(acc.m - bm);
          acc.t = f * (acc.t + (acc.m - bm) * acc.s);
          acc.s *= f;
          acc.m = bm;
        }
        continue;
      }
    }
    float bm = block_max(x, n) * inv_t;  // inv_t > 0: the max of z is the max of x, scaled
    const float shift = bm == -kInf ? 0.0f : bm;
    block_sums<In, ENT, false>(x, n, inv_t, shift, &sb, &tb, nullptr);
    combine(acc, shift, sb, tb);
  }
  return acc;
}

// Gradient of gl * logp + gh * entropy w.r.t. one row of logits (vocabulary columns
// [0, cols) relative to the tile), written to `out` (may alias `row`: each element is read
// before it is written). local_target: the id's column in this tile, or -1 if it is elsewhere.
//   d logp / dz_j = [j == id] - p_j,   d entropy / dz_j = -p_j (log p_j + entropy),   dz = dx / T
template <typename In, bool LOGP, bool ENT>
MPO_INLINE void backward_row_body(const In* row, In* out, int64_t cols, int64_t local_target, float inv_t, float lse,
                                  float entropy, float gl, float gh) {
  const bool has_target = local_target >= 0 && local_target < cols;
  const float x_target = has_target ? load1(row + local_target) : 0.0f;  // before `out` overwrites it
  const float base = LOGP ? -gl : 0.0f;
  int64_t i = 0;
  for (; i + kLanes <= cols; i += kLanes) {
    const f32x8 d = load8(row + i) * inv_t - lse;  // log p
    const f32x8 p = vexp(d);
    f32x8 q = splat(base);
    if (ENT) q -= gh * (d + entropy);
    f32x8 g = p * q * inv_t;
    if (ENT) g = (p == 0) ? splat(0) : g;  // a -inf logit: (d + entropy) is -inf, p is 0: gradient 0
    store8(out + i, g);
  }
  for (; i < cols; ++i) {
    const float d = load1(row + i) * inv_t - lse;
    const float p = sexp(d);
    float q = base;
    if (ENT) q -= gh * (d + entropy);
    store1(out + i, (ENT && p == 0) ? 0.0f : p * q * inv_t);
  }
  if (has_target) {
    const float d = x_target * inv_t - lse;
    const float p = sexp(d);
    float q = base;
    if (ENT) q -= gh * (d + entropy);
    const float g = ((ENT && p == 0) ? 0.0f : p * q) + (LOGP ? gl : 0.0f);
    store1(out + local_target, g * inv_t);
  }
}

// Overwrites a tile row with e_j = exp(z_j - shift): the unnormalised probabilities relative to
// the row's running max, which fused_linear_logprob multiplies into E_p[W] for a frozen head.
template <typename In>
MPO_INLINE void exp_row_body(In* row, int64_t cols, float inv_t, float shift) {
  int64_t i = 0;
  for (; i + kLanes <= cols; i += kLanes) store8(row + i, vexp(load8(row + i) * inv_t - shift));
  for (; i < cols; ++i) store1(row + i, sexp(load1(row + i) * inv_t - shift));
}

// ---- float64: plain scalar double (tests and gradcheck use it; speed is not the point) -------
template <bool ENT>
RowStats fold_row_f64(const double* row, int64_t cols, double inv_t) {
  RowStats acc{-INFINITY, 0.0, 0.0};
  for (int64_t b0 = 0; b0 < cols; b0 += kBlock) {
    const int64_t n = std::min(kBlock, cols - b0);
    double bm = -INFINITY;
    for (int64_t i = 0; i < n; ++i) bm = std::max(bm, row[b0 + i]);
    bm *= inv_t;
    const double shift = bm == -INFINITY ? 0.0 : bm;
    double sb = 0, tb = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double d = row[b0 + i] * inv_t - shift;
      const double e = std::exp(d);
      sb += e;
      if (ENT && e > 0) tb += e * d;
    }
    combine(acc, shift, sb, tb);
  }
  return acc;
}

template <bool LOGP, bool ENT>
void backward_row_f64(const double* row, double* out, int64_t cols, int64_t local_target, double inv_t, double lse,
                      double entropy, double gl, double gh) {
  const bool has_target = local_target >= 0 && local_target < cols;
  const double x_target = has_target ? row[local_target] : 0.0;
  for (int64_t i = 0; i < cols; ++i) {
    const double d = row[i] * inv_t - lse;
    const double p = std::exp(d);
    double q = LOGP ? -gl : 0.0;
    if (ENT) q -= gh * (d + entropy);
    out[i] = (ENT && p == 0) ? 0.0 : p * q * inv_t;
  }
  if (has_target) {
    const double d = x_target * inv_t - lse;
    const double p = std::exp(d);
    double q = LOGP ? -gl : 0.0;
    if (ENT) q -= gh * (d + entropy);
    out[local_target] = (((ENT && p == 0) ? 0.0 : p * q) + (LOGP ? gl : 0.0)) * inv_t;
  }
}

// ---- ISA dispatch: the same bodies compiled for the baseline and for AVX2+FMA -----------------
template <typename In, bool ENT>
RowStats fold_row_base(const In* row, int64_t cols, float inv_t) {
  return fold_row_body<In, ENT>(row, cols, inv_t);
}
template <typename In, bool LOGP, bool ENT>
void backward_row_base(const In* row, In* out, int64_t cols, int64_t t, float inv_t, float lse, float ent, float gl,
                       float gh) {
  backward_row_body<In, LOGP, ENT>(row, out, cols, t, inv_t, lse, ent, gl, gh);
}

template <typename In>
void exp_row_base(In* row, int64_t cols, float inv_t, float shift) {
  exp_row_body<In>(row, cols, inv_t, shift);
}

#if defined(__x86_64__) || defined(__i386__)
#define MPO_HAVE_AVX2_VARIANT 1
template <typename In, bool ENT>
__attribute__((target("avx2,fma"))) RowStats fold_row_avx2(const In* row, int64_t cols, float inv_t) {
  return fold_row_body<In, ENT>(row, cols, inv_t);
}
template <typename In, bool LOGP, bool ENT>
__attribute__((target("avx2,fma"))) void backward_row_avx2(const In* row, In* out, int64_t cols, int64_t t, float inv_t,
                                                           float lse, float ent, float gl, float gh) {
  backward_row_body<In, LOGP, ENT>(row, out, cols, t, inv_t, lse, ent, gl, gh);
}
template <typename In>
__attribute__((target("avx2,fma"))) void exp_row_avx2(In* row, int64_t cols, float inv_t, float shift) {
  exp_row_body<In>(row, cols, inv_t, shift);
}
bool cpu_has_avx2() {
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
}
#endif

template <typename In>
using FoldFn = RowStats (*)(const In*, int64_t, float);
template <typename In>
using BackwardFn = void (*)(const In*, In*, int64_t, int64_t, float, float, float, float, float);

template <typename In>
using ExpFn = void (*)(In*, int64_t, float, float);

template <typename In>
ExpFn<In> pick_exp() {
#ifdef MPO_HAVE_AVX2_VARIANT
  if (cpu_has_avx2()) return &exp_row_avx2<In>;
#endif
  return &exp_row_base<In>;
}

template <typename In, bool ENT>
FoldFn<In> pick_fold() {
#ifdef MPO_HAVE_AVX2_VARIANT
  if (cpu_has_avx2()) return &fold_row_avx2<In, ENT>;
#endif
  return &fold_row_base<In, ENT>;
}
template <typename In, bool LOGP, bool ENT>
BackwardFn<In> pick_backward_t() {
#ifdef MPO_HAVE_AVX2_VARIANT
  if (cpu_has_avx2()) return &backward_row_avx2<In, LOGP, ENT>;
#endif
  return &backward_row_base<In, LOGP, ENT>;
}
template <typename In>
BackwardFn<In> pick_backward(bool logp, bool ent) {
  if (logp && ent) return pick_backward_t<In, true, true>();
  if (logp) return pick_backward_t<In, true, false>();
  if (ent) return pick_backward_t<In, false, true>();
  return pick_backward_t<In, false, false>();
}

// ---- whole-row operations over many rows (OpenMP over rows) ----------------------------------
struct Geometry {
  int64_t rows, cols, row_stride;
};

bool target_of(const int64_t* ids, int64_t r, int64_t ignore_index, int64_t* id) {
  *id = ids[r];
  return *id != ignore_index;
}

// Forward over full rows: logp, entropy (optional), lse. Stats type S: float (double for fp64).
template <typename In, typename S>
void forward_rows(const In* logits, const Geometry& g, const int64_t* ids, int64_t ignore_index, double inv_t,
                  bool with_entropy, S* logp, S* entropy, S* lse) {
  FoldFn<In> fold = nullptr;
  if constexpr (!std::is_same_v<In, double>) fold = with_entropy ? pick_fold<In, true>() : pick_fold<In, false>();
#ifdef MPO_FAST_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 4) if (g.rows * g.cols > (1 << 16))
#endif
  for (int64_t r = 0; r < g.rows; ++r) {
    int64_t id;
    if (!target_of(ids, r, ignore_index, &id)) {
      logp[r] = 0;
      lse[r] = 0;
      if (with_entropy) entropy[r] = 0;
      continue;
    }
    const In* row = logits + r * g.row_stride;
    RowStats st;
    double zt;
    if constexpr (std::is_same_v<In, double>) {
      st = with_entropy ? fold_row_f64<true>(row, g.cols, inv_t) : fold_row_f64<false>(row, g.cols, inv_t);
      zt = (id >= 0 && id < g.cols) ? row[id] * inv_t : NAN;
    } else {
      st = fold(row, g.cols, static_cast<float>(inv_t));
      zt = (id >= 0 && id < g.cols) ? static_cast<double>(load1(row + id) * static_cast<float>(inv_t)) : NAN;
    }
    const double log_s = std::log(st.s);
    const double l = st.m + log_s;
    lse[r] = static_cast<S>(l);
    logp[r] = static_cast<S>(zt - l);
    if (with_entropy) entropy[r] = static_cast<S>(log_s - st.t / st.s);
  }
}

// Folds a tile (columns [vocab_start, vocab_start + cols) of the vocabulary) into per-row running
// (m, s, t) and the target logit zt (written when the id falls in this tile).
// With `alpha` non-null the tile row is then overwritten with exp(z - m_new) and alpha[r] gets
// exp(m_old - m_new), the factor that rescales what was accumulated against the old max.
template <typename In, typename S>
void fold_rows(In* tile, const Geometry& g, int64_t vocab_start, const int64_t* ids, int64_t ignore_index,
               double inv_t, bool with_entropy, S* m, S* s, S* t, S* zt, S* alpha) {
  FoldFn<In> fold = nullptr;
  ExpFn<In> write_exp = nullptr;
  if constexpr (!std::is_same_v<In, double>) {
    fold = with_entropy ? pick_fold<In, true>() : pick_fold<In, false>();
    write_exp = pick_exp<In>();
  }
#ifdef MPO_FAST_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 4) if (g.rows * g.cols > (1 << 16))
#endif
  for (int64_t r = 0; r < g.rows; ++r) {
    int64_t id;
    In* row = tile + r * g.row_stride;
    if (!target_of(ids, r, ignore_index, &id)) {
      if (alpha) {  // keeps whatever was accumulated for this row (nothing) and adds nothing
        alpha[r] = 1;
        std::memset(static_cast<void*>(row), 0, sizeof(In) * g.cols);
      }
      continue;
    }
    RowStats chunk;
    if constexpr (std::is_same_v<In, double>) {
      chunk = with_entropy ? fold_row_f64<true>(row, g.cols, inv_t) : fold_row_f64<false>(row, g.cols, inv_t);
    } else {
      chunk = fold(row, g.cols, static_cast<float>(inv_t));
    }
    const RowStats old{static_cast<double>(m[r]), static_cast<double>(s[r]), static_cast<double>(t[r])};
    RowStats acc = old;
    combine(acc, chunk.m, chunk.s, chunk.t);
    m[r] = static_cast<S>(acc.m);  // exact: every shift is the max of float values, or 0
    s[r] = static_cast<S>(acc.s);
    t[r] = static_cast<S>(acc.t);
    const int64_t local = id - vocab_start;
    if (local >= 0 && local < g.cols) {
      if constexpr (std::is_same_v<In, double>)
        zt[r] = row[local] * inv_t;
      else
        zt[r] = static_cast<S>(load1(row + local) * static_cast<float>(inv_t));
    }
    if (alpha) {
      const double shift = acc.m == -INFINITY ? 0.0 : acc.m;  // nothing finite yet: every e is 0
      alpha[r] = static_cast<S>(old.s == 0 ? 0.0 : std::exp(old.m - acc.m));
      if constexpr (std::is_same_v<In, double>) {
        for (int64_t j = 0; j < g.cols; ++j) row[j] = std::exp(row[j] * inv_t - shift);
      } else {
        write_exp(row, g.cols, static_cast<float>(inv_t), static_cast<float>(shift));
      }
    }
  }
}

template <typename In, typename S>
void backward_rows(const In* logits, const Geometry& g, int64_t vocab_start, const int64_t* ids, int64_t ignore_index,
                   double inv_t, const S* lse, const S* entropy, const S* grad_logp, const S* grad_entropy, In* grad,
                   int64_t grad_row_stride) {
  const bool has_l = grad_logp != nullptr, has_e = grad_entropy != nullptr;
  BackwardFn<In> bwd = nullptr;
  if constexpr (!std::is_same_v<In, double>) bwd = pick_backward<In>(has_l, has_e);
#ifdef MPO_FAST_HAVE_OPENMP
#pragma omp parallel for schedule(dynamic, 4) if (g.rows * g.cols > (1 << 16))
#endif
  for (int64_t r = 0; r < g.rows; ++r) {
    In* out = grad + r * grad_row_stride;
    int64_t id;
    if (!target_of(ids, r, ignore_index, &id)) {
      std::memset(static_cast<void*>(out), 0, sizeof(In) * g.cols);  // +0.0 in every float format
      continue;
    }
    const In* row = logits + r * g.row_stride;
    const int64_t local = (id >= 0) ? id - vocab_start : -1;
    const double gl = has_l ? static_cast<double>(grad_logp[r]) : 0.0;
    const double gh = has_e ? static_cast<double>(grad_entropy[r]) : 0.0;
    const double ent = has_e ? static_cast<double>(entropy[r]) : 0.0;
    if constexpr (std::is_same_v<In, double>) {
      if (has_l && has_e) backward_row_f64<true, true>(row, out, g.cols, local, inv_t, lse[r], ent, gl, gh);
      else if (has_l) backward_row_f64<true, false>(row, out, g.cols, local, inv_t, lse[r], ent, gl, gh);
      else if (has_e) backward_row_f64<false, true>(row, out, g.cols, local, inv_t, lse[r], ent, gl, gh);
      else backward_row_f64<false, false>(row, out, g.cols, local, inv_t, lse[r], ent, gl, gh);
    } else {
      bwd(row, out, g.cols, local, static_cast<float>(inv_t), static_cast<float>(lse[r]), static_cast<float>(ent),
          static_cast<float>(gl), static_cast<float>(gh));
    }
  }
}

// A fresh [N, V] gradient buffer is first touched by the backward: with 4 KB pages that is one
// page fault per 4 KB, ~1.1 s for the 1.2 GB gradient at N=2048, V=151936 on this machine
// (torch.empty + fill: 1312 ms; with 2 MB pages: 203 ms; refilling a touched buffer: 172 ms).
// So ask for transparent huge pages on the buffer's 2 MB-aligned interior, as torch does for its
// own allocations under THP_MEM_ALLOC_ENABLE=1. Advice only: where it is refused nothing changes.
void advise_huge_pages(void* p, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < (uintptr_t(64) << 20)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// ---- Python-facing entry points (data pointers, sizes, dtype codes) ------------------------
Geometry check_geometry(int dtype, int64_t rows, int64_t cols, int64_t row_stride, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64 && dtype != kBFloat16 && dtype != kFloat16)
    throw std::invalid_argument(std::string(what) + ": dtype code " + std::to_string(dtype) +
                                " is not float32/float64/bfloat16/float16");
  if (rows < 0 || cols < 1 || row_stride < cols)
    throw std::invalid_argument(std::string(what) + ": need rows >= 0, cols >= 1 and row_stride >= cols, got rows=" +
                                std::to_string(rows) + " cols=" + std::to_string(cols) +
                                " row_stride=" + std::to_string(row_stride));
  return {rows, cols, row_stride};
}

template <typename F>
void by_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(static_cast<float*>(nullptr), static_cast<float*>(nullptr)); break;
    case kBFloat16: f(static_cast<BF16*>(nullptr), static_cast<float*>(nullptr)); break;
    case kFloat16: f(static_cast<F16*>(nullptr), static_cast<float*>(nullptr)); break;
    case kFloat64: f(static_cast<double*>(nullptr), static_cast<double*>(nullptr)); break;
    default: throw std::invalid_argument("unsupported dtype code " + std::to_string(dtype));
  }
}

void sls_forward(uintptr_t logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, uintptr_t ids,
                 int64_t ignore_index, double inv_t, bool with_entropy, uintptr_t logp, uintptr_t entropy,
                 uintptr_t lse) {
  const Geometry g = check_geometry(dtype, rows, cols, row_stride, "selective_log_softmax_forward: logits");
  if (with_entropy && !entropy) throw std::invalid_argument("selective_log_softmax_forward: entropy pointer is null");
  py::gil_scoped_release release;
  by_dtype(dtype, [&](auto* in_tag, auto* s_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    using S = std::remove_pointer_t<decltype(s_tag)>;
    forward_rows<In, S>(reinterpret_cast<const In*>(logits), g, reinterpret_cast<const int64_t*>(ids), ignore_index,
                        inv_t, with_entropy, reinterpret_cast<S*>(logp), reinterpret_cast<S*>(entropy),
                        reinterpret_cast<S*>(lse));
  });
}

void sls_fold(uintptr_t tile, int dtype, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
              uintptr_t ids, int64_t ignore_index, double inv_t, bool with_entropy, uintptr_t m, uintptr_t s,
              uintptr_t t, uintptr_t zt, uintptr_t alpha) {
  const Geometry g = check_geometry(dtype, rows, cols, row_stride, "selective_log_softmax_fold: tile");
  py::gil_scoped_release release;
  by_dtype(dtype, [&](auto* in_tag, auto* s_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    using S = std::remove_pointer_t<decltype(s_tag)>;
    fold_rows<In, S>(reinterpret_cast<In*>(tile), g, vocab_start, reinterpret_cast<const int64_t*>(ids),
                     ignore_index, inv_t, with_entropy, reinterpret_cast<S*>(m), reinterpret_cast<S*>(s),
                     reinterpret_cast<S*>(t), reinterpret_cast<S*>(zt), reinterpret_cast<S*>(alpha));
  });
}

void sls_backward(uintptr_t logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
                  uintptr_t ids, int64_t ignore_index, double inv_t, uintptr_t lse, uintptr_t entropy,
                  uintptr_t grad_logp, uintptr_t grad_entropy, uintptr_t grad, int64_t grad_row_stride) {
  const Geometry g = check_geometry(dtype, rows, cols, row_stride, "selective_log_softmax_backward: logits");
  if (grad_row_stride < cols) throw std::invalid_argument("selective_log_softmax_backward: grad_row_stride < cols");
  if (grad_entropy && !entropy)
    throw std::invalid_argument("selective_log_softmax_backward: an entropy gradient needs the forward's entropy");
  py::gil_scoped_release release;
  if (grad != logits) {  // a new buffer (in place, the fused op's tiles, is already resident)
    const size_t elem = dtype == kFloat64 ? 8 : dtype == kFloat32 ? 4 : 2;
    advise_huge_pages(reinterpret_cast<void*>(grad), static_cast<size_t>(rows) * grad_row_stride * elem);
  }
  by_dtype(dtype, [&](auto* in_tag, auto* s_tag) {
    using In = std::remove_pointer_t<decltype(in_tag)>;
    using S = std::remove_pointer_t<decltype(s_tag)>;
    backward_rows<In, S>(reinterpret_cast<const In*>(logits), g, vocab_start, reinterpret_cast<const int64_t*>(ids),
                         ignore_index, inv_t, reinterpret_cast<const S*>(lse), reinterpret_cast<const S*>(entropy),
                         reinterpret_cast<const S*>(grad_logp), reinterpret_cast<const S*>(grad_entropy),
                         reinterpret_cast<In*>(grad), grad_row_stride);
  });
}

}  // namespace
}  // namespace mpo_fast

MPO_FAST_REGISTER(selective_log_softmax) {
  m.def("selective_log_softmax_forward", &mpo_fast::sls_forward, py::arg("logits_ptr"), py::arg("dtype"),
        py::arg("rows"), py::arg("cols"), py::arg("row_stride"), py::arg("ids_ptr"), py::arg("ignore_index"),
        py::arg("inv_temperature"), py::arg("with_entropy"), py::arg("logp_ptr"), py::arg("entropy_ptr"),
        py::arg("lse_ptr"),
        "Per row: logp = z[id] - lse, entropy, lse with z = logits * inv_temperature. ids: int64; outputs float32 "
        "(float64 for float64 logits); ignored rows get 0. Logits rows: unit column stride, row_stride elements.");
  m.def("selective_log_softmax_fold", &mpo_fast::sls_fold, py::arg("tile_ptr"), py::arg("dtype"), py::arg("rows"),
        py::arg("cols"), py::arg("row_stride"), py::arg("vocab_start"), py::arg("ids_ptr"), py::arg("ignore_index"),
        py::arg("inv_temperature"), py::arg("with_entropy"), py::arg("m_ptr"), py::arg("s_ptr"), py::arg("t_ptr"),
        py::arg("zt_ptr"), py::arg("alpha_ptr"),
        "Merge a logits tile (vocab columns [vocab_start, vocab_start + cols)) into running per-row max m, "
        "sum s = sum e^(z-m), t = sum e^(z-m)(z-m) and the target logit zt (float32; float64 for float64). "
        "alpha_ptr non-zero: also overwrite the tile with exp(z - m_new) and write alpha = exp(m_old - m_new).");
  m.def("selective_log_softmax_backward", &mpo_fast::sls_backward, py::arg("logits_ptr"), py::arg("dtype"),
        py::arg("rows"), py::arg("cols"), py::arg("row_stride"), py::arg("vocab_start"), py::arg("ids_ptr"),
        py::arg("ignore_index"), py::arg("inv_temperature"), py::arg("lse_ptr"), py::arg("entropy_ptr"),
        py::arg("grad_logp_ptr"), py::arg("grad_entropy_ptr"), py::arg("grad_ptr"), py::arg("grad_row_stride"),
        "Gradient w.r.t. logits (in their dtype) of sum grad_logp * logp + grad_entropy * entropy. grad may alias "
        "logits (in place). A null grad_* pointer means that gradient is zero.");
}
