// mpo_fast._C: the C++ CPU ops. Bindings register themselves (common/registry.h).
#include "common/registry.h"

#include <thread>

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
  m.attr("hardware_threads") = static_cast<int>(std::thread::hardware_concurrency());
  for (auto r : mpo_fast::registrars()) r(m);
}
