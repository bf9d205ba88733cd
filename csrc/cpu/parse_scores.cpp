// C++ judge-score parser (grammar: mpo_fast/parsing/spec.py). Hand-written byte scanning; nothing is
// evaluated. Texts are read in place from the Python objects (str's cached UTF-8, bytes' buffer)
// with the GIL released, threads splitting the batch.
#include "parse_scores.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <stdexcept>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <new>
#include <thread>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <pybind11/stl.h>

#include "common/registry.h"

namespace py = pybind11;

namespace mpo_fast {
namespace parse {
namespace {

constexpr size_t npos = static_cast<size_t>(-1);

// ---- byte search ---------------------------------------------------------------------------------
// Needle search filtered on the needle's first and last bytes, 16 or 32 positions at a time (the
// "SIMD-friendly Karp-Rabin" idea): a tag's first and last bytes ('<', '>') rarely sit m-1 bytes
// apart in prose, so this runs at memchr speed. AVX2 is used when the CPU has it (checked once at
// run time), so the module still loads on any x86-64.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MPO_FAST_AVX2_DISPATCH 1
#include <immintrin.h>

__attribute__((target("avx2"))) size_t needle_avx2(const uint8_t* h, size_t n, size_t i, const uint8_t* nd, size_t m) noexcept {
  const __m256i vf = _mm256_set1_epi8(static_cast<char>(nd[0]));
  const __m256i vl = _mm256_set1_epi8(static_cast<char>(nd[m - 1]));
  for (; i + m - 1 + 32 <= n; i += 32) {
    const __m256i bf = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i));
    const __m256i bl = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i + m - 1));
    unsigned mask = static_cast<unsigned>(_mm256_movemask_epi8(_mm256_and_si256(_mm256_cmpeq_epi8(bf, vf), _mm256_cmpeq_epi8(bl, vl))));
    while (mask) {
      const unsigned bit = static_cast<unsigned>(__builtin_ctz(mask));
      if (std::memcmp(h + i + bit + 1, nd + 1, m - 2) == 0) return i + bit;
      mask &= mask - 1;
    }
  }
  return i | (size_t(1) << 63);  // not found in the 32-byte blocks: the caller finishes from i
}

__attribute__((target("avx2"))) size_t separator_avx2(const uint8_t* h, size_t n, size_t i) noexcept {
  const __m256i c1 = _mm256_set1_epi8(':'), c2 = _mm256_set1_epi8('='), c3 = _mm256_set1_epi8(static_cast<char>(0xEF));
  for (; i + 32 <= n; i += 32) {
    const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + i));
    const __m256i hit = _mm256_or_si256(_mm256_or_si256(_mm256_cmpeq_epi8(b, c1), _mm256_cmpeq_epi8(b, c2)), _mm256_cmpeq_epi8(b, c3));
    const unsigned mask = static_cast<unsigned>(_mm256_movemask_epi8(hit));
    if (mask) return i + static_cast<size_t>(__builtin_ctz(mask));
  }
  return i | (size_t(1) << 63);
}

bool cpu_has_avx2() noexcept {
  static const bool yes = __builtin_cpu_supports("avx2");
  return yes;
}
#endif

constexpr size_t kResume = size_t(1) << 63;  // flag: "not found yet, continue from the low bits"

size_t find_needle(const uint8_t* h, size_t n, size_t from, const std::string& needle) noexcept {
  const size_t m = needle.size();
  const auto* nd = reinterpret_cast<const uint8_t*>(needle.data());
  if (m == 0 || n < m || from > n - m) return npos;
  if (m == 1) {
    const void* p = std::memchr(h + from, nd[0], n - from);
    return p ? static_cast<size_t>(static_cast<const uint8_t*>(p) - h) : npos;
  }
  size_t i = from;
#ifdef MPO_FAST_AVX2_DISPATCH
  if (cpu_has_avx2()) {
    const size_t r = needle_avx2(h, n, i, nd, m);
    if (!(r & kResume)) return r;
    i = r & ~kResume;
  }
#endif
#if defined(__SSE2__)
  const __m128i vf = _mm_set1_epi8(static_cast<char>(nd[0]));
  const __m128i vl = _mm_set1_epi8(static_cast<char>(nd[m - 1]));
  for (; i + m - 1 + 16 <= n; i += 16) {
    const __m128i bf = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    const __m128i bl = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i + m - 1));
    unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(_mm_and_si128(_mm_cmpeq_epi8(bf, vf), _mm_cmpeq_epi8(bl, vl))));
    while (mask) {
      const unsigned bit = static_cast<unsigned>(__builtin_ctz(mask));
      if (std::memcmp(h + i + bit + 1, nd + 1, m - 2) == 0) return i + bit;
      mask &= mask - 1;
    }
  }
#endif
  for (; i + m <= n; ++i)
    if (h[i] == nd[0] && h[i + m - 1] == nd[m - 1] && std::memcmp(h + i + 1, nd + 1, m - 2) == 0) return i;
  return npos;
}

// Next byte that can end a key-value key: ':' '=' or 0xEF (lead of the full-width colon EF BC 9A).
size_t find_separator(const uint8_t* h, size_t n, size_t from) noexcept {
  size_t i = from;
#ifdef MPO_FAST_AVX2_DISPATCH
  if (cpu_has_avx2()) {
    const size_t r = separator_avx2(h, n, i);
    if (!(r & kResume)) return r;
    i = r & ~kResume;
  }
#endif
#if defined(__SSE2__)
  const __m128i c1 = _mm_set1_epi8(':'), c2 = _mm_set1_epi8('='), c3 = _mm_set1_epi8(static_cast<char>(0xEF));
  for (; i + 16 <= n; i += 16) {
    const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
    const __m128i hit = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(b, c1), _mm_cmpeq_epi8(b, c2)), _mm_cmpeq_epi8(b, c3));
    const unsigned mask = static_cast<unsigned>(_mm_movemask_epi8(hit));
    if (mask) return i + static_cast<size_t>(__builtin_ctz(mask));
  }
