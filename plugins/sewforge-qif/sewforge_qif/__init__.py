"""A sewforge plugin: the quadratic integrate-and-fire neuron and the fast-sigmoid surrogate.

The neuron is one step function: sewforge derives its PyTorch, C and Triton forms and their
derivatives, and composes them into its fused GPU and CPU kernels with any surrogate, reset mode
and SEW function. The surrogate is its derivative in PyTorch, Triton and C. After ``pip install``:

    >>> import sewforge
    >>> sewforge.create_neuron("QIF", tau=2.0, a0=1.0, v_c=0.8)
"""
from __future__ import annotations

import math

import torch

from sewforge.jit import jit, tl  # tl is None without Triton; the interpreter needs it here
from sewforge.neurons import BaseNeuron, ChargeEquation, charge_from_step, check_tau
from sewforge.registry import NEURONS, SURROGATES
from sewforge.surrogates import Surrogate

__all__ = ["QIFNode", "FastSigmoid", "QIF_CHARGE"]
__version__ = "0.1.0"


def quadratic_integrate_and_fire(v, x, p):
    # k = 1 / tau; the neuron's kernels and gradients are derived from this one function
    return v + (x + p.a0 * (v - p.v_rest) * (v - p.v_c)) * p.k


QIF_CHARGE = charge_from_step(quadratic_integrate_and_fire, params=("k", "a0", "v_c"), learnable=(), name="QIF")


@NEURONS.register("QIF", description="quadratic integrate-and-fire: H = V + (X + a0 (V - V_rest)(V - V_c)) / tau")
class QIFNode(BaseNeuron):
    """Quadratic integrate-and-fire neuron (a neuron that is not in sewforge's core)."""

    def __init__(self, tau: float = 2.0, a0: float = 1.0, v_c: float = 0.8, **kw):
        super().__init__(**kw)
        self.tau = check_tau("tau", tau, "QIFNode")
        if not (math.isfinite(a0) and a0 > 0):
            raise ValueError(f"QIFNode: a0 must be a finite number > 0, got {a0!r}")
        if not math.isfinite(v_c):
            raise ValueError(f"QIFNode: v_c must be a finite number, got {v_c!r}")
        self.a0, self.v_c = float(a0), float(v_c)
        self.register_buffer("_p", torch.tensor([1.0 / self.tau, self.a0, self.v_c]), persistent=False)

    def charge_equation(self) -> ChargeEquation:
        return QIF_CHARGE

    def charge_params(self) -> torch.Tensor:
        return self._p


@jit
def _fast_sigmoid_d(x, alpha):
    z = 1.0 + alpha * tl.abs(x)
    return 0.5 * alpha / (z * z)


@SURROGATES.register("FastSigmoid", description="fast sigmoid (SuperSpike): alpha / (2 (1 + alpha |x|)^2)")
class FastSigmoid(Surrogate):
    """sigma(x) = 1/2 + alpha x / (2 (1 + alpha |x|)), Zenke & Ganguli's SuperSpike."""

    default = 2.0
    triton_derivative = _fast_sigmoid_d
    c_derivative = "(real)0.5 * alpha / ((1 + alpha * FABS(x)) * (1 + alpha * FABS(x)))"

    def derivative(self, x):
        return 0.5 * self.alpha / (1 + self.alpha * x.abs()) ** 2

    def primitive(self, x):
        return 0.5 + 0.5 * self.alpha * x / (1 + self.alpha * x.abs())
