"""The paper's neurons: IF, LIF and PLIF (Eq. 1-5, Appendix A.1), and LTLIF (learnable tau and
threshold), a neuron written as one step function."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..registry import NEURONS
from .base import BaseNeuron, check_tau
from .charge import IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT, ChargeEquation
from .stepdef import Param, StepNeuron

__all__ = ["IFNode", "LIFNode", "PLIFNode", "LTLIFNode"]


@NEURONS.register("IF", description="integrate-and-fire: H = V + X")
class IFNode(BaseNeuron):
    """Integrate-and-fire neuron, ``H = V + X``."""

    def charge_equation(self) -> ChargeEquation:
        return IF_CHARGE


@NEURONS.register("LIF", description="leaky integrate-and-fire with a fixed tau")
class LIFNode(BaseNeuron):
    """Leaky integrate-and-fire: ``H = V + (X - (V - V_reset)) / tau`` (``decay_input=True``)
    or ``H = V - (V - V_reset) / tau + X``."""

    def __init__(self, tau: float = 2.0, decay_input: bool = True, **kw: Any):
        super().__init__(**kw)
        self.tau = check_tau("tau", tau, type(self).__name__)
        self.decay_input = bool(decay_input)
        self.register_buffer("_k", torch.tensor([1.0 / self.tau]), persistent=False)

    def charge_equation(self) -> ChargeEquation:
        return LIF_CHARGE if self.decay_input else LIF_CHARGE_NO_DECAY_INPUT

    def charge_params(self) -> torch.Tensor:
        k = self._k
        if k.dtype != torch.float32:  # after .half() / .double(): 1/tau in the state dtype, not rounded
            k = torch.full((1,), 1.0 / self.tau, device=k.device,
                           dtype=torch.float64 if k.dtype == torch.float64 else torch.float32)
        return k

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, decay_input={self.decay_input}, " + super().extra_repr()


@NEURONS.register("PLIF", description="parametric LIF: learnable 1/tau = sigmoid(w) per layer")
class PLIFNode(BaseNeuron):
    """Parametric LIF: the LIF charge with ``1/tau = sigmoid(w)``, one learnable ``w`` per layer,
    ``w0 = -log(init_tau - 1)``."""

    def __init__(self, init_tau: float = 2.0, decay_input: bool = True, **kw: Any):
        super().__init__(**kw)
        init_tau = check_tau("init_tau", init_tau, type(self).__name__)
        self.decay_input = bool(decay_input)
        self.w = nn.Parameter(torch.tensor(-math.log(init_tau - 1.0)))

    @property
    def tau(self) -> float:
        return 1.0 / torch.sigmoid(self.w.detach()).item()

    def charge_equation(self) -> ChargeEquation:
        return LIF_CHARGE if self.decay_input else LIF_CHARGE_NO_DECAY_INPUT

    def charge_params(self) -> torch.Tensor:
        # fp32 at least (a .half() model keeps an fp32 decay); fp64 stays fp64 like the state
        w = self.w if self.w.dtype == torch.float64 else self.w.float()
        return torch.sigmoid(w).reshape(1)

    def extra_repr(self) -> str:
        return f"init_tau={1.0 / torch.sigmoid(self.w.detach()).item():.4g}, decay_input={self.decay_input}, " \
               + super().extra_repr()


# registered as "LTLIF" in sewforge.neurons.zoo
class LTLIFNode(StepNeuron):
    """LIF with a learnable decay ``k = 1/tau`` and a learnable threshold ``theta``, one of each per
    layer. The potential is measured in units of the threshold, so the neuron fires at
    ``v_threshold`` (1 by default) and a hard reset returns to ``v_reset * theta`` in input units;
    with ``v_reset=0`` or a soft reset this is exactly a LIF neuron of threshold ``theta``."""

    params = {"k": Param(0.5, learnable=True), "theta": Param(1.0, learnable=True)}

    @staticmethod
    def step(v, x, p):
        return v + (x / p.theta - (v - p.v_rest)) * p.k
