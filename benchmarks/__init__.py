"""The benchmark suite of issue 5: `python -m benchmarks` (see benchmarks/run.py)."""
