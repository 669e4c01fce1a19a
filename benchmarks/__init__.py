"""Benchmark harness: bulkgetty against curl -Z, aria2c, parfive and a bare aiohttp loop.

Run `python -m benchmarks --help`; see benchmarks/README.md for scenarios and targets.
"""
