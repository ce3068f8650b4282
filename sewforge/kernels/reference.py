"""PyTorch reference of the multi-step neuron (and fused SEW) op: the ground truth.

A plain loop over time differentiated by autograd. It is the CPU path and what every kernel test
compares against; it shares no derivative code with the kernels (those are written by hand in
Triton, this one is derived by autograd), so agreement between the two is a real check.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple

import torch

from ..surrogates import spike

if TYPE_CHECKING:
    from ..elementwise import ElementwiseFunction
    from .charge import ChargeEquation
    from ..surrogates import Surrogate


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Neuron state is kept in fp32 (fp64 for fp64 inputs), whatever the input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def multistep_reference(
    x: torch.Tensor,
    charge: "ChargeEquation",
    params: torch.Tensor,
    surrogate: "Surrogate",
    v_threshold: float,
    v_reset: Optional[float],
    detach_reset: bool,
    v0: Optional[torch.Tensor] = None,
    shortcut: Optional[torch.Tensor] = None,
    g: Optional["ElementwiseFunction"] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Returns ``(out, v_last)``: spikes (or ``g(spikes, shortcut)``) shaped like ``x``, and the
    membrane potential after the last step in the compute dtype."""
    cd = compute_dtype(x.dtype)
    v_rest = 0.0 if v_reset is None else float(v_reset)
    p = params.to(cd)
    v = torch.full(x.shape[1:], v_rest, dtype=cd, device=x.device) if v0 is None else v0.to(cd)
    out_dtype = x.dtype if g is None else torch.promote_types(x.dtype, shortcut.dtype)
    if x.shape[0] == 0:  # no step: empty output (still connected to the graph), state at rest
        empty = x.to(out_dtype) if g is None else x.to(out_dtype) + shortcut.to(out_dtype)
        return empty, v
    outs = []
    for t in range(x.shape[0]):
        h = charge.torch_charge(v, x[t].to(cd), p, v_rest)
        s = spike(h - v_threshold, surrogate)
        s_r = s.detach() if detach_reset else s
        if v_reset is None:
            v = h - s_r * v_threshold
        else:
            v = h * (1.0 - s_r) + v_reset * s_r
        o = s if g is None else g.torch_fn(s, shortcut[t].to(cd))
        outs.append(o.to(out_dtype))
    return torch.stack(outs), v
