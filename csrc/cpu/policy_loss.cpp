// C++ CPU fused policy loss (mpo_fast/ops/policy_loss.py is the contract, mpo_fast/reference/policy_loss.py
// the math). Forward: one pass over the tokens per row (OpenMP over rows) computes the per-token loss,
// every metric and d loss_token / d logp (times the mask weight) into `coef`; a serial pass over the B
// row totals then applies the aggregation. Backward: one elementwise pass,
// grad[b, t] = coef[b, t] * row_w[b] * (grad_loss * glob), written in logp's dtype.
// Per-token math in float (double for float64 logp): chunk partials in Acc, row totals in double.
//
// Two GCC options keep the token loop vectorised (checked with -fopt-info-vec; without them it is
// scalar and branchy: 69-79 vs 11 ns/token measured here, one core, cache-resident rows).
// no-trapping-math: otherwise the float compares of the clip test do not become vector selects (SSE2
// compares signal on NaN). no-thread-jumps: otherwise jump threading splits the loop body on the
// padding test (padding makes d = 0 a known constant) and if-conversion gives up. Neither changes a
// result: nothing here reads the floating-point exception flags.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math", "no-thread-jumps")
#endif
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/registry.h"
#include "cpu/fast_exp.h"
#include "cpu/strided_rows.h"

namespace py = pybind11;

