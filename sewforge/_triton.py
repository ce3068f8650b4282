"""Optional Triton import.

Triton ships with the Linux builds of torch; where it is missing (CPU-only wheels, macOS) the
element definitions still import and the PyTorch reference is used everywhere.
"""
from __future__ import annotations

import os

try:  # pragma: no cover - depends on the installation
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover
    triton = None
    tl = None
    HAS_TRITON = False


def jit(fn=None, **kwargs):
    """``triton.jit`` (with its keyword arguments) when Triton is installed, else the plain
    function, which is then never launched."""
    if fn is None:
        return lambda f: jit(f, **kwargs)
    return triton.jit(fn, **kwargs) if HAS_TRITON else fn


def interpreting() -> bool:
    """True when Triton kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
