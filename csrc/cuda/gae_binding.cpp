#include <cuda_runtime_api.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>

#include "common/dtype.h"
#include "common/registry.h"
#include "cuda/check.h"

extern "C" cudaError_t mpo_cuda_gae(const void* rew, int rew_dtype, int64_t rew_sb, int64_t rew_st, const void* val,
                                    int val_dtype, int64_t val_sb, int64_t val_st, const void* msk, int msk_dtype,
                                    int64_t msk_sb, int64_t msk_st, int64_t B, int64_t T, double gamma, double lam,
                                    int acc_dtype, void* adv, void* ret, cudaStream_t stream);

namespace py = pybind11;

namespace {
// (device ptr, dtype code, stride_b, stride_t): as mpo_fast/ops/gae.py hands it over.
using RowsArg = std::tuple<uintptr_t, int, int64_t, int64_t>;

void check_rows(const RowsArg& a, const char* what, bool allow_bool) {
  using namespace mpo_fast;
  const int dt = std::get<1>(a);
  const bool ok = dt == kFloat32 || dt == kFloat64 || dt == kBFloat16 || dt == kFloat16 || (allow_bool && dt == kBool);
  if (!ok) throw std::invalid_argument(std::string("mpo_fast._cuda.gae: ") + what + " has unsupported dtype code " + std::to_string(dt));
  if (std::get<0>(a) == 0) throw std::invalid_argument(std::string("mpo_fast._cuda.gae: ") + what + " is a null pointer");
}
}  // namespace

MPO_FAST_REGISTER(gae) {
  m.def(
      "gae",
      [](const RowsArg& rew, const RowsArg& val, const RowsArg& msk, int64_t B, int64_t T, double gamma, double lam,
         int acc_dtype, uintptr_t adv, uintptr_t ret, uintptr_t stream) {
        check_rows(rew, "rewards", false);
        check_rows(val, "values", false);
        check_rows(msk, "mask", true);
        if (B < 0 || T < 0) throw std::invalid_argument("mpo_fast._cuda.gae: B, T >= 0 required");
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = mpo_cuda_gae(reinterpret_cast<const void*>(std::get<0>(rew)), std::get<1>(rew), std::get<2>(rew),
                             std::get<3>(rew), reinterpret_cast<const void*>(std::get<0>(val)), std::get<1>(val),
                             std::get<2>(val), std::get<3>(val), reinterpret_cast<const void*>(std::get<0>(msk)),
                             std::get<1>(msk), std::get<2>(msk), std::get<3>(msk), B, T, gamma, lam, acc_dtype,
                             reinterpret_cast<void*>(adv), reinterpret_cast<void*>(ret),
                             reinterpret_cast<cudaStream_t>(stream));
        }
        mpo_fast::throw_on_cuda_error(err, "mpo_fast._cuda.gae");
      },
      py::arg("rewards"), py::arg("values"), py::arg("mask"), py::arg("B"), py::arg("T"), py::arg("gamma"),
      py::arg("lam"), py::arg("acc_dtype"), py::arg("out_adv"), py::arg("out_ret"), py::arg("stream"),
      "GAE on device pointers: inputs (ptr, dtype, stride_b, stride_t), outputs contiguous acc-dtype [B, T].");
}
