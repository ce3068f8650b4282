"""Neurons written as step functions: several state variables, the previous spike, per-channel
parameters. Each is a few lines; sewforge derives its reference, kernels and gradients.

Conventions (see :mod:`sewforge.kernels.multistate`): ``step`` takes the states (the potential
``v`` first), ``x``, optionally ``s`` (the neuron's spike of the previous step, 0 at the first
step) and ``p``, and returns the charged value of every state; ``fire`` (default: ``v``) is the
value compared with ``v_threshold``; the reset acts on ``v`` only. A spike at step t reaches the
other states through ``s`` at step t + 1.
"""
from __future__ import annotations

from ..registry import NEURONS
from .core import LTLIFNode
from .stepdef import Param, StepNeuron

__all__ = ["ALIFNode", "IzhikevichNode", "CUBALIFNode", "ChannelLIFNode"]

NEURONS.register("LTLIF", description="LIF with a learnable decay and a learnable threshold per layer")(LTLIFNode)


@NEURONS.register("ALIF", description="adaptive LIF: each spike raises the threshold, which decays back")
class ALIFNode(StepNeuron):
    """Adaptive LIF (Bellec et al. 2018): the neuron fires when ``v - beta * a`` reaches the
    threshold; ``a`` decays by ``rho`` per step and grows by 1 the step after each spike."""

    states = ("v", "a")
    params = {"k": Param(0.5), "rho": Param(0.9), "beta": Param(0.5, learnable=True)}

    @staticmethod
    def step(v, a, x, s, p):
        return v + (x - (v - p.v_rest)) * p.k, p.rho * a + s

    @staticmethod
    def fire(v, a, p):
        return v - p.beta * a


@NEURONS.register("Izhikevich", description="Izhikevich neuron (quadratic potential, recovery variable), "
                                            "scaled to inputs of order 1 and threshold 1")
class IzhikevichNode(StepNeuron):
    """Izhikevich's two-variable neuron, made dimensionless: ``v`` is 0 at rest and runs away above
    1 (the threshold), ``u`` recovers toward ``b * v`` at rate ``a`` and jumps by ``d`` the step
    after a spike (the reset of ``v`` is the neuron's ``v_reset``, Izhikevich's ``c``)."""

    states = ("v", "u")
    params = {"dt": Param(0.5), "a": Param(0.2), "b": Param(0.2), "d": Param(0.1)}

    @staticmethod
    def step(v, u, x, s, p):
        return v + p.dt * (v * v - v - u + x), u + p.dt * p.a * (p.b * v - u) + p.d * s


@NEURONS.register("CUBALIF", description="current-based LIF: the input charges a decaying synaptic current")
class CUBALIFNode(StepNeuron):
    """Current-based LIF: the synaptic current ``i`` decays by ``syn`` per step and integrates the
    input; the potential integrates the current (``k = 1/tau``)."""

    states = ("v", "i")
    params = {"k": Param(0.5), "syn": Param(0.5, learnable=True)}

    @staticmethod
    def step(v, i, x, p):
        return v + (p.syn * i + x - (v - p.v_rest)) * p.k, p.syn * i + x


@NEURONS.register("ChannelLIF", description="LIF with a learnable decay and threshold per channel (channels=C)")
class ChannelLIFNode(StepNeuron):
    """LIF with a learnable decay ``k = 1/tau`` and threshold ``theta`` per channel (build it with
    ``channels=C`` for inputs ``[T, B, C, ...]``); the potential is measured in units of the
    threshold, as in :class:`LTLIFNode`."""

    params = {"k": Param(0.5, learnable=True, per_channel=True),
              "theta": Param(1.0, learnable=True, per_channel=True)}

    @staticmethod
    def step(v, x, p):
        return v + (x / p.theta - (v - p.v_rest)) * p.k
