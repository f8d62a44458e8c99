"""Measurement tools for scripts/benchmark_icm.py and scripts/simulate_prefix_cache.py; no run executes them."""
