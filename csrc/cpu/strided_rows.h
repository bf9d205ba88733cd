// Row-chunk loading and storing for the C++ CPU ops that take [B, T] tensors of any float dtype and
// any strides (policy_loss, gae): each input arrives as (data_ptr, dtype code, stride_b, stride_t) in
// elements, so slices like logp[:, :-1] and broadcast advantages (stride_t = 0) need no copy.
// A chunk of one row is converted into a dense Acc buffer with the dtype switch outside the element
// loop, so the math loops that follow see plain arrays and vectorise.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common/dtype.h"

#define MPO_STR_(...) #__VA_ARGS__
#ifdef MPO_FAST_HAVE_OPENMP
#define MPO_OMP(...) _Pragma(MPO_STR_(omp __VA_ARGS__))
#else
#define MPO_OMP(...)
#endif

namespace mpo_fast {

// (data_ptr, dtype code, stride_b, stride_t): what Python hands over for one [B, T] tensor.
using RowsArg = std::tuple<uintptr_t, int, int64_t, int64_t>;

struct Rows {
  const void* ptr = nullptr;
  int dtype = kFloat32;
  int64_t sb = 0, st = 0;

  bool present() const { return ptr != nullptr; }

  static Rows from(const RowsArg& a, const char* what, bool allow_bool) {
    Rows r{reinterpret_cast<const void*>(std::get<0>(a)), std::get<1>(a), std::get<2>(a), std::get<3>(a)};
    if (r.ptr == nullptr) return r;
    const bool ok = r.dtype == kFloat32 || r.dtype == kFloat64 || r.dtype == kBFloat16 || r.dtype == kFloat16 ||
                    (allow_bool && r.dtype == kBool);
    if (!ok) throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(r.dtype));
    return r;
  }
};

template <typename Src, typename Acc, typename Conv>
inline void gather_chunk(const Src* src, int64_t st, int64_t n, Acc* dst, Conv conv) {
  if (st == 1) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(conv(src[i]));
  } else if (st == 0) {
    const Acc v = static_cast<Acc>(conv(src[0]));
    for (int64_t i = 0; i < n; ++i) dst[i] = v;
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<Acc>(conv(src[i * st]));
  }
}

inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Elements [t0, t0 + n) of row b, converted to Acc (bool -> 0 / 1).
template <typename Acc>
inline void load_row_chunk(const Rows& in, int64_t b, int64_t t0, int64_t n, Acc* dst) {
  const int64_t off = b * in.sb + t0 * in.st;
  switch (in.dtype) {
    case kFloat32:
      gather_chunk(static_cast<const float*>(in.ptr) + off, in.st, n, dst, [](float v) { return v; });
      break;
    case kFloat64:
      gather_chunk(static_cast<const double*>(in.ptr) + off, in.st, n, dst, [](double v) { return v; });
      break;
    case kBFloat16:
      gather_chunk(static_cast<const uint16_t*>(in.ptr) + off, in.st, n, dst, bf16_bits_to_float);
      break;
    case kFloat16:
      gather_chunk(static_cast<const uint16_t*>(in.ptr) + off, in.st, n, dst, fp16_to_float);
      break;
    case kBool:
      gather_chunk(static_cast<const uint8_t*>(in.ptr) + off, in.st, n, dst,
                   [](uint8_t v) { return v ? 1.0f : 0.0f; });
      break;
    default:
      break;  // rejected in Rows::from
  }
}

// float -> bfloat16 bits, round to nearest even (as torch), NaN kept quiet.
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  x += 0x7FFFu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

// float -> IEEE half bits, round to nearest even, overflow to inf, subnormals kept.
inline uint16_t float_to_fp16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t absx = x & 0x7FFFFFFFu;
  if (absx >= 0x7F800000u) return static_cast<uint16_t>(sign | (absx > 0x7F800000u ? 0x7E00u : 0x7C00u));
  if (absx >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // >= 65520 rounds to inf
  if (absx < 0x38800000u) {                                                // below 2^-14: subnormal half
    float v;
    std::memcpy(&v, &absx, sizeof(v));
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(v * 16777216.0f)));
  }
  uint32_t h = (((absx >> 23) - 112u) << 10) | ((absx & 0x7FFFFFu) >> 13);
  const uint32_t rem = absx & 0x1FFFu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is correct
  return static_cast<uint16_t>(sign | h);
}

// Writes n Acc values as `dtype` (float32, float64, bfloat16, float16) to a dense destination.
template <typename Acc>
inline void store_chunk(void* dst, int dtype, int64_t off, int64_t n, const Acc* src) {
  switch (dtype) {
    case kFloat32: {
      float* d = static_cast<float*>(dst) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(src[i]);
      break;
    }
    case kFloat64: {
      double* d = static_cast<double*>(dst) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<double>(src[i]);
      break;
    }
    case kBFloat16: {
      uint16_t* d = static_cast<uint16_t*>(dst) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16_bits(static_cast<float>(src[i]));
      break;
    }
    case kFloat16: {
      uint16_t* d = static_cast<uint16_t*>(dst) + off;
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_fp16_bits(static_cast<float>(src[i]));
      break;
    }
    default:
      throw std::invalid_argument("store_chunk: unsupported output dtype code " + std::to_string(dtype));
  }
}

}  // namespace mpo_fast
