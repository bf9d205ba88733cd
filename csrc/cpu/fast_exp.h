// exp and exp(x) - 1 - x that GCC can vectorise without -ffast-math.
// glibc's expf is only declared SIMD-callable under -ffast-math, which would also break the inf/NaN
// handling the ops rely on (overflowing ratios, NaN propagation, isinf/isnan tests). This Cephes-style expf is
// plain arithmetic and bit moves, so an `omp simd` loop around it vectorises (and with it the rest of
// the loop body). Measured here (SSE2 baseline, 4 lanes): 1.96 ns/element vs 3.40 for glibc expf,
// max error 0.91 ulp over [-8, 8].
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

// Always inlined: a call left in a loop body (GCC's inliner gives up on the second expm1_minus_x in
// the policy-loss loop) stops that loop from vectorising.
#if defined(__GNUC__)
#define MPO_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define MPO_ALWAYS_INLINE inline
#endif

namespace mpo_fast {

MPO_ALWAYS_INLINE float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

// exp(x) for float, within ~1 ulp: x = n ln2 + r, |r| <= ln2 / 2, a degree-7 polynomial for exp(r),
// then 2^n applied in two halves so results down to the subnormal range stay right.
MPO_ALWAYS_INLINE float exp_fast(float x) {
  const float xc = x < -104.0f ? -104.0f : (x > 89.0f ? 89.0f : x);  // NaN passes through unchanged
  const float magic = 12582912.0f;                                    // 1.5 * 2^23: round to nearest
  const float nf = (xc * 1.44269504088896341f + magic) - magic;
  float r = xc - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  const int32_t n = static_cast<int32_t>(nf);  // in [-150, 128]
  const int32_t n1 = n >> 1;
  const int32_t n2 = n - n1;
  const float s1 = bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  const float s2 = bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  const float out = (y * s1) * s2;
  return x < -104.0f ? 0.0f : out;  // exp(-104) ~ 6.8e-46 already rounds to 0 in float
}

MPO_ALWAYS_INLINE double exp_fast(double x) { return std::exp(x); }

// exp(x) - 1 - x without the cancellation of the direct formula near 0 (the k3 estimator's core):
// a Taylor series where |x| is small (terms to x^11: truncation below 5e-9 relative for |x| < 1 in
// float, below 1e-21 for |x| < 0.05 in double), the direct formula elsewhere.
template <typename T>
MPO_ALWAYS_INLINE T expm1_minus_x_series(T x) {
  T p = T(1.0 / 39916800.0);  // 1 / 11!
  p = p * x + T(1.0 / 3628800.0);
  p = p * x + T(1.0 / 362880.0);
  p = p * x + T(1.0 / 40320.0);
  p = p * x + T(1.0 / 5040.0);
  p = p * x + T(1.0 / 720.0);
  p = p * x + T(1.0 / 120.0);
  p = p * x + T(1.0 / 24.0);
  p = p * x + T(1.0 / 6.0);
  p = p * x + T(0.5);
  return p * x * x;
}

// exp(x) - 1 - x given exp_x = exp(x) computed (or known) already: the series below the threshold,
// the direct formula above it. One compare, no &&: keeps callers' loops vectorisable.
template <typename T>
MPO_ALWAYS_INLINE T expm1_minus_x(T x, T exp_x) {
  const T small = sizeof(T) == 4 ? T(1.0) : T(0.05);
  return std::fabs(x) < small ? expm1_minus_x_series(x) : (exp_x - T(1)) - x;
}

template <typename T>
MPO_ALWAYS_INLINE T expm1_minus_x(T x) {
  return expm1_minus_x(x, exp_fast(x));
}

}  // namespace mpo_fast
