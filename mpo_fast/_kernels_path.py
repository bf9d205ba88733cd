"""Make `mpo_fast.kernels` importable when mpo_fast runs from a source checkout.

The Triton sources live in the repository's top-level `kernels/` folder (the design card's
layout) and install as `mpo_fast.kernels`: an installed copy has a real
`mpo_fast/kernels/__init__.py`, written by setup.py's build step. A checkout has no such folder
inside `mpo_fast/`, and the top-level `kernels/` deliberately has no `__init__.py`: with one, running
Python from the repository root would make it shadow Hugging Face's `kernels` distribution, which
transformers imports (issue 12). So, in a checkout, this registers `mpo_fast.kernels` as a package
whose search path is that folder. Nothing is imported from it until an op asks for a kernel.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_DOC = """Triton kernels of mpo_fast: one module per op, each with its kernel(s) and host-side launcher.

They run on CUDA tensors, or on CPU tensors under the Triton interpreter (TRITON_INTERPRET=1, set
before triton is imported).
"""


def register_source_kernels() -> None:
    """Register `mpo_fast.kernels` -> <checkout>/kernels unless an installed copy exists."""
    name = "mpo_fast.kernels"
    if name in sys.modules:
        return
    package_dir = Path(__file__).resolve().parent
    if (package_dir / "kernels" / "__init__.py").is_file():
        return  # an installed (non-editable) copy: the regular subpackage is used
    source = package_dir.parent / "kernels"
    if not source.is_dir():
        return  # neither: `from mpo_fast.kernels import ...` raises ModuleNotFoundError as usual
    spec = importlib.machinery.ModuleSpec(name, None, is_package=True)
    spec.submodule_search_locations = [str(source)]
    module = importlib.util.module_from_spec(spec)
    module.__doc__ = _DOC
    sys.modules[name] = module
