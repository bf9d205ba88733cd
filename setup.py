"""setup.py hands the native build over to CMakeLists.txt (the one build truth).

Two extension modules, neither linking libtorch, so they build wherever a C++17 compiler (and
nvcc) exist, whatever torch is installed:
  mpo_fast._C     C++ CPU ops (pybind11, OpenMP when found). Always built.
  mpo_fast._cuda  CUDA kernels behind a C ABI (device pointers + cudaStream_t), CUDA runtime linked
                  statically so `import mpo_fast` works on machines with no GPU or driver.
                  Built when nvcc is found; MPO_FAST_SKIP_CUDA=1 skips it.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

PREREQS_FIX = 'pip install "pybind11>=2.12" "setuptools>=77"'


def _version_tuple(text):
    parts = []
    for piece in str(text).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_build_prerequisites():
    """With build isolation pip installs pyproject's build requirements itself; with
    --no-build-isolation (against a CUDA torch already installed) they must be there already, and
    the failures they cause otherwise (pyproject's SPDX license string rejected by setuptools < 77,
    pybind11's CMake config missing) do not say what to install."""
    problems = []
    try:
        import setuptools
    except ImportError:
        problems.append("setuptools is not installed")
    else:
        if _version_tuple(setuptools.__version__) < (77,):
            problems.append(f"setuptools {setuptools.__version__} is older than 77")
    try:
        import pybind11
    except ImportError:
        problems.append("pybind11 is not installed")
    else:
        if _version_tuple(pybind11.__version__) < (2, 12):
            problems.append(f"pybind11 {pybind11.__version__} is older than 2.12")
    if problems:
        raise SystemExit(
            "mpo_fast cannot build: " + "; ".join(problems) + ". Building with --no-build-isolation uses the "
            f"packages already installed, so first run:\n    {PREREQS_FIX}\n(an offline GPU machine: install them "
            "from the wheelhouse scripts/gpu_wheelhouse.sh prepares, with pip install --no-index --find-links .wheelhouse)"
        )


check_build_prerequisites()

from setuptools import Extension, setup  # noqa: E402
from setuptools.command.build_ext import build_ext  # noqa: E402
from setuptools.command.build_py import build_py  # noqa: E402

ROOT = Path(__file__).resolve().parent


def find_nvcc():
    if os.environ.get("MPO_FAST_SKIP_CUDA", "0") not in ("", "0"):
        return None
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    candidates.append(os.path.join(cuda_home, "bin", "nvcc"))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure and build every CMake target once, then put each module where setuptools wants it."""

    def run(self):
        if shutil.which("cmake") is None:
            raise RuntimeError("cmake (3.18 or newer) is needed to build mpo_fast: apt-get install cmake, or pip install cmake")
        self._built = False
        super().run()

    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        if not self._built:
            self._cmake_build(out_dir)
            self._built = True

    def _cmake_build(self, out_dir):
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)
        import pybind11

        nvcc = find_nvcc()
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('MPO_FAST_BUILD_TYPE', 'Release')}",
            f"-DMPO_FAST_BUILD_CUDA={'ON' if nvcc else 'OFF'}",
        ]
        if nvcc:
            args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        if os.environ.get("MPO_FAST_CUDA_ARCHS"):
            args.append(f"-DCMAKE_CUDA_ARCHITECTURES={os.environ['MPO_FAST_CUDA_ARCHS']}")
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 2)
        subprocess.check_call(["cmake", str(ROOT), *args], cwd=build_temp)
        subprocess.check_call(["cmake", "--build", ".", "--parallel", jobs], cwd=build_temp)


class BuildPy(build_py):
    """Copy the Python sources, then give the installed `mpo_fast.kernels` its `__init__.py`.

    The top-level `kernels/` folder has no `__init__.py` on purpose: from the repository root a
    regular package there would shadow Hugging Face's `kernels` (see kernels/README.md). The
    installed copy is a subpackage of mpo_fast, where no such clash exists, so it gets one.
    """

    def run(self):
        super().run()
        init = Path(self.build_lib) / "mpo_fast" / "kernels" / "__init__.py"
        if init.parent.is_dir() and not init.exists():
            init.write_text('"""Triton kernels of mpo_fast: one module per op (kernel and launcher)."""\n')


ext_modules = [CMakeExtension("mpo_fast._C")]
if find_nvcc():
    ext_modules.append(CMakeExtension("mpo_fast._cuda"))

setup(
    packages=[
        p
        for p in __import__("setuptools").find_packages(include=["mpo_fast", "mpo_fast.*"])
    ]
    + ["mpo_fast.kernels"],
    # Triton sources live in the top-level kernels/ folder but install as mpo_fast.kernels, so they
    # never clash with another distribution's top-level `kernels` package.
    package_dir={"mpo_fast.kernels": "kernels"},
    package_data={"mpo_fast": ["tasks/data/*.jsonl", "tasks/data/*.json", "py.typed", "configs/*.yaml", "configs/rubrics/*.yaml"]},
    include_package_data=False,
    ext_modules=ext_modules,
    cmdclass={"build_ext": CMakeBuild, "build_py": BuildPy},
    zip_safe=False,
)
