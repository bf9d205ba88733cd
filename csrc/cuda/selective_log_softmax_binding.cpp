// pybind11 bindings of the CUDA selective log-softmax (csrc/cuda/selective_log_softmax.cu).
#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/registry.h"
#include "cuda/check.h"

extern "C" cudaError_t mpo_cuda_sls_forward(const void* logits, int dtype, int64_t rows, int64_t cols,
                                             int64_t row_stride, const int64_t* ids, int64_t ignore_index,
                                             double inv_t, int with_entropy, void* logp, void* entropy, void* lse,
                                             cudaStream_t stream);
extern "C" cudaError_t mpo_cuda_sls_fold(void* tile, int dtype, int64_t rows, int64_t cols, int64_t row_stride,
                                          int64_t vocab_start, const int64_t* ids, int64_t ignore_index, double inv_t,
                                          int with_entropy, void* m, void* s, void* t, void* zt, void* alpha,
                                          cudaStream_t stream);
extern "C" cudaError_t mpo_cuda_sls_backward(const void* logits, int dtype, int64_t rows, int64_t cols,
                                              int64_t row_stride, int64_t vocab_start, const int64_t* ids,
                                              int64_t ignore_index, double inv_t, const void* lse,
                                              const void* entropy, const void* grad_logp, const void* grad_entropy,
                                              void* grad, int64_t grad_row_stride, cudaStream_t stream);

namespace py = pybind11;

namespace {
template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }
}  // namespace

MPO_FAST_REGISTER(selective_log_softmax) {
  m.def(
      "selective_log_softmax_forward",
      [](uintptr_t logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, uintptr_t ids,
         int64_t ignore_index, double inv_t, bool with_entropy, uintptr_t logp, uintptr_t entropy, uintptr_t lse,
         uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = mpo_cuda_sls_forward(ptr<const void>(logits), dtype, rows, cols, row_stride, ptr<const int64_t>(ids),
                                     ignore_index, inv_t, with_entropy ? 1 : 0, ptr<void>(logp), ptr<void>(entropy),
                                     ptr<void>(lse), stream_of(stream));
        }
        mpo_fast::throw_on_cuda_error(err, "mpo_fast._cuda.selective_log_softmax_forward");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
      py::arg("ids_ptr"), py::arg("ignore_index"), py::arg("inv_temperature"), py::arg("with_entropy"),
      py::arg("logp_ptr"), py::arg("entropy_ptr"), py::arg("lse_ptr"), py::arg("stream"));
  m.def(
      "selective_log_softmax_fold",
      [](uintptr_t tile, int dtype, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start, uintptr_t ids,
         int64_t ignore_index, double inv_t, bool with_entropy, uintptr_t mp, uintptr_t sp, uintptr_t tp,
         uintptr_t ztp, uintptr_t alphap, uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = mpo_cuda_sls_fold(ptr<void>(tile), dtype, rows, cols, row_stride, vocab_start,
                                  ptr<const int64_t>(ids), ignore_index, inv_t, with_entropy ? 1 : 0, ptr<void>(mp),
                                  ptr<void>(sp), ptr<void>(tp), ptr<void>(ztp), ptr<void>(alphap), stream_of(stream));
        }
        mpo_fast::throw_on_cuda_error(err, "mpo_fast._cuda.selective_log_softmax_fold");
      },
      py::arg("tile_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
      py::arg("vocab_start"), py::arg("ids_ptr"), py::arg("ignore_index"), py::arg("inv_temperature"),
      py::arg("with_entropy"), py::arg("m_ptr"), py::arg("s_ptr"), py::arg("t_ptr"), py::arg("zt_ptr"),
      py::arg("alpha_ptr"), py::arg("stream"));
  m.def(
      "selective_log_softmax_backward",
      [](uintptr_t logits, int dtype, int64_t rows, int64_t cols, int64_t row_stride, int64_t vocab_start,
         uintptr_t ids, int64_t ignore_index, double inv_t, uintptr_t lse, uintptr_t entropy, uintptr_t grad_logp,
         uintptr_t grad_entropy, uintptr_t grad, int64_t grad_row_stride, uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release release;
          err = mpo_cuda_sls_backward(ptr<const void>(logits), dtype, rows, cols, row_stride, vocab_start,
                                      ptr<const int64_t>(ids), ignore_index, inv_t, ptr<const void>(lse),
                                      ptr<const void>(entropy), ptr<const void>(grad_logp),
                                      ptr<const void>(grad_entropy), ptr<void>(grad), grad_row_stride,
                                      stream_of(stream));
        }
        mpo_fast::throw_on_cuda_error(err, "mpo_fast._cuda.selective_log_softmax_backward");
      },
      py::arg("logits_ptr"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
      py::arg("vocab_start"), py::arg("ids_ptr"), py::arg("ignore_index"), py::arg("inv_temperature"),
      py::arg("lse_ptr"), py::arg("entropy_ptr"), py::arg("grad_logp_ptr"), py::arg("grad_entropy_ptr"),
      py::arg("grad_ptr"), py::arg("grad_row_stride"), py::arg("stream"));
}
