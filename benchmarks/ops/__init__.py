"""One module per op, each with `run(ctx) -> Iterator[dict]` (records stamped by benchmarks.run).

Kernel ops also expose their provider table, `cases(ctx) -> Iterator[benchmarks.common.Case]`, and
build `run` from it with `common.run_cases`: both front ends (benchmarks.run and pytest-benchmark)
time the same calls."""
