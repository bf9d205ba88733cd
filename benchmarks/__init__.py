"""mpo_fast benchmarks: `python -m benchmarks.run --op NAME [--quick] [--device cpu|cuda] [--json]`."""
