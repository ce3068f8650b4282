"""The charge equations of the core neurons (IF, LIF / PLIF), in every form the kernels take.

The interface, :class:`sewforge.kernels.charge.ChargeEquation`, belongs to the kernels that consume
it; this module only defines the paper's equations.
"""
from __future__ import annotations

from .._triton import jit, tl
from ..kernels.charge import ChargeEquation

__all__ = ["ChargeEquation", "IF_CHARGE", "LIF_CHARGE", "LIF_CHARGE_NO_DECAY_INPUT"]


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
    c_charge="v + x", c_dh_dv="1", c_dh_dx="1",
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
    c_charge="v + (x - (v - v_rest)) * p0", c_dh_dv="1 - p0", c_dh_dx="p0", c_dh_dp="(h - v) / p0",
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
    c_charge="v - (v - v_rest) * p0 + x", c_dh_dv="1 - p0", c_dh_dx="1", c_dh_dp="v_rest - v",
)
