"""Charge equations: what makes one neuron different from another.

A neuron's membrane update ``H[t] = f(V[t-1], X[t])`` is given once in PyTorch (the reference,
differentiated by autograd) and once as ``@triton.jit`` functions with its partial derivatives.
The kernel compiler (:mod:`sewforge.kernels.multistep`) composes these with any surrogate, reset
mode and detach choice into fused forward/backward kernels, so a new neuron needs no kernel code.

Conventions shared by both forms:

* ``params`` is a 1-D tensor (``P`` a pointer in Triton) of the neuron's scalar parameters in the
  compute dtype. Only ``params[0]`` may be learnable; ``dh_dp`` is the derivative with respect to
  it. The Triton functions read a parameter with ``tl.load(P + i)``.
* ``v_rest`` is the potential the neuron decays toward: ``v_reset`` for a hard reset, 0 for a soft
  reset (``v_reset=None``), as in SpikingJelly.
* The Triton derivatives take ``(v, x, h, P, v_rest)``: ``h`` is the charged potential of the same
  step, so derivatives that need ``x`` can often use ``h`` instead; set
  ``needs_input_in_backward=True`` only when they truly read ``x`` (it costs one more read per
  element in the backward pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from .._triton import jit, tl

__all__ = ["ChargeEquation", "IF_CHARGE", "LIF_CHARGE", "LIF_CHARGE_NO_DECAY_INPUT"]


@dataclass(frozen=True)
class ChargeEquation:
    """The membrane charge of one neuron type, in PyTorch and in Triton."""

    name: str
    #: ``(v, x, params, v_rest) -> h`` in PyTorch (differentiable).
    torch_charge: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
    #: ``@triton.jit (v, x, P, v_rest) -> h``.
    triton_charge: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dV``.
    triton_dh_dv: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dX``.
    triton_dh_dx: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dparams[0]``, or None when nothing is learnable.
    triton_dh_dp: Any = None
    #: Number of scalars in ``params``.
    num_params: int = 0
    needs_input_in_backward: bool = False

    def __repr__(self) -> str:
        return f"ChargeEquation({self.name!r})"


# ---- IF: H = V + X --------------------------------------------------------------------------
@jit
def _if_charge(v, x, P, v_rest):
    return v + x


@jit
def _one(v, x, h, P, v_rest):
    return v * 0.0 + 1.0


IF_CHARGE = ChargeEquation(
    name="IF",
    torch_charge=lambda v, x, p, v_rest: v + x,
    triton_charge=_if_charge,
    triton_dh_dv=_one,
    triton_dh_dx=_one,
)


# ---- LIF / PLIF with decay_input: H = V + (X - (V - v_rest)) * k, k = 1/tau ------------------
@jit
def _lif_charge(v, x, P, v_rest):
    k = tl.load(P)
    return v + (x - (v - v_rest)) * k


@jit
def _lif_dh_dv(v, x, h, P, v_rest):
    return v * 0.0 + (1.0 - tl.load(P))


@jit
def _lif_dh_dx(v, x, h, P, v_rest):
    return v * 0.0 + tl.load(P)


@jit
def _lif_dh_dk(v, x, h, P, v_rest):
    # X - (V - v_rest) == (H - V) / k, which saves reading X again in the backward pass
    return (h - v) / tl.load(P)


LIF_CHARGE = ChargeEquation(
    name="LIF",
    torch_charge=lambda v, x, p, v_rest: v + (x - (v - v_rest)) * p[0],
    triton_charge=_lif_charge,
    triton_dh_dv=_lif_dh_dv,
    triton_dh_dx=_lif_dh_dx,
    triton_dh_dp=_lif_dh_dk,
    num_params=1,
)


# ---- LIF / PLIF without decay_input: H = V - (V - v_rest) * k + X ---------------------------
@jit
def _lif_nd_charge(v, x, P, v_rest):
    k = tl.load(P)
    return v - (v - v_rest) * k + x


@jit
def _lif_nd_dh_dk(v, x, h, P, v_rest):
    return v_rest - v


LIF_CHARGE_NO_DECAY_INPUT = ChargeEquation(
    name="LIF(decay_input=False)",
    torch_charge=lambda v, x, p, v_rest: v - (v - v_rest) * p[0] + x,
    triton_charge=_lif_nd_charge,
    triton_dh_dv=_lif_dh_dv,
    triton_dh_dx=_one,
    triton_dh_dp=_lif_nd_dh_dk,
    num_params=1,
)