#endif
  for (; i < n; ++i)
    if (h[i] == ':' || h[i] == '=' || h[i] == 0xEF) return i;
  return npos;
}

// ---- symbols -------------------------------------------------------------------------------------
// One symbol: its ASCII meaning (0x80 for "any other byte") and how many bytes it spans.
struct Sym {
  uint8_t c;
  uint8_t len;
};

inline Sym read_sym(const uint8_t* p, const uint8_t* end) noexcept {
  const uint8_t b = p[0];
  if (b < 0x80) return {b, 1};
  const ptrdiff_t left = end - p;
  if (b == 0xEF && left >= 3 && p[1] == 0xBC) {
    const uint8_t c = p[2];
    if (c >= 0x90 && c <= 0x99) return {static_cast<uint8_t>('0' + (c - 0x90)), 3};
    switch (c) {
      case 0x8B: return {'+', 3};
      case 0x8D: return {'-', 3};
      case 0x8E: return {'.', 3};
      case 0x8F: return {'/', 3};
      case 0x9A: return {':', 3};
      default: break;
    }
  } else if (b == 0xE2 && left >= 3 && p[1] == 0x88 && p[2] == 0x92) {
    return {'-', 3};
  } else if (b == 0xC2 && left >= 2 && p[1] == 0xA0) {
    return {' ', 2};
  } else if (b == 0xE3 && left >= 3 && p[1] == 0x80 && p[2] == 0x80) {
    return {' ', 3};
  }
  return {0x80, 1};
}

