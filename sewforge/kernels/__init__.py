"""Fused kernels and the dispatch between them and the PyTorch reference.

``SEWFORGE_BACKEND`` (or a neuron's ``backend=``) chooses: ``auto`` (default: the Triton kernels
for CUDA tensors, the fused CPU kernels for CPU tensors, the reference on other devices),
``triton`` (also on CPU tensors when ``TRITON_INTERPRET=1`` was set before import), ``cpu`` (the
fused CPU kernels) or ``torch`` (the PyTorch reference, :mod:`sewforge.kernels.reference`: the
ground truth of the tests, differentiated by autograd; the only path with second derivatives).
The fused paths run as ``torch.library`` custom ops (:mod:`sewforge.kernels.ops`), so
``torch.compile`` sees one node per neuron.
"""
from __future__ import annotations

import os
from typing import Any, NamedTuple, Optional

import torch

from .._triton import HAS_TRITON, interpreting
from .reference import multistep_reference

__all__ = ["multistep_neuron", "resolve_backend", "NeuronResult", "HAS_TRITON", "BACKENDS"]

BACKENDS = ("auto", "triton", "cpu", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_backend(x: torch.Tensor, backend: Optional[str] = None) -> str:
    """``"triton"``, ``"cpu"`` or ``"torch"`` for a tensor, from the argument or ``SEWFORGE_BACKEND``."""
    source = "backend argument" if backend is not None else "SEWFORGE_BACKEND"
    choice = (backend if backend is not None else os.environ.get("SEWFORGE_BACKEND", "auto")).strip().lower()
    if choice not in BACKENDS:
        raise ValueError(f"{source}={choice!r} is not a backend; use one of {', '.join(BACKENDS)}")
    if choice == "auto":
        if x.is_cuda:
            return "triton" if HAS_TRITON else "torch"
        return "cpu" if x.device.type == "cpu" else "torch"
    if choice == "cpu" and x.device.type != "cpu":
        raise RuntimeError(f"{source}='cpu' with a {x.device} tensor: the fused CPU kernels take CPU tensors; "
                           "use 'auto' (or 'triton' on CUDA, 'torch' elsewhere)")
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
    count: bool = False,
) -> "NeuronResult":
    """Run a neuron over all T steps: ``(out, v_last, spike_count)``.

    ``out`` is the spike sequence shaped like ``x`` (and in its memory layout), or
    ``g(spikes, shortcut)`` when ``g`` is given (the fused SEW op). ``v_last`` is the membrane
    potential after the last step when ``need_state`` (for streaming); it carries no gradient.
    ``spike_count`` (when ``count``) is a 1-element float64 tensor: the number of the neuron's own
    spikes (before g) over all steps and elements, counted inside the fused op.
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
    impl = resolve_backend(x, backend)
    if impl != "torch":
        from .ops import fused_neuron
        from .spec import resolve

        if charge.num_params and params.numel() < charge.num_params:
            raise ValueError(f"neuron {charge.name} needs {charge.num_params} parameters, got {params.numel()}")
        dtype = x.dtype if shortcut is None or g_fn is None else torch.promote_types(x.dtype, shortcut.dtype)
        key, how = resolve(charge, type(sg), g_fn, v_reset is not None, detach_reset, dtype, impl)
        out, vt, c = fused_neuron(x, key, how, params, sg.alpha, v_threshold, v_reset, v0=v0,
                                  shortcut=shortcut if g_fn is not None else None, need_state=need_state,
                                  count=count)
        return NeuronResult(out, vt, c)
    out, v = multistep_reference(x, charge, params, sg, v_threshold, v_reset, detach_reset,
                                 v0=v0, shortcut=shortcut, g=g_fn)
    c = None
    if count:
        with torch.no_grad():  # the neuron's own spikes: the reference run again without g
            a = out if g_fn is None else multistep_reference(x.detach(), charge, params.detach(), sg, v_threshold,
                                                             v_reset, detach_reset, v0=v0)[0]
            c = a.sum(dtype=torch.float64).reshape(1)
    return NeuronResult(out, v.detach() if need_state else None, c)


class NeuronResult(NamedTuple):
    """What :func:`multistep_neuron` returns."""

    out: torch.Tensor
    v_last: Optional[torch.Tensor]
    spike_count: Optional[torch.Tensor]
