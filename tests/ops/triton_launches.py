"""Record every Triton launch the ops make, then compile each recorded variant for a GPU target.

Issue 18: kernels that only ever ran in the interpreter (TRITON_INTERPRET=1) can still fail to lower
for a real GPU (a dtype the PTX backend rejects, a reduction layout, shared memory over the limit).
Rather than hand-write each kernel's signature, the ops are driven in the interpreter through every
choice their dispatch makes (dtypes, constexpr flags, the block sizes each shape picks); each launch
is recorded as (kernel, signature, constexprs, num_warps). A subprocess WITHOUT the interpreter then
lowers each one to a cubin with `triton.compile(ASTSource, target=GPUTarget("cuda", arch, 32))`:
ptxas ships with triton, so no GPU is needed.

Used by tests/ops/test_triton_compile.py.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json

import torch

_TORCH_TO_TRITON = {
    torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "i1",
}


def _encode_constexpr(value):
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return {"tl_dtype": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot record constexpr value {value!r} ({type(value).__name__})")


def _scalar_type(value) -> str:
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"cannot type kernel argument {value!r} ({type(value).__name__})")


def _describe(fn, args, kwargs) -> dict:
    """One launch as JSON-able data: module + name, signature types, constexpr values, num_warps."""
    import triton

    params = list(inspect.signature(fn).parameters.values())
    bound = dict(zip([p.name for p in params], args))
    meta = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
    bound.update({k: v for k, v in kwargs.items() if k not in meta})
    signature, constexprs = {}, {}
    for p in params:
        is_constexpr = p.annotation is not inspect.Parameter.empty and "constexpr" in str(p.annotation)
        if p.name not in bound:
            if p.default is inspect.Parameter.empty:
                raise TypeError(f"{fn.__name__}: argument {p.name} missing from the launch")
            value = p.default
        else:
            value = bound[p.name]
        if isinstance(value, triton.language.constexpr):
            value = value.value
        if is_constexpr or value is None:
            constexprs[p.name] = _encode_constexpr(value)
        elif isinstance(value, torch.Tensor):
            signature[p.name] = "*" + _TORCH_TO_TRITON[value.dtype]
        else:
            signature[p.name] = _scalar_type(value)
    return {
        "module": fn.__module__, "name": fn.__name__, "signature": signature, "constexprs": constexprs,
        "num_warps": int(meta.get("num_warps", 4)),
    }


@contextlib.contextmanager
def record_launches():
    """Within the block, every interpreted Triton launch is appended (deduplicated) to the yielded list."""
    from triton.runtime.interpreter import InterpretedFunction

    seen: list[dict] = []
    keys: set[str] = set()
    original = InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        d = _describe(self.fn, args, kwargs)
        key = json.dumps(d, sort_keys=True)
        if key not in keys:
            keys.add(key)
            seen.append(d)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield seen
    finally:
        InterpretedFunction.run = original


def compile_recorded(launches: list[dict], arch: int) -> list[str]:
    """Lower each recorded launch for sm_<arch>; returns one line per cubin (name, regs, spills, smem).

    Must run where TRITON_INTERPRET is unset (the kernels must be JITFunctions, not interpreted ones).
    """
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    lines = []
    for d in launches:
        fn = getattr(importlib.import_module(d["module"]), d["name"])
        consts = {}
        for name, enc in d["constexprs"].items():
            consts[name] = tl.dtype(enc["tl_dtype"]) if "tl_dtype" in enc else enc["value"]
        sig = {**d["signature"], **{c: "constexpr" for c in consts}}
        src = ASTSource(fn=fn, signature=sig, constexprs=consts)
        try:
            k = triton.compile(src, target=target, options={"num_warps": d["num_warps"]})
        except Exception as e:  # name the variant: the bare compiler error does not
            raise RuntimeError(f"sm_{arch}: {d['name']} {d['constexprs']} {d['signature']} failed: {e}") from e
        md = k.metadata
        lines.append(f"sm_{arch} {d['name']} warps={d['num_warps']} shared={md.shared} "
                     f"consts={ {n: v.get('value', v.get('tl_dtype')) for n, v in d['constexprs'].items()} }")
    return lines
