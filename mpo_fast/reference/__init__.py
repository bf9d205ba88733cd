"""Pure torch / pure Python oracles: readable, fp32 (fp64 for fp64 input) math.

Every fast path in mpo_fast is tested against these. This package imports nothing else of mpo_fast.
"""
