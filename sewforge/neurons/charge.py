"""The charge equations of the core neurons (IF, LIF / PLIF), each written once as a step function.

The PyTorch, C and Triton forms and every partial derivative are derived from these functions by
:func:`sewforge.kernels.derive.charge_from_step`; ``p.v_rest`` is ``v_reset`` for a hard reset and 0
for a soft one, as in SpikingJelly.
"""
from __future__ import annotations

from ..kernels.charge import ChargeEquation
from ..kernels.derive import charge_from_step

__all__ = ["ChargeEquation", "IF_CHARGE", "LIF_CHARGE", "LIF_CHARGE_NO_DECAY_INPUT"]


def integrate_and_fire(v, x, p):
    return v + x


def leaky_integrate_and_fire(v, x, p):
    # k = 1 / tau; the input decays with the potential (SpikingJelly's decay_input=True)
    return v + (x - (v - p.v_rest)) * p.k


def leaky_integrate_and_fire_no_decay_input(v, x, p):
    return v - (v - p.v_rest) * p.k + x


IF_CHARGE = charge_from_step(integrate_and_fire, name="IF")
LIF_CHARGE = charge_from_step(leaky_integrate_and_fire, params=("k",), name="LIF")
LIF_CHARGE_NO_DECAY_INPUT = charge_from_step(leaky_integrate_and_fire_no_decay_input, params=("k",),
                                             name="LIF(decay_input=False)")
