"""Fused kernels and the dispatch between them and the PyTorch reference.

``SEWFORGE_BACKEND`` chooses: ``auto`` (default: Triton for CUDA tensors, the reference
otherwise), ``triton`` (also on CPU tensors when ``TRITON_INTERPRET=1`` was set before import), or
``torch`` (the reference everywhere).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import torch

from .._triton import HAS_TRITON, interpreting
from .reference import multistep_reference

__all__ = ["multistep_neuron", "resolve_backend", "HAS_TRITON", "BACKENDS"]

BACKENDS = ("auto", "triton", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_backend(x: torch.Tensor, backend: Optional[str] = None) -> str:
    """``"triton"`` or ``"torch"`` for a tensor, from the argument or ``SEWFORGE_BACKEND``."""
    source = "backend argument" if backend is not None else "SEWFORGE_BACKEND"
    choice = (backend if backend is not None else os.environ.get("SEWFORGE_BACKEND", "auto")).strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"{source}={choice!r} is not a backend; use one of {', '.join(BACKENDS)}")
    if choice == "auto":
        return "triton" if (HAS_TRITON and x.is_cuda) else "torch"
    if choice == "triton":
        if not HAS_TRITON:
            raise RuntimeError(f"{source}='triton' but Triton is not installed; install triton or use 'torch'")
        if not x.is_cuda and not interpreting():
            raise RuntimeError(
                f"{source}='triton' with a {x.device} tensor needs Triton's interpreter: set "
                "TRITON_INTERPRET=1 before importing sewforge, move the tensor to CUDA, or use 'torch'")
    return choice


def _check(x: torch.Tensor, shortcut: Optional[torch.Tensor], v0: Optional[torch.Tensor],
           v_threshold: float, v_reset: Optional[float]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"neuron input must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("neuron input must be a sequence [T, ...] with at least one dimension, got a scalar")
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"neuron input has dtype {x.dtype}; allowed: float16, bfloat16, float32, float64")
    if shortcut is not None:
        if shortcut.shape != x.shape:
            raise ValueError(f"shortcut S has shape {tuple(shortcut.shape)} but the input X has "
                             f"{tuple(x.shape)}; g(SN(X), S) needs equal shapes")
        if shortcut.device != x.device:
            raise ValueError(f"shortcut S is on {shortcut.device} but X is on {x.device}; put both on one device")
        if shortcut.dtype not in _FLOAT_DTYPES:
            raise ValueError(f"shortcut S has dtype {shortcut.dtype}; allowed: float16, bfloat16, float32, float64")
    if v0 is not None and (v0.shape != x.shape[1:] or v0.device != x.device):
        raise ValueError(f"initial state has shape {tuple(v0.shape)} on {v0.device}; expected "
                         f"{tuple(x.shape[1:])} on {x.device} (the input without its time dimension)")


def multistep_neuron(
    x: torch.Tensor,
    charge: Any,
    params: torch.Tensor,
    surrogate: Any,
    v_threshold: float = 1.0,
    v_reset: Optional[float] = 0.0,
    detach_reset: bool = True,
    *,
    v0: Optional[torch.Tensor] = None,
    shortcut: Optional[torch.Tensor] = None,
    g: Any = None,
    backend: Optional[str] = None,
    need_state: bool = False,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Run a neuron over all T steps: ``(out, v_last)``.

    ``out`` is the spike sequence shaped like ``x``, or ``g(spikes, shortcut)`` when ``g`` is
    given (the fused SEW op). ``v_last`` is the membrane potential after the last step (for
    streaming); it carries no gradient.
    """
    from ..elementwise import create_elementwise
    from ..surrogates import create_surrogate

    _check(x, shortcut, v0, v_threshold, v_reset)
    if shortcut is not None and g is None:
        raise ValueError("the fused SEW op g(SN(X), S): a shortcut was given without g; pass g='ADD', 'AND' "
                         "or 'IAND' (or no shortcut for plain spikes)")
    if g is not None and shortcut is None:
        name = g.name if hasattr(g, "name") else g
        raise ValueError(f"the fused SEW op g(SN(X), S): g={name!r} was given without a shortcut; pass "
                         "shortcut=S of the input's shape (or no g for plain spikes)")
    g_fn = create_elementwise(g) if g is not None else None
    sg = create_surrogate(surrogate)
    if resolve_backend(x, backend) == "triton":
        from .multistep import multistep_triton

        out, vt = multistep_triton(x, charge, params, sg, v_threshold, v_reset, detach_reset,
                                v0=v0, shortcut=shortcut, g=g_fn, need_vt=need_state)
        return out, (vt if need_state else None)
    out, v = multistep_reference(x, charge, params, sg, v_threshold, v_reset, detach_reset,
                                 v0=v0, shortcut=shortcut, g=g_fn)
    return out, (v.detach() if need_state else None)
