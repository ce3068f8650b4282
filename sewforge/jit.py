"""What an element definition (a surrogate's derivative, a neuron's charge, an element-wise
function) needs to give its Triton form, for plugins as for sewforge itself:

    import triton.language as tl      # or: from sewforge.jit import tl
    from sewforge.jit import jit

``jit`` is ``triton.jit`` when Triton is installed, else the plain function (never launched: the
PyTorch and C forms are used); ``tl`` is ``triton.language`` or None; ``HAS_TRITON`` says which.
"""
from __future__ import annotations

from ._triton import HAS_TRITON, interpreting, jit, tl

__all__ = ["jit", "tl", "HAS_TRITON", "interpreting"]
