#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/registry.h"
#include "cuda/check.h"

extern "C" cudaError_t mpo_cuda_group_advantages(const void* rewards, int rdtype, const uint8_t* valid, void* out,
                                                  int32_t* counts, int64_t num_groups, int64_t group_size, int mode,
                                                  double eps, cudaStream_t stream);

namespace py = pybind11;

MPO_FAST_REGISTER(group_advantages) {
  m.def(
      "group_advantages",
      [](uintptr_t rewards, int rdtype, uintptr_t valid, uintptr_t out, uintptr_t counts, int64_t num_groups,
         int64_t group_size, int mode, double eps, uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = mpo_cuda_group_advantages(reinterpret_cast<const void*>(rewards), rdtype,
                                          reinterpret_cast<const uint8_t*>(valid), reinterpret_cast<void*>(out),
                                          reinterpret_cast<int32_t*>(counts), num_groups, group_size, mode, eps,
                                          reinterpret_cast<cudaStream_t>(stream));
        }
        mpo_fast::throw_on_cuda_error(err, "mpo_fast._cuda.group_advantages");
      },
      py::arg("rewards_ptr"), py::arg("rewards_dtype"), py::arg("valid_ptr"), py::arg("out_ptr"),
      py::arg("counts_ptr"), py::arg("num_groups"), py::arg("group_size"), py::arg("mode"), py::arg("eps"),
      py::arg("stream"));
}
