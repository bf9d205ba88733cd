// mpo_fast._C: the C++ CPU ops. Bindings register themselves (common/registry.h).
#include "common/registry.h"

#include <thread>

#ifdef MPO_FAST_HAVE_OPENMP
#include <omp.h>
#endif

namespace mpo_fast {
std::vector<Registrar>& registrars() {
  static std::vector<Registrar> r;
  return r;
}
}  // namespace mpo_fast

PYBIND11_MODULE(_C, m) {
  m.doc() = "mpo_fast C++ CPU ops (no libtorch: tensors are passed as data pointers)";
#ifdef MPO_FAST_HAVE_OPENMP
  m.attr("has_openmp") = true;
#else
  m.attr("has_openmp") = false;
#endif
  // The threads an `omp parallel` region of this module would use now (OMP_NUM_THREADS as the
  // runtime read it): tests check their 2-thread subprocess really runs the OpenMP paths (issue 18).
  m.def("openmp_max_threads", [] {
#ifdef MPO_FAST_HAVE_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.attr("hardware_threads") = static_cast<int>(std::thread::hardware_concurrency());
  for (auto r : mpo_fast::registrars()) r(m);
}