namespace mpo_fast {
namespace {

// Keep in sync with mpo_fast/ops/policy_loss.py (_KL_IDS, _AGG_IDS, metric order).
enum KlKind : int { kNoKl = 0, kK1 = 1, kK2 = 2, kK3 = 3 };
enum Aggregation : int { kTokenMean = 0, kSeqMeanTokenMean = 1, kSeqMeanTokenSum = 2 };
enum Metric : int { kClipFraction = 0, kApproxKl, kKl, kRatioMean, kRatioMin, kRatioMax, kTokens, kNumMetrics };

constexpr int64_t kChunk = 512;  // 5 inputs x 512 x 8 B = 20 KB of row buffers per thread: L1-resident

struct RowTotals {
  double loss = 0, n = 0, clip = 0, approx_kl = 0, kl = 0, ratio_sum = 0;
  double ratio_min = std::numeric_limits<double>::infinity();
  double ratio_max = -std::numeric_limits<double>::infinity();
};

// Ratios are exp(.) >= 0, and non-negative floats order like their bit patterns as signed integers:
// min / max over the bits are integer reductions, which vectorise where float min / max (NaN and -0
// rules) would not. +inf bits is the empty min; -1 the empty max.
template <typename Acc>
struct RatioBits;
template <>
struct RatioBits<float> {
  using type = int32_t;
};
template <>
struct RatioBits<double> {
  using type = int64_t;
};
template <typename Acc>
inline typename RatioBits<Acc>::type ratio_bits(Acc v) {
  typename RatioBits<Acc>::type b;
  std::memcpy(&b, &v, sizeof(b));
  return b;
}
template <typename Acc>
inline double ratio_from_bits(typename RatioBits<Acc>::type b) {
  Acc v;
  std::memcpy(&v, &b, sizeof(v));
  return static_cast<double>(v);
}

struct LossParams {
  double clip_low, clip_high, kl_coef;
};

template <typename Acc, int KL, bool WRITE_COEF>
RowTotals row_forward(const Rows& logp, const Rows& old_logp, const Rows& adv, const Rows& mask, const Rows& ref,
                      int64_t b, int64_t T, const LossParams& p, Acc* coef_row) {
  Acc lp[kChunk], old[kChunk], a[kChunk], m[kChunk], rf[kChunk];
  const Acc lo = static_cast<Acc>(1.0 - p.clip_low), hi = static_cast<Acc>(1.0 + p.clip_high);
  const Acc kc = static_cast<Acc>(p.kl_coef);
  RowTotals tot;
  for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
    const int64_t n = std::min(kChunk, T - t0);
    load_row_chunk(mask, b, t0, n, m);
    load_row_chunk(logp, b, t0, n, lp);
    load_row_chunk(old_logp, b, t0, n, old);
    load_row_chunk(adv, b, t0, n, a);
    if (KL != kNoKl) load_row_chunk(ref, b, t0, n, rf);
    // Chunk partials in Acc (512 terms, split over the SIMD lanes), row totals in double.
    Acc s_loss = 0, s_n = 0, s_clip = 0, s_akl = 0, s_kl = 0, s_r = 0;
    using Bits = typename RatioBits<Acc>::type;
    const Bits inf_bits = ratio_bits(std::numeric_limits<Acc>::infinity());
    Bits r_min = inf_bits, r_max = -1;
    MPO_OMP(simd reduction(+ : s_loss, s_n, s_clip, s_akl, s_kl, s_r) reduction(min : r_min) reduction(max : r_max))
    for (int64_t i = 0; i < n; ++i) {
      // Padding may hold NaN or inf: every input is replaced by 0 there before any arithmetic.
      // Loads first, then selects, and one compare per select (GCC turns `a & b` of two compares
      // back into branches): the loop stays branch-free and vectorises.
      const Acc mi = m[i], lpr = lp[i], oldr = old[i], ar = a[i];
      const bool ok = mi != Acc(0);
      const Acc w = ok ? mi : Acc(0);
      const Acc lpi = ok ? lpr : Acc(0);
      const Acc ai = ok ? ar : Acc(0);
      const Acc d = lpi - (ok ? oldr : Acc(0));
      const Acc r = exp_fast(d);
      // The clipped branch of -min(r A, clip(r) A) is active (and its gradient 0) exactly where
      // r < 1 - clip_low with A < 0, or r > 1 + clip_high with A > 0: there the excess is > 0.
      const Acc excess = ai < Acc(0) ? lo - r : (ai > Acc(0) ? r - hi : Acc(0));
      const bool clipped = excess > Acc(0);
      const Acc rc = r < lo ? lo : (r > hi ? hi : r);
      const Acc dpg = -(r * ai);
      const Acc pg = clipped ? -(rc * ai) : dpg;
      const Acc dpg_active = clipped ? Acc(0) : dpg;
      Acc kl = 0, dkl = 0;
      if (KL != kNoKl) {
        const Acc rfr = rf[i];
        const Acc dk = lpi - (ok ? rfr : Acc(0));
        if (KL == kK1) {
          kl = dk;
          dkl = Acc(1);
        } else if (KL == kK2) {
          kl = Acc(0.5) * dk * dk;
          dkl = dk;
        } else {
          kl = expm1_minus_x(-dk);  // exp(-dk) + dk - 1
          dkl = dk - kl;            // 1 - exp(-dk)
        }
      }
      if (WRITE_COEF) coef_row[t0 + i] = w * (dpg_active + kc * dkl);
      s_loss += w * (pg + kc * kl);
      s_n += w;
      s_clip += clipped ? w : Acc(0);
      s_akl += w * expm1_minus_x(-d, Acc(1) / r);  // exp(-d) = 1 / r: no second exp
      s_kl += w * kl;
      s_r += w * r;
      const Bits rb = ratio_bits(r);
      const Bits r_lo = ok ? rb : inf_bits;
      const Bits r_hi = ok ? rb : Bits(-1);
      r_min = r_lo < r_min ? r_lo : r_min;
      r_max = r_hi > r_max ? r_hi : r_max;
    }
    tot.loss += s_loss;
    tot.n += s_n;
    tot.clip += s_clip;
    tot.approx_kl += s_akl;
    tot.kl += s_kl;
    tot.ratio_sum += s_r;
    if (r_max >= 0) {  // the chunk had a valid token
      tot.ratio_min = std::min(tot.ratio_min, ratio_from_bits<Acc>(r_min));
      tot.ratio_max = std::max(tot.ratio_max, ratio_from_bits<Acc>(r_max));
    }
  }
  return tot;
}

template <typename Acc, int KL, bool WRITE_COEF>
void all_rows_forward(const Rows& logp, const Rows& old_logp, const Rows& adv, const Rows& mask, const Rows& ref,
                      int64_t B, int64_t T, const LossParams& p, Acc* coef, RowTotals* rows) {
  MPO_OMP(parallel for schedule(static) if (B * T > 16384))
  for (int64_t b = 0; b < B; ++b)
    rows[b] = row_forward<Acc, KL, WRITE_COEF>(logp, old_logp, adv, mask, ref, b, T, p, WRITE_COEF ? coef + b * T : nullptr);
}

template <typename Acc>
void forward_impl(const Rows& logp, const Rows& old_logp, const Rows& adv, const Rows& mask, const Rows& ref,
                  int64_t B, int64_t T, const LossParams& p, int kl_kind, int aggregation, int64_t max_tokens,
                  Acc* loss, Acc* metrics, Acc* coef, Acc* row_w, Acc* glob) {
  std::vector<RowTotals> rows(static_cast<size_t>(B));
  RowTotals* r = rows.data();
#define MPO_PL_CASE(KL)                                                                          \
  case KL:                                                                                       \
    if (coef)                                                                                    \
      all_rows_forward<Acc, KL, true>(logp, old_logp, adv, mask, ref, B, T, p, coef, r);          \
    else                                                                                         \
      all_rows_forward<Acc, KL, false>(logp, old_logp, adv, mask, ref, B, T, p, coef, r);         \
    break;
  switch (kl_kind) {
    MPO_PL_CASE(kNoKl)
    MPO_PL_CASE(kK1)
    MPO_PL_CASE(kK2)
    MPO_PL_CASE(kK3)
    default:
      throw std::invalid_argument("unknown kl kind " + std::to_string(kl_kind));
  }
#undef MPO_PL_CASE
  // Aggregation over the B row totals (serial: B is at most a few thousand).
  double n_all = 0, nonempty = 0, acc_loss = 0, clip = 0, akl = 0, kl = 0, rsum = 0;
  double rmin = std::numeric_limits<double>::infinity(), rmax = -std::numeric_limits<double>::infinity();
  for (int64_t b = 0; b < B; ++b) {
    const RowTotals& t = r[b];
    n_all += t.n;
    clip += t.clip;
    akl += t.approx_kl;
    kl += t.kl;
    rsum += t.ratio_sum;
    rmin = std::min(rmin, t.ratio_min);
    rmax = std::max(rmax, t.ratio_max);
    double w = 1.0;
    if (aggregation == kSeqMeanTokenMean) {
      const bool has = t.n > 0;
      nonempty += has ? 1.0 : 0.0;
      w = has ? 1.0 / std::max(t.n, 1.0) : 0.0;
    }
    acc_loss += t.loss * w;
    row_w[b] = static_cast<Acc>(w);
  }
  double g;
  if (aggregation == kTokenMean)
    g = 1.0 / std::max(n_all, 1.0);
  else if (aggregation == kSeqMeanTokenMean)
    g = 1.0 / std::max(nonempty, 1.0);
  else
    g = 1.0 / (static_cast<double>(B) * static_cast<double>(max_tokens));
  *glob = static_cast<Acc>(g);
  *loss = static_cast<Acc>(acc_loss * g);
  const double denom = std::max(n_all, 1.0);
  const double nan = std::numeric_limits<double>::quiet_NaN();
  metrics[kClipFraction] = static_cast<Acc>(clip / denom);
  metrics[kApproxKl] = static_cast<Acc>(akl / denom);
  metrics[kKl] = static_cast<Acc>(kl / denom);
  metrics[kRatioMean] = static_cast<Acc>(rsum / denom);
  metrics[kRatioMin] = static_cast<Acc>(n_all > 0 ? rmin : nan);
  metrics[kRatioMax] = static_cast<Acc>(n_all > 0 ? rmax : nan);
  metrics[kTokens] = static_cast<Acc>(n_all);
}

void policy_loss_forward(const RowsArg& logp_a, const RowsArg& old_a, const RowsArg& adv_a, const RowsArg& mask_a,
                         const RowsArg& ref_a, int64_t B, int64_t T, double clip_low, double clip_high, double kl_coef,
                         int kl_kind, int aggregation, int64_t max_tokens, int acc_dtype, uintptr_t out_loss,
                         uintptr_t out_metrics, uintptr_t out_coef, uintptr_t out_row_w, uintptr_t out_glob) {
  const Rows logp = Rows::from(logp_a, "logp", false), old_logp = Rows::from(old_a, "old_logp", false);
  const Rows adv = Rows::from(adv_a, "advantages", false), mask = Rows::from(mask_a, "mask", true);
  const Rows ref = Rows::from(ref_a, "ref_logp", false);
  if (!logp.present() || !old_logp.present() || !adv.present() || !mask.present())
    throw std::invalid_argument("policy_loss_forward: logp, old_logp, advantages and mask are required");
  if (kl_kind != kNoKl && !ref.present()) throw std::invalid_argument("policy_loss_forward: a KL estimator needs ref_logp");
  if (aggregation < kTokenMean || aggregation > kSeqMeanTokenSum)
    throw std::invalid_argument("unknown aggregation " + std::to_string(aggregation));
  if (B < 0 || T < 0 || max_tokens < 1) throw std::invalid_argument("B, T >= 0 and max_tokens >= 1 required");
  if (acc_dtype != kFloat32 && acc_dtype != kFloat64) throw std::invalid_argument("acc dtype must be float32 or float64");
  const LossParams p{clip_low, clip_high, kl_coef};
  py::gil_scoped_release release;
  if (acc_dtype == kFloat64)
    forward_impl<double>(logp, old_logp, adv, mask, ref, B, T, p, kl_kind, aggregation, max_tokens,
                         reinterpret_cast<double*>(out_loss), reinterpret_cast<double*>(out_metrics),
                         reinterpret_cast<double*>(out_coef), reinterpret_cast<double*>(out_row_w),
                         reinterpret_cast<double*>(out_glob));
  else
    forward_impl<float>(logp, old_logp, adv, mask, ref, B, T, p, kl_kind, aggregation, max_tokens,
                        reinterpret_cast<float*>(out_loss), reinterpret_cast<float*>(out_metrics),
                        reinterpret_cast<float*>(out_coef), reinterpret_cast<float*>(out_row_w),
                        reinterpret_cast<float*>(out_glob));
}

template <typename Acc>
void backward_impl(const Acc* grad_loss, const Acc* coef, const Acc* row_w, const Acc* glob, int64_t B, int64_t T,
                   void* out, int out_dtype) {
  const double g = static_cast<double>(*grad_loss) * static_cast<double>(*glob);
  MPO_OMP(parallel for schedule(static) if (B * T > 65536))
  for (int64_t b = 0; b < B; ++b) {
    const Acc s = static_cast<Acc>(g * static_cast<double>(row_w[b]));
    Acc buf[kChunk];
    for (int64_t t0 = 0; t0 < T; t0 += kChunk) {
      const int64_t n = std::min(kChunk, T - t0);
      const Acc* c = coef + b * T + t0;
      MPO_OMP(simd)
      for (int64_t i = 0; i < n; ++i) buf[i] = c[i] * s;
      store_chunk(out, out_dtype, b * T + t0, n, buf);
    }
  }
}

void policy_loss_backward(uintptr_t grad_loss, uintptr_t coef, uintptr_t row_w, uintptr_t glob, int acc_dtype,
                          int64_t B, int64_t T, uintptr_t out, int out_dtype) {
  if (acc_dtype != kFloat32 && acc_dtype != kFloat64) throw std::invalid_argument("acc dtype must be float32 or float64");
  if (out_dtype != kFloat32 && out_dtype != kFloat64 && out_dtype != kBFloat16 && out_dtype != kFloat16)
    throw std::invalid_argument("grad dtype must be float32, float64, bfloat16 or float16");
  py::gil_scoped_release release;
  if (acc_dtype == kFloat64)
    backward_impl<double>(reinterpret_cast<const double*>(grad_loss), reinterpret_cast<const double*>(coef),
                          reinterpret_cast<const double*>(row_w), reinterpret_cast<const double*>(glob), B, T,
                          reinterpret_cast<void*>(out), out_dtype);
  else
    backward_impl<float>(reinterpret_cast<const float*>(grad_loss), reinterpret_cast<const float*>(coef),
                         reinterpret_cast<const float*>(row_w), reinterpret_cast<const float*>(glob), B, T,
                         reinterpret_cast<void*>(out), out_dtype);
}

}  // namespace
}  // namespace mpo_fast