inline bool is_ws(uint8_t c) noexcept { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
inline bool is_digit(uint8_t c) noexcept { return c >= '0' && c <= '9'; }
inline bool is_alpha(uint8_t c) noexcept { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
inline bool is_word(uint8_t c) noexcept { return is_alpha(c) || is_digit(c) || c == '_'; }
inline uint8_t lower(uint8_t c) noexcept { return (c >= 'A' && c <= 'Z') ? static_cast<uint8_t>(c + 32) : c; }

struct Cursor {
  const uint8_t* p;
  const uint8_t* end;
  bool eof() const noexcept { return p >= end; }
  Sym peek() const noexcept { return read_sym(p, end); }
  bool at(uint8_t c) const noexcept { return !eof() && peek().c == c; }
  void skip_ws() noexcept {
    while (!eof()) {
      const Sym s = peek();
      if (!is_ws(s.c)) return;
      p += s.len;
    }
  }
  bool starts_with(const char* lit) const noexcept {
    const size_t m = std::strlen(lit);
    return static_cast<size_t>(end - p) >= m && std::memcmp(p, lit, m) == 0;
  }
};

// ---- numbers -------------------------------------------------------------------------------------
// A number literal read symbol by symbol (full-width forms already mapped): at most kDigitCap
// digits, so its value is M / 10^f with M < 2^53 and 10^f exact, and one division rounds it
// correctly: the same double as Python's float() and the GPU kernel, without a string round trip.
struct Literal {
  uint64_t mantissa = 0;  // all digits, as an integer
  int digits = 0;
  int frac_digits = 0;
  bool negative = false;
  bool in_fraction = false;
  bool frac_nonzero = false;
  // false when the literal would exceed kDigitCap digits
  bool push_digit(uint8_t c) noexcept {
    if (digits >= kDigitCap) return false;
    ++digits;
    mantissa = mantissa * 10 + static_cast<uint64_t>(c - '0');
    if (in_fraction) {
      ++frac_digits;
      if (c != '0') frac_nonzero = true;
    }
    return true;
  }
  double value() const noexcept {
    static constexpr double kPow10[kDigitCap + 1] = {1e0, 1e1, 1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                                     1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15};
    const double v = static_cast<double>(mantissa) / kPow10[frac_digits];
    return negative ? -v : v;
  }
};

enum class Read { kOk, kNone, kTooLong };

// Whether a mantissa starts here: a digit, or '.' followed by a digit.
bool mant_starts(const Cursor& c) noexcept {
  if (c.eof()) return false;
  const Sym s = c.peek();
  if (is_digit(s.c)) return true;
  if (s.c != '.') return false;
  Cursor d{c.p + s.len, c.end};
  return !d.eof() && is_digit(d.peek().c);
}

// MANT := D+ ('.' D+)? | '.' D+, appended to lit (which may already hold a sign).
Read read_mant(Cursor& c, Literal& lit) noexcept {
  if (!mant_starts(c)) return Read::kNone;
  while (!c.eof()) {
    const Sym s = c.peek();
    if (!is_digit(s.c)) break;
    if (!lit.push_digit(s.c)) return Read::kTooLong;
    c.p += s.len;
  }
  if (mant_starts(c) && c.peek().c == '.') {  // '.' followed by a digit
    lit.in_fraction = true;
    c.p += c.peek().len;
    while (!c.eof()) {
      const Sym s = c.peek();
      if (!is_digit(s.c)) break;
      if (!lit.push_digit(s.c)) return Read::kTooLong;
      c.p += s.len;
    }
  }
  return Read::kOk;
}

// A candidate before its item is known: the number(s) read, or the status that ended it.
struct Cand {
  int8_t status = kMalformed;  // kOk: a (and b when has_den) hold the literals' values
  bool has_den = false;
  bool direct = false;  // value is final (a verdict label): no fraction or range handling
  double a = 0, b = 0;
  int64_t span_begin = -1, span_end = -1;
};

Cand make(int8_t status, int64_t sb = -1, int64_t se = -1) noexcept {
  Cand c;
  c.status = status;
  c.span_begin = sb;
  c.span_end = se;
  return c;
}

// Item-independent checks of a read number, in the grammar's order (integer digits, '/' rules).
Cand number_cand(const Literal& num, const Literal* den, const Spec& spec) noexcept {
  if (spec.integer && (num.frac_nonzero || (den && den->frac_nonzero))) return make(kMalformed);
  Cand c;
  c.status = kOk;
  c.a = num.value();
  if (den) {
    if (spec.fractions == kReject) return make(kMalformed);
    c.b = den->value();
    if (c.b == 0.0) return make(kMalformed);
    c.has_den = true;
  }
  return c;
}

// The candidate's final status and value for item i (fraction scaling and range are per item).
void finalize(const Cand& c, const Spec& spec, int item, int8_t& status, double& value) noexcept {
  status = c.status;
  value = std::numeric_limits<double>::quiet_NaN();
  if (c.status != kOk) return;
  double v = c.a;
  if (c.direct) {
    value = v;
    return;
  }
  const double hi = spec.hi[item];
  if (c.has_den) {
    if (spec.fractions == kDivide) v = c.a / c.b;
    else if (c.b != hi) v = c.a * hi / c.b;
  }
  if (!(spec.lo[item] <= v && v <= hi)) {
    status = kOutOfRange;
    return;
  }
  value = v;
}

// NUMBER := ('+'|'-')? MANT. kNone also covers a sign with no mantissa after it.
Read read_number(Cursor& c, Literal& lit) noexcept {
  if (!c.eof()) {
    const Sym s = c.peek();
    if (s.c == '+' || s.c == '-') {
      lit.negative = s.c == '-';
      c.p += s.len;
    }
  }
  return read_mant(c, lit);
}

// Delimited content: W* NUMBER (W* '/' W* MANT)? W*, or for boxed also a \frac{a}{b}.
Cand content_value(const uint8_t* b, const uint8_t* e, const Spec& spec) noexcept {
  Cursor c{b, e};
  c.skip_ws();
  Literal num, den;
  if (spec.format == kBoxed && !c.eof() && *c.p == '\\') {
    if (c.starts_with("\\frac")) c.p += 5;
    else if (c.starts_with("\\dfrac") || c.starts_with("\\tfrac")) c.p += 6;
    else return make(kMalformed);
    c.skip_ws();
    if (!c.at('{')) return make(kMalformed);
    ++c.p;
    c.skip_ws();
    if (read_number(c, num) != Read::kOk) return make(kMalformed);
    c.skip_ws();
    if (!c.at('}')) return make(kMalformed);
    ++c.p;
    c.skip_ws();
    if (!c.at('{')) return make(kMalformed);
    ++c.p;
    c.skip_ws();
    if (read_mant(c, den) != Read::kOk) return make(kMalformed);
    c.skip_ws();
    if (!c.at('}')) return make(kMalformed);
    ++c.p;
    c.skip_ws();
    if (!c.eof()) return make(kMalformed);
    return number_cand(num, &den, spec);
  }
  if (read_number(c, num) != Read::kOk) return make(kMalformed);
  c.skip_ws();
  bool has_den = false;
  if (c.at('/')) {
    c.p += c.peek().len;
    c.skip_ws();
    if (read_mant(c, den) != Read::kOk) return make(kMalformed);
    has_den = true;
    c.skip_ws();
  }
  if (!c.eof()) return make(kMalformed);
  return number_cand(num, has_den ? &den : nullptr, spec);
}

// Verdict content: W-trimmed bytes equal to a label.
Cand verdict_value(const uint8_t* b, const uint8_t* e, const Spec& spec) noexcept {
  Cursor c{b, e};
  c.skip_ws();
  const uint8_t* first = c.p;
  const uint8_t* last = c.p;  // end of the last non-W symbol
  while (!c.eof()) {
    const Sym s = c.peek();
    c.p += s.len;
    if (!is_ws(s.c)) last = c.p;
  }
  const size_t len = static_cast<size_t>(last - first);
  for (size_t j = 0; j < spec.labels.size(); ++j) {
    const std::string& lab = spec.labels[j];
    if (lab.size() != len) continue;
    bool eq = true;
    for (size_t t = 0; t < len && eq; ++t) {
      const uint8_t x = first[t], y = static_cast<uint8_t>(lab[t]);
      eq = spec.case_sensitive ? x == y : lower(x) == lower(y);
    }
    if (eq) {
      Cand cand;
      cand.status = kOk;
      cand.direct = true;
      cand.a = spec.label_values[j];
      return cand;
    }
  }
  return make(kMalformed);
}

// ---- formats: each calls emit(name_index, Cand) for its candidates in text order -------------------
struct Patterns {
  std::vector<std::string> open, close;  // tag/verdict: <NAME>, </NAME>; json: "NAME"; kv: NAME
  void build(const Spec& spec, const std::string& nonce) {
    const size_t count = spec.names.size();
    open.resize(count);
    close.resize(count);
    for (size_t i = 0; i < count; ++i) {
      std::string name = spec.names[i];
      if (!nonce.empty() && spec.format != kKeyValue) {
        name += '-';
        name += nonce;
      }
      switch (spec.format) {
        case kTag:
        case kVerdict:
          open[i] = "<" + name + ">";
          close[i] = "</" + name + ">";
          break;
        case kJson: open[i] = "\"" + name + "\""; break;
        default: open[i] = name; break;
      }
    }
  }
};

// Calls found(i, p) for every occurrence p of every needle i, each needle's in increasing order.
// One needle: the SIMD search. Several (items by name): they share their first byte ('<' or '"'),
// so one memchr pass visits each such byte once and compares the needles there, instead of
// scanning the text once per item.
template <class Found>
void for_each_occurrence(const uint8_t* t, size_t n, const std::vector<std::string>& needles, Found&& found) {
  if (needles.size() == 1) {
    size_t pos = 0, p;
    while ((p = find_needle(t, n, pos, needles[0])) != npos) {
      found(size_t{0}, p);
      pos = p + 1;
    }
    return;
  }
  if (needles.empty()) return;
  const uint8_t first = static_cast<uint8_t>(needles[0][0]);
  const uint8_t* p = t;
  const uint8_t* end = t + n;
  while (p < end && (p = static_cast<const uint8_t*>(std::memchr(p, first, static_cast<size_t>(end - p))))) {
    const size_t left = static_cast<size_t>(end - p);
    for (size_t i = 0; i < needles.size(); ++i) {
      const std::string& nd = needles[i];  // the second byte rules out most needles without a call
      if (nd.size() <= left && p[1] == static_cast<uint8_t>(nd[1]) && std::memcmp(p, nd.data(), nd.size()) == 0)
        found(i, static_cast<size_t>(p - t));
    }
    ++p;
  }
}

template <class Emit>
void scan_tags(const uint8_t* t, size_t n, const Spec& spec, const Patterns& pat, Emit&& emit) {
  for_each_occurrence(t, n, pat.open, [&](size_t i, size_t p) {
    const std::string& close = pat.close[i];
    const size_t s = p + pat.open[i].size();
    const size_t wend = std::min(n, s + kContentCap);
    const void* lt = std::memchr(t + s, '<', wend - s);
    if (!lt) {
      emit(i, make(s + kContentCap >= n ? kTruncated : kMalformed, s, wend));
      return;
    }
    const size_t q = static_cast<size_t>(static_cast<const uint8_t*>(lt) - t);
    const size_t rem = n - q;
    if (rem >= close.size() && std::memcmp(t + q, close.data(), close.size()) == 0) {
      Cand c = spec.format == kVerdict ? verdict_value(t + s, t + q, spec) : content_value(t + s, t + q, spec);
      c.span_begin = static_cast<int64_t>(s);
      c.span_end = static_cast<int64_t>(q);
      emit(i, c);
    } else if (rem < close.size() && std::memcmp(t + q, close.data(), rem) == 0) {
      emit(i, make(kTruncated, s, q));
    } else {
      emit(i, make(kMalformed, s, q));
    }
  });
}

// Value of "Score: ..." from just after the separator.
Cand kv_value(const uint8_t* b, const uint8_t* e, const Spec& spec) noexcept {
  Cursor c{b, e};
  while (!c.eof()) {
    const Sym s = c.peek();
    if (!(is_ws(s.c) || s.c == '*' || s.c == '_')) break;
    c.p += s.len;
  }
  if (c.eof()) return make(kTruncated);
  int nb = 0;
  while (nb < 2 && c.at('[')) {
    ++c.p;
    ++nb;
  }
  c.skip_ws();
  if (c.eof()) return make(kTruncated);
  Literal num, den;
  const Sym s0 = c.peek();
  if (s0.c == '+' || s0.c == '-') {
    num.negative = s0.c == '-';
    c.p += s0.len;
    if (c.eof()) return make(kTruncated);
  }
  if (read_mant(c, num) != Read::kOk) return make(kMalformed);
  bool has_den = false;
  Cursor f = c;
  f.skip_ws();
  if (f.at('/')) {
    f.p += f.peek().len;
    f.skip_ws();
    if (f.eof()) return make(kTruncated);
    if (read_mant(f, den) != Read::kOk) return make(kMalformed);
    has_den = true;
    c = f;
  }
  if (nb) {
    c.skip_ws();
    for (int j = 0; j < nb; ++j) {
      if (c.eof()) return make(kTruncated);
      if (*c.p != ']') return make(kMalformed);
      ++c.p;
    }
  }
  if (!c.eof()) {
    const Sym s = c.peek();
    if (is_alpha(s.c) || is_digit(s.c) || s.c == '/') return make(kMalformed);
    if (s.c == '.' || s.c == ',') {
      Cursor d{c.p + s.len, c.end};
      if (!d.eof() && is_digit(d.peek().c)) return make(kMalformed);
    }
  }
  return number_cand(num, has_den ? &den : nullptr, spec);
}

// Key-value: find separators, then look back over [ \t*_] for a key that ends there. Keys end with
// a letter or digit (ScoreSpec checks), so the backward match equals the grammar's forward one.
template <class Emit>
void scan_kv(const uint8_t* t, size_t n, const Spec& spec, const Patterns& pat, Emit&& emit) {
  size_t pos = 0, q;
  while ((q = find_separator(t, n, pos)) != npos) {
    size_t seplen = 1;
    if (t[q] == 0xEF) {
      if (!(q + 2 < n && t[q + 1] == 0xBC && t[q + 2] == 0x9A)) {
        pos = q + 1;
        continue;
      }
      seplen = 3;
    }
    pos = q + seplen;
    size_t e = q;
    while (e > 0 && (t[e - 1] == ' ' || t[e - 1] == '\t' || t[e - 1] == '*' || t[e - 1] == '_')) --e;
    bool parsed = false;
    Cand value;
    for (size_t i = 0; i < pat.open.size(); ++i) {
      const std::string& key = pat.open[i];
      const size_t m = key.size();
      if (e < m) continue;
      const uint8_t* k0 = t + e - m;
      if (e > m && is_word(t[e - m - 1])) continue;
      bool eq = true;
      for (size_t j = 0; j < m && eq; ++j) eq = lower(k0[j]) == lower(static_cast<uint8_t>(key[j]));
      if (!eq) continue;
      if (!parsed) {
        value = kv_value(t + q + seplen, t + n, spec);
        parsed = true;
      }
      emit(i, value);
    }
  }
}

Cand json_value(const uint8_t* t, size_t n, Cursor c, const Spec& spec) noexcept {
  c.skip_ws();
  if (c.eof()) return make(kTruncated);
  if (*c.p == '"') {
    const size_t start = static_cast<size_t>(c.p - t) + 1;
    const size_t wend = std::min(n, start + kContentCap);
    const void* qp = start < wend ? std::memchr(t + start, '"', wend - start) : nullptr;
    if (!qp) return make(start + kContentCap >= n ? kTruncated : kMalformed);
    const uint8_t* q = static_cast<const uint8_t*>(qp);
    if (std::memchr(t + start, '\\', static_cast<size_t>(q - (t + start)))) return make(kMalformed);
    return content_value(t + start, q, spec);
  }
  Literal num;
  const Sym s0 = c.peek();
  if (s0.c == '+' || s0.c == '-') {
    num.negative = s0.c == '-';
    c.p += s0.len;
    if (c.eof()) return make(kTruncated);
  }
  if (read_mant(c, num) != Read::kOk) return make(kMalformed);
  c.skip_ws();
  if (c.eof()) return make(kTruncated);
  const uint8_t term = c.peek().c;
  if (term != ',' && term != '}' && term != ']') return make(kMalformed);
  return number_cand(num, nullptr, spec);
}

template <class Emit>
void scan_json(const uint8_t* t, size_t n, const Spec& spec, const Patterns& pat, Emit&& emit) {
  // every occurrence counts, overlapping ones too ("score"score": 7 holds a second key)
  for_each_occurrence(t, n, pat.open, [&](size_t i, size_t p) {
    Cursor c{t + p + pat.open[i].size(), t + n};
    c.skip_ws();
    if (!c.at(':')) return;
    c.p += c.peek().len;
    emit(i, json_value(t, n, c, spec));
  });
}

template <class Emit>
void scan_boxed(const uint8_t* t, size_t n, const Spec& spec, Emit&& emit) {
  static const std::string kBoxed = "\\boxed{";
  size_t pos = 0, p;
  while ((p = find_needle(t, n, pos, kBoxed)) != npos) {
    pos = p + 1;
    const size_t s = p + kBoxed.size();
    const size_t wend = std::min(n, s + kContentCap);
    int depth = 1;
    size_t q = npos;
    for (size_t j = s; j < wend; ++j) {
      depth += t[j] == '{';
      depth -= t[j] == '}';
      if (depth == 0) {
        q = j;
        break;
      }
    }
    if (q == npos) {
      emit(0, make(s + kContentCap >= n ? kTruncated : kMalformed, s, wend));
      continue;
    }
    Cand c = content_value(t + s, t + q, spec);
    c.span_begin = static_cast<int64_t>(s);
    c.span_end = static_cast<int64_t>(q);
    emit(0, c);
  }
}

// ---- items and selection -------------------------------------------------------------------------
struct Result {
  int8_t status;
  double value;
  int64_t sb, se;
};

bool same(const Result& x, const Result& y) noexcept {
  return x.status == y.status && (x.status != kOk || x.value == y.value);
}

Result result_of(const Cand& c, const Spec& spec, int item) noexcept {
  Result r;
  finalize(c, spec, item, r.status, r.value);
  r.sb = c.span_begin;
  r.se = c.span_end;
  return r;
}

// Streaming selection over one item's candidates (by-name mode): O(1) memory per item.
struct Agg {
  int64_t count = 0;
  Result first{kMissing, 0, -1, -1}, last{kMissing, 0, -1, -1};
  bool agree = true;
  void add(const Result& r) noexcept {
    if (count == 0) first = r;
    else if (agree && !same(r, last)) agree = false;
    last = r;
    ++count;
  }
  Result pick(int select) const noexcept {
    if (count == 0) return {kMissing, 0, -1, -1};
    if (select == kFirst) return first;
    if (select == kLast || agree) return last;
    return {kAmbiguous, 0, last.sb, last.se};
  }
};

class TextParser {
 public:
  explicit TextParser(const Spec& spec) : spec_(spec) {
    pat_.build(spec, spec.nonce);
    aggs_.resize(static_cast<size_t>(spec.k));
  }

  void parse(const uint8_t* t, size_t n, const std::string* nonce, const Outputs& out, size_t row) {
    const Patterns* pat = &pat_;
    if (nonce) {
      nonce_pat_.build(spec_, *nonce);
      pat = &nonce_pat_;
    }
    const size_t k = static_cast<size_t>(spec_.k);
    if (spec_.by_name) {
      for (auto& a : aggs_) a = Agg{};
      scan(t, n, *pat, [&](size_t item, const Cand& c) { aggs_[item].add(result_of(c, spec_, static_cast<int>(item))); });
      for (size_t i = 0; i < k; ++i) write(out, row, i, aggs_[i].pick(spec_.select));
      return;
    }
    // Order mode in O(k) memory whatever the number m of candidates (10 MB of "<score>" repeats
    // is 1.4 M of them): item i takes candidate i (m <= k), or its window i .. i + m - k.
    size_t m = 0;
    if (spec_.select == kFirst || spec_.select == kLast) {
      cands_.assign(k, Cand{});
      const bool first = spec_.select == kFirst;
      scan(t, n, *pat, [&](size_t, const Cand& c) {
        if (!first) cands_[m % k] = c;  // ring of the last k
        else if (m < k) cands_[m] = c;
        ++m;
      });
      for (size_t i = 0; i < k; ++i) {
        const size_t j = m <= k ? i : (first ? i : i + m - k);  // the candidate item i takes
        write(out, row, i, i < m ? result_of(cands_[j % k], spec_, static_cast<int>(i)) : Result{kMissing, 0, -1, -1});
      }
      return;
    }
    if (k == 1) {  // unique over all candidates: one streaming pass
      Agg a;
      scan(t, n, *pat, [&](size_t, const Cand& c) { a.add(result_of(c, spec_, 0)); });
      write(out, row, 0, a.pick(kUnique));
      return;
    }
    // unique with k > 1: the windows depend on m, so count first, then fold each candidate into
    // the items whose window holds it.
    scan(t, n, *pat, [&](size_t, const Cand&) { ++m; });
    for (auto& a : aggs_) a = Agg{};
    size_t j = 0;
    scan(t, n, *pat, [&](size_t, const Cand& c) {
      const size_t lo = m <= k ? j : (j >= m - k ? j - (m - k) : 0);
      const size_t hi = std::min(j, k - 1);
      for (size_t i = lo; i <= hi && (m > k || i == j); ++i) aggs_[i].add(result_of(c, spec_, static_cast<int>(i)));
      ++j;
    });
    for (size_t i = 0; i < k; ++i) write(out, row, i, aggs_[i].pick(kUnique));
  }

 private:
  template <class Emit>
  void scan(const uint8_t* t, size_t n, const Patterns& pat, Emit&& emit) {
    switch (spec_.format) {
      case kTag:
      case kVerdict: scan_tags(t, n, spec_, pat, emit); break;
      case kKeyValue: scan_kv(t, n, spec_, pat, emit); break;
      case kJson: scan_json(t, n, spec_, pat, emit); break;
      case kBoxed: scan_boxed(t, n, spec_, emit); break;
      default: break;
    }
  }

  void write(const Outputs& out, size_t row, size_t item, const Result& r) const noexcept {
    const size_t idx = row * static_cast<size_t>(spec_.k) + item;
    out.status[idx] = r.status;
    out.values[idx] = r.status == kOk ? static_cast<float>(r.value) : std::numeric_limits<float>::quiet_NaN();
    if (out.spans) {
      const bool has_span = spec_.format == kTag || spec_.format == kVerdict || spec_.format == kBoxed;
      out.spans[2 * idx] = has_span ? r.sb : -1;
      out.spans[2 * idx + 1] = has_span ? r.se : -1;
    }
  }

  const Spec& spec_;
  Patterns pat_, nonce_pat_;
  std::vector<Agg> aggs_;
  std::vector<Cand> cands_;  // order mode, first/last: the k candidates the items take
};

void fail_row(const Spec& spec, const Outputs& out, size_t row) noexcept {
  for (int i = 0; i < spec.k; ++i) {
    const size_t idx = row * static_cast<size_t>(spec.k) + static_cast<size_t>(i);
    out.status[idx] = kMalformed;
    out.values[idx] = std::numeric_limits<float>::quiet_NaN();
    if (out.spans) out.spans[2 * idx] = out.spans[2 * idx + 1] = -1;
  }
}

// ---- threads -------------------------------------------------------------------------------------
// A batch is cut into chunks of rows claimed from an atomic counter. The caller waits for its rows
// to be *done*, never for threads to exit: on a loaded machine a pool thread may be scheduled
// milliseconds late, and fork-join (OpenMP, std::thread + join) would wait for it even when the
// caller has parsed everything itself. Measured here (2 cores, load 6): join-based 2 threads were
// ~30x slower than 1; with this pool 2 threads are never slower than 1.
struct Job {
  std::function<void(size_t, size_t)> work;  // parses rows [begin, end); only called while rows remain
  size_t n = 0, chunk = 1;
  std::atomic<size_t> next{0}, done{0};
  std::mutex mu;
  std::condition_variable finished;

  // Claims and parses chunks until none are left. Safe to call after the batch is finished:
  // it then claims nothing and never touches the caller's (by then gone) buffers.
  void drain() noexcept {
    for (;;) {
      const size_t begin = next.fetch_add(chunk);
      if (begin >= n) return;
      const size_t end = std::min(n, begin + chunk);
      work(begin, end);
      if (done.fetch_add(end - begin) + (end - begin) == n) {
        std::lock_guard<std::mutex> lock(mu);
        finished.notify_all();
      }
    }
  }
};

class Pool {
 public:
  // Leaked on purpose: pool threads may still be waiting at interpreter exit, so the pool must
  // never be destroyed; a forked child starts with a fresh pool (its threads did not survive).
  static Pool& get() {
#if defined(__unix__) || defined(__APPLE__)
    static std::once_flag once;
    std::call_once(once, [] {
      pthread_atfork(nullptr, nullptr, [] {
        instance() = nullptr;
        new (&create_mu()) std::mutex();  // another thread may have held it at fork time
      });
    });
#endif
    std::lock_guard<std::mutex> lock(create_mu());
    if (!instance()) instance() = new Pool();
    return *instance();
  }

  // Runs job on up to `helpers` pool threads besides the calling thread, which works too.
  void run(const std::shared_ptr<Job>& job, size_t helpers) {
    helpers = std::min(helpers, ensure_threads(helpers));
    if (helpers) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        queue_.push_back(job);
      }
      for (size_t i = 0; i < helpers; ++i) wake_.notify_one();
    }
    job->drain();
    std::unique_lock<std::mutex> lock(job->mu);
    job->finished.wait(lock, [&] { return job->done.load() >= job->n; });
  }

 private:
  static Pool*& instance() {
    static Pool* p = nullptr;
    return p;
  }
  static std::mutex& create_mu() {
    static std::mutex m;
    return m;
  }

  size_t ensure_threads(size_t want) {
    std::lock_guard<std::mutex> lock(mu_);
    try {
      while (threads_ < want) {
        std::thread([this] { loop(); }).detach();
        ++threads_;
      }
    } catch (...) {  // no more threads: run with the ones there are
    }
    return threads_;
  }

  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        wake_.wait(lock, [&] { return !queue_.empty(); });
        job = queue_.front();
        if (job->next.load() >= job->n) {  // nothing left to claim: retire it
          queue_.pop_front();
          continue;
        }
      }
      job->drain();
    }
  }

  std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Job>> queue_;
  size_t threads_ = 0;
};

