"""Neurons defined by one step function: declare the parameters, write the update, done.

::

    from sewforge.neurons import Param, StepNeuron
    from sewforge.registry import NEURONS

    @NEURONS.register("GainLIF", description="LIF with a learnable decay and input gain")
    class GainLIF(StepNeuron):
        params = {"k": Param(0.5, learnable=True), "gain": Param(1.0, learnable=True)}

        @staticmethod
        def step(v, x, p):
            return v + (p.gain * x - (v - p.v_rest)) * p.k

The class statement derives the charge equation (:func:`sewforge.kernels.derive.charge_from_step`):
the PyTorch reference, the fused C and Triton kernels and every gradient. A step function the
kernels cannot run is refused right there, with its line. Each parameter is a constructor keyword
(``GainLIF(k=0.25)``); learnable ones are ``nn.Parameter`` scalars, one per layer, the others
buffers. Reset, threshold, surrogate and SEW fusion are those of every :class:`BaseNeuron`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict

import torch
from torch import nn

from ..kernels.charge import ChargeEquation
from ..kernels.derive import StepFunctionError, charge_from_step
from .base import BaseNeuron

__all__ = ["Param", "StepNeuron", "StepFunctionError"]


@dataclass(frozen=True)
class Param:
    """A scalar parameter of a step function: its default value and whether it is learned."""

    default: float
    learnable: bool = False


class StepNeuron(BaseNeuron):
    """A neuron whose charge is ``step(v, x, p)``; subclasses set ``params`` and ``step``."""

    params: ClassVar[Dict[str, Param]] = {}
    _charge: ClassVar[ChargeEquation]

    def __init_subclass__(cls, **kw: Any):
        super().__init_subclass__(**kw)
        if "step" not in cls.__dict__ and "params" not in cls.__dict__ and hasattr(cls, "_charge"):
            return  # a subclass that changes neither keeps its parent's equation
        step = inspect.getattr_static(cls, "step", None)
        if isinstance(step, staticmethod):
            step = step.__func__
        if step is None:
            raise StepFunctionError(f"{cls.__name__}: a StepNeuron needs `step(v, x, p)` (a @staticmethod)")
        specs = dict(cls.params)
        for name, spec in specs.items():
            if not isinstance(spec, Param):
                raise StepFunctionError(f"{cls.__name__}: params[{name!r}] must be Param(default, learnable=...), "
                                        f"got {spec!r}")
            if not math.isfinite(spec.default):
                raise StepFunctionError(f"{cls.__name__}: the default of {name!r} must be finite, got {spec.default}")
        names = tuple(specs)
        cls._charge = charge_from_step(step, names, learnable=[n for n in names if specs[n].learnable],
                                       name=cls.__name__)

    def __init__(self, **kw: Any):
        own = {n: kw.pop(n) for n in list(kw) if n in self.params}
        super().__init__(**kw)
        self._constants: Dict[str, float] = {}  # exact values of the fixed parameters
        for name, spec in self.params.items():
            value = own.get(name, spec.default)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{type(self).__name__}: {name} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{type(self).__name__}: {name} must be finite, got {value!r}")
            t = torch.tensor(value)
            if spec.learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
                self._constants[name] = value

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kw: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
        for n in self._constants:  # a loaded fixed value replaces the constructor's
            if prefix + n in state_dict:
                self._constants[n] = float(state_dict[prefix + n])

    def charge_equation(self) -> ChargeEquation:
        return self._charge

    def charge_params(self) -> torch.Tensor:
        if not self.params:
            return torch.zeros(0)
        values = [getattr(self, n) for n in self.params]
        # fp32 at least (a .half() model keeps fp32 parameters in the kernel); fp64 stays fp64
        dtype = torch.float64 if any(v.dtype == torch.float64 for v in values) else torch.float32
        out = []
        for n, v in zip(self.params, values):
            exact = self._constants.get(n)
            if exact is not None and v.dtype != torch.float32:
                # after .half() / .double(): the value given, not its float32 (or float16) rounding
                v = torch.full((), exact, dtype=dtype, device=v.device)
            out.append(v.to(dtype))
        return torch.stack(out)

    def extra_repr(self) -> str:
        own = ", ".join(f"{n}={getattr(self, n).item():.4g}" for n in self.params)
        return (own + ", " if own else "") + super().extra_repr()
