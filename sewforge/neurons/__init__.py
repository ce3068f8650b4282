"""Spiking neurons: charge equations, the shared module, and the registered core neurons."""
from __future__ import annotations

import functools
from typing import Any

from torch import nn

from ..registry import NEURONS
from .base import BaseNeuron, check_neuron_module, check_tau
from .charge import IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT, ChargeEquation
from ..kernels.derive import charge_from_step
from .core import IFNode, LIFNode, LTLIFNode, PLIFNode
from .stepdef import Param, StepFunctionError, StepNeuron
from .zoo import ALIFNode, ChannelLIFNode, CUBALIFNode, IzhikevichNode

__all__ = ["BaseNeuron", "ChargeEquation", "IFNode", "LIFNode", "LTLIFNode", "PLIFNode", "create_neuron",
           "check_tau", "IF_CHARGE", "LIF_CHARGE", "LIF_CHARGE_NO_DECAY_INPUT", "Param", "StepNeuron",
           "StepFunctionError", "charge_from_step", "ALIFNode", "IzhikevichNode", "CUBALIFNode",
           "ChannelLIFNode", "neuron_needs_channels"]


def create_neuron(name: str, **kwargs: Any) -> nn.Module:
    """A neuron module by registered name: ``create_neuron("PLIF", init_tau=2.0)``.

    Keyword arguments whose value is None are dropped (so a CLI default of None means "the
    neuron's own default"), except ``v_reset=None``, which asks for a soft reset.
    """
    factory = NEURONS.get(name)
    kw = {k: v for k, v in kwargs.items() if v is not None or k == "v_reset"}
    try:
        module = factory(**kw)
    except TypeError as exc:
        raise ValueError(f"neuron {name!r}: invalid arguments {sorted(kw)}: {exc}") from None
    return check_neuron_module(module, f"neuron {name!r}")


def neuron_needs_channels(factory: Any) -> bool:
    """Whether neurons made by ``factory`` (a registered name, a neuron class, or a
    ``functools.partial`` of either or of :func:`create_neuron`) need ``channels=C`` because they
    hold per-channel parameters, and were not given it already. Networks pass the channels of the
    layer a neuron follows."""
    f = factory
    while isinstance(f, functools.partial):
        if "channels" in f.keywords:
            return False
        if f.func is create_neuron and f.args:
            f = f.args[0]
            break
        f = f.func
    if isinstance(f, str):
        if f not in NEURONS:
            return False
        f = NEURONS.get(f)
    return bool(getattr(f, "needs_channels", False))