MPO_FAST_REGISTER(policy_loss) {
  m.def("policy_loss_forward", &mpo_fast::policy_loss_forward, py::arg("logp"), py::arg("old_logp"),
        py::arg("advantages"), py::arg("mask"), py::arg("ref_logp"), py::arg("B"), py::arg("T"), py::arg("clip_low"),
        py::arg("clip_high"), py::arg("kl_coef"), py::arg("kl_kind"), py::arg("aggregation"), py::arg("max_tokens"),
        py::arg("acc_dtype"), py::arg("out_loss"), py::arg("out_metrics"), py::arg("out_coef"), py::arg("out_row_w"),
        py::arg("out_glob"),
        "Fused clipped policy loss + metrics. Inputs are (ptr, dtype, stride_b, stride_t) tuples (ref ptr 0 = none); "
        "outputs are contiguous acc-dtype buffers (out_coef 0 = no gradient needed).");
  m.def("policy_loss_backward", &mpo_fast::policy_loss_backward, py::arg("grad_loss"), py::arg("coef"),
        py::arg("row_w"), py::arg("glob"), py::arg("acc_dtype"), py::arg("B"), py::arg("T"), py::arg("out"),
        py::arg("out_dtype"), "grad[b, t] = coef[b, t] * row_w[b] * grad_loss * glob, written as out_dtype.");
}
