// C++ CPU group-relative advantages. Two passes over each group in registers (mean, then squared
// deviations) for accuracy; groups are independent, so OpenMP splits them across cores.
#include <cmath>
#include <cstdint>
#include <stdexcept>

#include "common/dtype.h"
#include "common/registry.h"
#include "mpo_fast/advantages_math.h"

namespace py = pybind11;

namespace mpo_fast {
namespace {

// Accumulates in double whatever the output type: group sizes are small, so the cost is nil and the
// result is as good as the fp64 reference.
template <typename Out>
void group_advantages_impl(const void* rewards, int rdtype, const uint8_t* valid, Out* out, int32_t* counts,
                           int64_t num_groups, int64_t group_size, int mode, double eps) {
  using Acc = double;
#ifdef MPO_FAST_HAVE_OPENMP
#pragma omp parallel for schedule(static) if (num_groups * group_size > 32768)
#endif
  for (int64_t g = 0; g < num_groups; ++g) {
    const int64_t base = g * group_size;
    int n = 0;
    Acc sum = 0;
    for (int64_t j = 0; j < group_size; ++j) {
      if (valid && !valid[base + j]) continue;
      sum += static_cast<Acc>(load_as_double(rewards, rdtype, base + j));
      ++n;
    }
    const Acc mean = n > 0 ? sum / n : Acc(0);
    Acc sq = 0;
    for (int64_t j = 0; j < group_size; ++j) {
      if (valid && !valid[base + j]) continue;
      const Acc d = static_cast<Acc>(load_as_double(rewards, rdtype, base + j)) - mean;
      sq += d * d;
    }
    const Acc scale = advantage_scale<Acc>(mode, n, sq, eps);
    for (int64_t j = 0; j < group_size; ++j) {
      const bool ok = n >= 2 && (!valid || valid[base + j]);
      out[base + j] = static_cast<Out>(ok ? (load_as_double(rewards, rdtype, base + j) - mean) * scale : Acc(0));
    }
    counts[g] = n;
  }
}

void group_advantages(uintptr_t rewards, int rdtype, uintptr_t valid, uintptr_t out, int out_dtype, uintptr_t counts,
                      int64_t num_groups, int64_t group_size, int mode, double eps) {
  check_float_dtype(rdtype, "rewards");
  if (out_dtype != kFloat32 && out_dtype != kFloat64) throw std::invalid_argument("out must be float32 or float64");
  if (mode < kGrpo || mode > kRloo) throw std::invalid_argument("unknown advantage mode " + std::to_string(mode));
  if (num_groups < 0 || group_size < 1) throw std::invalid_argument("num_groups >= 0 and group_size >= 1 required");
  py::gil_scoped_release release;
  const auto* v = reinterpret_cast<const uint8_t*>(valid);
  auto* c = reinterpret_cast<int32_t*>(counts);
  if (out_dtype == kFloat64)
    group_advantages_impl<double>(reinterpret_cast<const void*>(rewards), rdtype, v, reinterpret_cast<double*>(out), c,
                                  num_groups, group_size, mode, eps);
  else
    group_advantages_impl<float>(reinterpret_cast<const void*>(rewards), rdtype, v, reinterpret_cast<float*>(out), c,
                                 num_groups, group_size, mode, eps);
}

}  // namespace
}  // namespace mpo_fast

MPO_FAST_REGISTER(group_advantages) {
  m.def("group_advantages", &mpo_fast::group_advantages, py::arg("rewards_ptr"), py::arg("rewards_dtype"),
        py::arg("valid_ptr"), py::arg("out_ptr"), py::arg("out_dtype"), py::arg("counts_ptr"), py::arg("num_groups"),
        py::arg("group_size"), py::arg("mode"), py::arg("eps"),
        "Group-relative advantages over contiguous buffers (valid_ptr 0 = all valid; counts: int32 per group).");
}
