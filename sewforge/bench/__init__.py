"""Benchmarks: ``python -m sewforge.bench neurons | step | compile | gpu-check`` (see BENCHMARKS.md)."""
