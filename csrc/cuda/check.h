// Error checking for the CUDA C ABI: launchers return cudaError_t; bindings raise it as a Python error.
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace mpo_fast {
inline void throw_on_cuda_error(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
}  // namespace mpo_fast
