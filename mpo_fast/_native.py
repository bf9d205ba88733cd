"""The two native extension modules, imported once, each with the reason it could not be.

Neither links libtorch: Python hands them `tensor.data_ptr()`, sizes and a dtype code.
"""
from __future__ import annotations

import contextlib
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


class CudaLaunches:
    """mpo_fast._cuda's functions, each called with `device` current and its stream appended.

    The C-ABI kernels launch on the thread's current CUDA device. With tensors on cuda:1 while
    cuda:0 is current (the default in a process that never set a device), the launch would pair a
    cuda:1 stream and cuda:1 pointers with a cuda:0 context: "invalid resource handle", or a kernel
    on the wrong GPU. Every launch therefore runs inside torch.cuda.device(tensor's device), as
    torch's own ops do with their DeviceGuard (issue 18). Use: cuda_launches(t.device).gae(*args).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDA kernels need CUDA tensors, got tensors on {self.device}")

    def __getattr__(self, name: str):
        if cuda_ext is None:
            raise RuntimeError(f"mpo_fast._cuda is not importable ({cuda_ext_error}); rebuild with nvcc on PATH")
        fn = getattr(cuda_ext, name)
        device = self.device

        def launch(*args):
            with torch.cuda.device(device):
                return fn(*args, torch.cuda.current_stream(device).cuda_stream)

        launch.__name__ = name
        return launch


def cuda_launches(device: torch.device) -> CudaLaunches:
    return CudaLaunches(device)


def on_device(device: torch.device):
    """torch.cuda.device(device) for CUDA tensors, a no-op otherwise: Triton launches on the current
    device (and its current stream) whatever its pointers' device, like the C-ABI kernels above."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
