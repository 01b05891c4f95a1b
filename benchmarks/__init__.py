"""Throughput, latency and memory benchmarks; one module per benchmark, `python -m benchmarks.run` runs them all."""
