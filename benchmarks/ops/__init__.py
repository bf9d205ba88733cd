"""One module per op, each with `run(ctx) -> Iterator[dict]` (records stamped by benchmarks.run)."""