void fail_rows(const Spec& spec, const Outputs& out, size_t begin, size_t end) noexcept {
  for (size_t r = begin; r < end; ++r) fail_row(spec, out, r);
}

// Parses rows [begin, end) with a parser of this thread (built once per thread and batch).
void parse_rows(const TextRef* texts, const Spec& spec, const std::string* nonces, const Outputs& out, size_t begin,
                size_t end) noexcept {
  try {
    TextParser parser(spec);
    for (size_t r = begin; r < end; ++r) {
      try {
        parser.parse(texts[r].data, texts[r].size, nonces ? &nonces[r] : nullptr, out, r);
      } catch (...) {  // only std::bad_alloc can get here: the row is marked, never the process
        fail_row(spec, out, r);
      }
    }
  } catch (...) {
    fail_rows(spec, out, begin, end);
  }
}

}  // namespace

void parse_batch(const TextRef* texts, size_t n, const Spec& spec, const std::string* nonces, const Outputs& out,
                 int num_threads) noexcept {
  size_t total = 0;
  for (size_t r = 0; r < n; ++r) total += texts[r].size;
  // Waking a pool thread costs ~5-20 us, about what 64 KB of parsing takes: below that, fewer threads.
  const size_t by_work = std::max<size_t>(1, total / (64 * 1024));
  const size_t threads = std::min<size_t>({static_cast<size_t>(std::max(1, num_threads)), by_work, std::max<size_t>(n, 1)});
  if (threads <= 1) {
    parse_rows(texts, spec, nonces, out, 0, n);
    return;
  }
  try {
    auto job = std::make_shared<Job>();
    job->n = n;
    // ~8 chunks per thread balance one 10 MB text against many 1 KB ones; 64 rows at most per
    // chunk keep the parser (rebuilt per chunk) and the atomic negligible.
    job->chunk = std::max<size_t>(1, std::min<size_t>(64, n / (threads * 8)));
    job->work = [=, &spec, &out](size_t begin, size_t end) { parse_rows(texts, spec, nonces, out, begin, end); };
    Pool::get().run(job, threads - 1);
  } catch (...) {  // could not set up the job (allocation): parse on this thread
    parse_rows(texts, spec, nonces, out, 0, n);
  }
}

}  // namespace parse

