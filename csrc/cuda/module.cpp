// mpo_fast._cuda: CUDA kernels behind a C ABI (device pointers, sizes, cudaStream_t), no libtorch.
// The CUDA runtime is linked statically: on a machine without a driver, importing this module works
// and device_count() reports 0 together with the runtime's error string.
#include <cuda_runtime_api.h>

#include <string>

#include "common/registry.h"

namespace py = pybind11;

namespace mpo_fast {
std::vector<Registrar>& registrars() {
  static std::vector<Registrar> r;
  return r;
}
}  // namespace mpo_fast

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "mpo_fast CUDA kernels (C ABI over device pointers; CUDA runtime linked statically)";
  m.attr("cuda_archs") = MPO_FAST_CUDA_ARCHS;
  m.attr("cuda_runtime_version") = CUDART_VERSION;
  m.def("device_count", []() -> py::tuple {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      std::string msg = cudaGetErrorString(err);
      cudaGetLastError();  // clear the sticky error so later calls start clean
      return py::make_tuple(0, msg);
    }
    return py::make_tuple(n, std::string());
  }, "(count, error): number of CUDA devices the statically linked runtime sees, and why not if 0");
  for (auto r : mpo_fast::registrars()) r(m);
}
