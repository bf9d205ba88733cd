"""The two native extension modules, imported once, each with the reason it could not be.

Neither links libtorch: Python hands them `tensor.data_ptr()`, sizes and a dtype code.
"""
from __future__ import annotations

import importlib

import torch

# Keep in sync with csrc/common/dtype.h (enum DType).
DTYPE_CODES = {
    torch.float32: 0,
    torch.float64: 1,
    torch.bfloat16: 2,
    torch.float16: 3,
    torch.int32: 4,
    torch.int64: 5,
    torch.bool: 6,
    torch.int8: 7,
}


def dtype_code(dtype: torch.dtype) -> int:
    try:
        return DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"dtype {dtype} has no native code; expected one of {list(DTYPE_CODES)}") from None


def _try_import(name: str):
    try:
        return importlib.import_module(name), ""
    except ImportError as exc:  # not built, or built for another Python / ABI
        return None, f"{type(exc).__name__}: {exc}"


cpu_ext, cpu_ext_error = _try_import("mpo_fast._C")
cuda_ext, cuda_ext_error = _try_import("mpo_fast._cuda")


def cuda_stream_handle(device: torch.device) -> int:
    """The raw cudaStream_t of torch's current stream on `device`, for the C ABI."""
    return torch.cuda.current_stream(device).cuda_stream
