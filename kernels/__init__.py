"""Triton kernels of mpo_fast, installed as the subpackage `mpo_fast.kernels`.

Each module holds one op's kernel(s) and host-side launcher. They run on CUDA tensors, or on CPU
tensors under the Triton interpreter (TRITON_INTERPRET=1, set before triton is imported).
"""