// ---- Python bindings -----------------------------------------------------------------------------
namespace {

using parse::Spec;

std::string as_string(const py::handle& h, const char* what) {
  if (PyBytes_Check(h.ptr())) return std::string(PyBytes_AS_STRING(h.ptr()), static_cast<size_t>(PyBytes_GET_SIZE(h.ptr())));
  if (PyUnicode_Check(h.ptr())) return h.cast<std::string>();
  throw py::type_error(std::string(what) + " must be str or bytes");
}

Spec spec_from_dict(const py::dict& d) {
  Spec s;
  s.format = d["format"].cast<int>();
  s.k = d["k"].cast<int>();
  s.by_name = d["by_name"].cast<bool>();
  for (auto h : d["names"]) s.names.push_back(as_string(h, "spec names"));
  s.nonce = as_string(d["nonce"], "spec nonce");
  s.select = d["select"].cast<int>();
  s.integer = d["integer"].cast<bool>();
  s.fractions = d["fractions"].cast<int>();
  s.lo = d["lo"].cast<std::vector<double>>();
  s.hi = d["hi"].cast<std::vector<double>>();
  for (auto h : d["labels"]) s.labels.push_back(as_string(h, "spec labels"));
  s.label_values = d["label_values"].cast<std::vector<double>>();
  s.case_sensitive = d["case_sensitive"].cast<bool>();
  if (s.format < parse::kTag || s.format > parse::kBoxed) throw py::value_error("parse_scores: unknown format code");
  if (s.k < 1) throw py::value_error("parse_scores: k must be >= 1");
  if (s.select < parse::kFirst || s.select > parse::kUnique) throw py::value_error("parse_scores: unknown select code");
  if (s.fractions < parse::kScale || s.fractions > parse::kReject) throw py::value_error("parse_scores: unknown fractions code");
  if (s.lo.size() != static_cast<size_t>(s.k) || s.hi.size() != static_cast<size_t>(s.k))
    throw py::value_error("parse_scores: lo and hi need k entries each");
  const size_t want_names = s.format == parse::kBoxed ? 0 : (s.by_name ? static_cast<size_t>(s.k) : 1);
  if (s.names.size() != want_names) throw py::value_error("parse_scores: names must hold k names (by_name) or one");
  for (const auto& nm : s.names)
    if (nm.empty()) throw py::value_error("parse_scores: empty name");
  if (s.labels.size() != s.label_values.size()) throw py::value_error("parse_scores: labels and label_values differ in length");
  if (s.format == parse::kVerdict && s.labels.empty()) throw py::value_error("parse_scores: verdict needs labels");
  return s;
}

std::vector<std::string> nonces_from(const py::object& nonces, size_t n) {
  std::vector<std::string> out;
  if (nonces.is_none()) return out;
  py::sequence seq = py::reinterpret_borrow<py::sequence>(nonces);
  if (static_cast<size_t>(py::len(seq)) != n) throw py::value_error("parse_scores: nonces must hold one nonce per text");
  out.reserve(n);
  for (auto h : seq) out.push_back(as_string(h, "nonces[i]"));
  return out;
}

// Holds the texts' buffers for the duration of a call: str's cached UTF-8 (no copy for ASCII and
// after the first call for the rest), bytes in place, other buffer objects through the buffer
// protocol (which also stops a bytearray from resizing while the GIL is released).
class TextBuffers {
 public:
  explicit TextBuffers(const py::handle& texts) {
    py::object fast = py::reinterpret_steal<py::object>(PySequence_Fast(texts.ptr(), "texts must be a sequence of str or bytes"));
    if (!fast) throw py::error_already_set();
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(fast.ptr());
    PyObject** items = PySequence_Fast_ITEMS(fast.ptr());
    refs_.reserve(static_cast<size_t>(n));
    refs_.push_back(fast);
    ptrs_.resize(static_cast<size_t>(n));
    for (Py_ssize_t i = 0; i < n; ++i) {
      PyObject* o = items[i];
      refs_.push_back(py::reinterpret_borrow<py::object>(o));  // a list may change while the GIL is released
      Py_ssize_t len = 0;
      const char* p = nullptr;
      if (PyUnicode_Check(o)) {
        p = PyUnicode_AsUTF8AndSize(o, &len);
        if (!p) {  // lone surrogates: encode them as the oracle does
          PyErr_Clear();
          py::object enc = py::reinterpret_steal<py::object>(PyUnicode_AsEncodedString(o, "utf-8", "surrogatepass"));
          if (!enc) throw py::error_already_set();
          p = PyBytes_AS_STRING(enc.ptr());
          len = PyBytes_GET_SIZE(enc.ptr());
          refs_.push_back(enc);
        }
      } else if (PyBytes_Check(o)) {
        p = PyBytes_AS_STRING(o);
        len = PyBytes_GET_SIZE(o);
      } else if (PyObject_CheckBuffer(o)) {
        std::unique_ptr<Py_buffer, ReleaseBuffer> view(new Py_buffer);
        if (PyObject_GetBuffer(o, view.get(), PyBUF_SIMPLE) != 0) {
          delete view.release();  // nothing was acquired, so nothing to release
          throw py::error_already_set();
        }
        p = static_cast<const char*>(view->buf);
        len = view->len;
        views_.push_back(std::move(view));
      } else {
        throw py::type_error("texts[" + std::to_string(i) + "] has type " + std::string(Py_TYPE(o)->tp_name) +
                             ", expected str or bytes");
      }
      ptrs_[static_cast<size_t>(i)] = {reinterpret_cast<const uint8_t*>(p), static_cast<size_t>(len)};
    }
  }
  TextBuffers(const TextBuffers&) = delete;
  TextBuffers& operator=(const TextBuffers&) = delete;

