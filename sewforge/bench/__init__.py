"""Benchmarks: ``python -m sewforge.bench neurons``. Results go to BENCHMARKS.md, device named."""
