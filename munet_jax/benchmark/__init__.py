"""Benchmark suite: `python -m munet_jax.benchmark --help`."""