  const parse::TextRef* data() const { return ptrs_.data(); }
  size_t size() const { return ptrs_.size(); }

 private:
  struct ReleaseBuffer {
    void operator()(Py_buffer* v) const {
      PyBuffer_Release(v);
      delete v;
    }
  };
  std::vector<py::object> refs_;
  std::vector<std::unique_ptr<Py_buffer, ReleaseBuffer>> views_;  // released even if the constructor throws
  std::vector<parse::TextRef> ptrs_;
};

parse::Outputs outputs(uintptr_t values, uintptr_t status, uintptr_t spans, size_t n) {
  // empty tensors have null data pointers; with no rows nothing is written
  if (n && (!values || !status)) throw py::value_error("parse_scores: values and status buffers are required");
  return {reinterpret_cast<float*>(values), reinterpret_cast<int8_t*>(status), reinterpret_cast<int64_t*>(spans)};
}

void parse_scores_list(const py::object& texts, const py::dict& spec_dict, const py::object& nonces, uintptr_t values,
                       uintptr_t status, uintptr_t spans, int num_threads) {
  const Spec spec = spec_from_dict(spec_dict);
  TextBuffers buffers(texts);  // released (with the GIL held) when this function returns
  const parse::Outputs out = outputs(values, status, spans, buffers.size());
  const std::vector<std::string> nonce_list = nonces_from(nonces, buffers.size());
  py::gil_scoped_release release;
  parse::parse_batch(buffers.data(), buffers.size(), spec, nonce_list.empty() ? nullptr : nonce_list.data(), out, num_threads);
}

void parse_scores_flat(uintptr_t data, uintptr_t offsets, int64_t n, const py::dict& spec_dict, const py::object& nonces,
                       uintptr_t values, uintptr_t status, uintptr_t spans, int num_threads) {
  const Spec spec = spec_from_dict(spec_dict);
  if (n < 0) throw py::value_error("parse_scores_flat: n must be >= 0");
  const parse::Outputs out = outputs(values, status, spans, static_cast<size_t>(n));
  const auto* base = reinterpret_cast<const uint8_t*>(data);
  const auto* off = reinterpret_cast<const int64_t*>(offsets);
  std::vector<parse::TextRef> refs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    if (off[i] < 0 || off[i + 1] < off[i])
      throw py::value_error("parse_scores_flat: offsets must be non-decreasing and >= 0 (row " + std::to_string(i) + ")");
    refs[static_cast<size_t>(i)] = {base + off[i], static_cast<size_t>(off[i + 1] - off[i])};
  }
  const std::vector<std::string> nonce_list = nonces_from(nonces, static_cast<size_t>(n));
  py::gil_scoped_release release;
  parse::parse_batch(refs.data(), refs.size(), spec, nonce_list.empty() ? nullptr : nonce_list.data(), out, num_threads);
}

}  // namespace
}  // namespace mpo_fast

MPO_FAST_REGISTER(parse_scores) {
  m.def("parse_scores", &mpo_fast::parse_scores_list, py::arg("texts"), py::arg("spec"), py::arg("nonces"),
        py::arg("values_ptr"), py::arg("status_ptr"), py::arg("spans_ptr"), py::arg("num_threads"),
        "Parse judge scores from a sequence of str/bytes into float32 values [n,k], int8 status [n,k] and int64 "
        "spans [n,k,2] (spans_ptr 0 = none). spec: ScoreSpec.native_args. The GIL is released while parsing.");
  m.def("parse_scores_flat", &mpo_fast::parse_scores_flat, py::arg("data_ptr"), py::arg("offsets_ptr"), py::arg("n"),
        py::arg("spec"), py::arg("nonces"), py::arg("values_ptr"), py::arg("status_ptr"), py::arg("spans_ptr"),
        py::arg("num_threads"),
        "As parse_scores, for n texts stored back to back in one uint8 buffer with int64 offsets [n+1].");
}
