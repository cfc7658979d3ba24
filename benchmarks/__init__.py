"""Microbenchmarks comparing Fabric with Ray Core on identical workload code.

Run ``python -m benchmarks.run --help`` from the repository root.
"""
