// dtype codes shared with Python (mpo_fast/_native.py: DTYPE_CODES). Keep both in sync.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mpo_fast {
enum DType : int { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3, kInt32 = 4, kInt64 = 5, kBool = 6, kInt8 = 7 };

inline float bf16_to_float(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// IEEE half -> float by hand (no F16C dependency): subnormals, inf and NaN kept.
inline float fp16_to_float(uint16_t h) {
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do { man <<= 1; ++e; } while ((man & 0x400u) == 0);
      bits = sign | ((127 - 15 - e) << 23) | ((man & 0x3FFu) << 13);
    }
  } else if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Reads element i of a floating buffer of the given dtype as double.
inline double load_as_double(const void* p, int dtype, int64_t i) {
  switch (dtype) {
    case kFloat32: return static_cast<const float*>(p)[i];
    case kFloat64: return static_cast<const double*>(p)[i];
    case kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case kFloat16: return fp16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return 0.0;
  }
}

inline void check_float_dtype(int dtype, const char* what) {
  if (dtype != kFloat32 && dtype != kFloat64 && dtype != kBFloat16 && dtype != kFloat16)
    throw std::invalid_argument(std::string(what) + ": unsupported dtype code " + std::to_string(dtype));
}
}  // namespace mpo_fast
