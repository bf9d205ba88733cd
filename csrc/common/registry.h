// Self-registration of pybind11 bindings: each source file declares its own bindings with
// MPO_FAST_REGISTER(name) { m.def(...); } so adding an op never edits a central file.
// The module's single PYBIND11_MODULE (cpu/module.cpp, cuda/module.cpp) runs every registrar.
#pragma once
#include <pybind11/pybind11.h>

#include <vector>

namespace mpo_fast {
using Registrar = void (*)(pybind11::module_&);

// Defined once per extension module (in its module.cpp).
std::vector<Registrar>& registrars();

struct RegisterBindings {
  explicit RegisterBindings(Registrar r) { registrars().push_back(r); }
};
}  // namespace mpo_fast

#define MPO_FAST_REGISTER(name)                                                        \
  static void mpo_fast_register_##name(pybind11::module_& m);                          \
  static ::mpo_fast::RegisterBindings mpo_fast_registrar_##name(&mpo_fast_register_##name); \
  static void mpo_fast_register_##name(pybind11::module_& m)
