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

Several state variables, the previous spike and per-channel parameters::

    class ALIF(StepNeuron):
        states = ("v", "a")                     # the potential (fires, resets) first
        params = {"k": Param(0.5), "rho": Param(0.9), "beta": Param(0.5, learnable=True, per_channel=True)}

        @staticmethod
        def step(v, a, x, s, p):                # s: the neuron's spike of the previous step (0 at t = 0)
            return v + (x - (v - p.v_rest)) * p.k, p.rho * a + s

        @staticmethod
        def fire(v, a, p):                      # compared with v_threshold (default: v)
            return v - p.beta * a

The reset changes ``v`` only; a spike reaches the other states through ``s`` one step later. The
other states start at 0 unless ``initial = {"a": ...}`` says otherwise. A per-channel parameter
holds one value per channel (dimension 2 of ``[T, B, C, ...]``); such a neuron is built with
``channels=C``. These neurons are derived by :mod:`sewforge.kernels.multistate` (reference, C and
Triton kernels); the stateful state is the tuple ``(v, a, ..., last spike)``.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Optional, Tuple

import torch
from torch import nn

from ..kernels.charge import ChargeEquation
from ..kernels.derive import StepFunctionError, charge_from_step
from ..kernels.multistate import (MultiStateEquation, check_channels, multistate_from_step, multistate_neuron,
                                  multistate_reference)
from ..memory import combined_bound, mark_spikes
from .base import BaseNeuron, finite_number


def _static(cls: type, name: str) -> Any:
    fn = inspect.getattr_static(cls, name, None)
    return fn.__func__ if isinstance(fn, staticmethod) else fn


def _per_channel_value(owner: str, name: str, value: Any, channels: int) -> torch.Tensor:
    try:  # checked on the CPU, then placed where tensors are made now (the meta device while a network is sized)
        t = torch.as_tensor(value, dtype=torch.float32, device="cpu").detach().clone().reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{owner}: {name} must be a number or {channels} numbers (one per channel), got "
                         f"{value!r}") from None
    if t.numel() == 1:
        t = t.expand(channels).clone()
    if t.numel() != channels:
        raise ValueError(f"{owner}: {name} has {t.numel()} values but channels={channels}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return torch.empty(channels).copy_(t)

__all__ = ["Param", "StepNeuron", "StepFunctionError"]


@dataclass(frozen=True)
class Param:
    """A parameter of a step function: its default value, whether it is learned, and whether it
    holds one value per channel (dimension 2 of ``[T, B, C, ...]``; the neuron then takes
    ``channels=C``) instead of one per layer."""

    default: float
    learnable: bool = False
    per_channel: bool = False


class StepNeuron(BaseNeuron):
    """A neuron whose charge is ``step(v, x, p)``; subclasses set ``params`` and ``step`` (and, for
    several state variables, ``states``, optionally ``fire`` and ``initial``)."""

    params: ClassVar[Dict[str, Param]] = {}
    #: the state variables, the membrane potential (the one that fires and resets) first
    states: ClassVar[Tuple[str, ...]] = ("v",)
    #: initial values of the states after the potential (default 0); the potential starts at v_reset
    initial: ClassVar[Dict[str, float]] = {}
    _charge: ClassVar[Optional[ChargeEquation]]
    _multistate: ClassVar[Optional[MultiStateEquation]] = None
    #: whether the constructor needs ``channels=C`` (some parameter is per-channel)
    needs_channels: ClassVar[bool] = False

    def __init_subclass__(cls, **kw: Any):
        super().__init_subclass__(**kw)
        own = {"step", "params", "states", "fire", "initial"} & set(cls.__dict__)
        if not own and hasattr(cls, "_charge"):
            return  # a subclass that changes none of them keeps its parent's equation
        step = _static(cls, "step")
        if step is None:
            raise StepFunctionError(f"{cls.__name__}: a StepNeuron needs `step(v, x, p)` (a @staticmethod)")
        fire = _static(cls, "fire")
        specs = dict(cls.params)
        for name, spec in specs.items():
            if not isinstance(spec, Param):
                raise StepFunctionError(f"{cls.__name__}: params[{name!r}] must be Param(default, learnable=...), "
                                        f"got {spec!r}")
            if not math.isfinite(spec.default):
                raise StepFunctionError(f"{cls.__name__}: the default of {name!r} must be finite, got {spec.default}")
        names = tuple(specs)
        states = cls.states
        if isinstance(states, str) or not isinstance(states, (tuple, list)):
            raise StepFunctionError(f"{cls.__name__}: states must be a tuple of names, the potential first (e.g. "
                                    f"('v', 'a')), got {states!r}")
        learn = [n for n in names if specs[n].learnable]
        per_channel = [n for n in names if specs[n].per_channel]
        cls.needs_channels = bool(per_channel)
        try:
            n_args = len(inspect.signature(step).parameters)
        except (TypeError, ValueError):
            n_args = 3
        general = len(states) > 1 or fire is not None or per_channel or n_args != 3 or bool(cls.initial)
        if not general:  # one state, scalar parameters: the charge kernels of every neuron
            cls._multistate = None
            cls._charge = charge_from_step(step, names, learnable=learn, name=cls.__name__)
            return
        cls._charge = None
        cls._multistate = multistate_from_step(step, tuple(states), names, learnable=learn, per_channel=per_channel,
                                               fire=fire, initial=cls.initial, name=cls.__name__)

    def __init__(self, *, channels: Optional[int] = None, **kw: Any):
        own = {n: kw.pop(n) for n in list(kw) if n in self.params}
        super().__init__(**kw)
        owner = type(self).__name__
        per_channel = [n for n, spec in self.params.items() if spec.per_channel]
        if per_channel:
            if channels is None:
                raise ValueError(f"{owner}: the per-channel parameter{'s' if len(per_channel) > 1 else ''} "
                                 f"{', '.join(per_channel)} need channels= (the number of channels C of the input "
                                 "[T, B, C, ...])")
            if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
                raise ValueError(f"{owner}: channels must be a positive integer, got {channels!r}")
        elif channels is not None:
            raise ValueError(f"{owner}: channels={channels!r} given but no parameter is per-channel")
        self.channels = channels
        self._constants: Dict[str, float] = {}  # exact values of the fixed parameters
        for name, spec in self.params.items():
            value = own.get(name, spec.default)
            if spec.per_channel:
                t = _per_channel_value(owner, name, value, channels)
            else:
                value = finite_number(name, value, owner)
                t = torch.tensor(value)
            if spec.learnable:
                setattr(self, name, nn.Parameter(t))
            else:
                self.register_buffer(name, t)
                if not spec.per_channel:
                    self._constants[name] = float(value)

    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kw: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kw)
        for n in self._constants:  # a loaded fixed value replaces the constructor's
            if prefix + n in state_dict:
                self._constants[n] = float(state_dict[prefix + n])

    def charge_equation(self) -> ChargeEquation:
        if self._charge is None:
            raise TypeError(f"{type(self).__name__} has several states, the previous spike, a fire function or "
                            "per-channel parameters: it has no single-state charge equation; run the module itself "
                            "(its equation is type(neuron)._multistate)")
        return self._charge

    # several states / per-channel parameters --------------------------------------------------
    def param_values(self, dtype: torch.dtype = torch.float32) -> Dict[str, torch.Tensor]:
        """Each parameter in the compute ``dtype`` (0-d, or ``[C]`` when per-channel); learnable ones
        carry gradient."""
        out = {}
        for n in self.params:
            v = getattr(self, n)
            exact = self._constants.get(n)
            if exact is not None and (v.dtype != torch.float32 or dtype == torch.float64):
                v = torch.full((), exact, dtype=dtype, device=v.device)  # the value given, not its rounding
            out[n] = v.to(dtype)
        return out

    def reset(self) -> None:
        self.v = None

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None, g: Any = None) -> torch.Tensor:
        eq = self._multistate
        if eq is None:
            return super().forward(x, shortcut=shortcut, g=g)
        owner = type(self).__name__
        for name, value in (("input", x), ("shortcut", shortcut)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{owner}: the {name} must be a torch.Tensor [T, ...], got {type(value).__name__}; "
                                "convert it with torch.as_tensor(...)")
        if self.channels is not None:
            check_channels(owner, eq.per_channel, self.channels, x)
        state0 = self.v if self.stateful else None
        if state0 is not None and (state0[0].shape != x.shape[1:] or state0[0].device != x.device):
            raise ValueError(f"{owner}: kept state has shape {tuple(state0[0].shape)} on {state0[0].device} but this "
                             f"input has {tuple(x.shape[1:])} per step on {x.device}; call reset() first")
        dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        values = self.param_values(dtype)
        for n, v in values.items():
            if v.device != x.device:
                if v.requires_grad:
                    raise ValueError(f"{owner}: its learnable parameters are on {v.device} but the input is on "
                                     f"{x.device}; move the neuron with .to({str(x.device)!r}) (or the input)")
                values[n] = v.to(x.device)
        out, state, count = multistate_neuron(
            x, eq, values, self.surrogate, self.v_threshold, self.v_reset, self.detach_reset, state0=state0,
            shortcut=shortcut, g=g, backend=self.backend, count=self.count_spikes, need_state=self.stateful)
        if self.stateful:
            self.v = tuple(t.detach() for t in state)
        if self.count_spikes:
            self.spike_count, self.spike_numel = count, x.numel()
        if g is None:
            return mark_spikes(out, binary=True)
        name = g.name if hasattr(g, "name") else str(g).upper()
        return mark_spikes(out, bound=combined_bound(name, shortcut))

    @torch.no_grad()
    def firing_input(self, margin: float = 1e-2) -> float:
        """A constant input that makes this neuron fire at every step from rest (with several
        states: at each of the first 64 steps, found by bisection on the reference)."""
        eq = self._multistate
        if eq is None:
            return super().firing_input(margin)
        C = self.channels or 1
        values = {n: v.detach().double().cpu() for n, v in self.param_values(torch.float64).items()}

        def fires(x: float) -> bool:  # at every one of 64 steps: adaptation builds up over time
            xs = torch.full((64, 1, C), x, dtype=torch.float64)
            out, _ = multistate_reference(xs, eq, values, self.surrogate, self.v_threshold, self.v_reset, True)
            return bool(out.min() > 0)

        return self._least_firing_input(fires, margin)

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
        own = ", ".join(f"{n}={getattr(self, n).item():.4g}" if getattr(self, n).dim() == 0 else
                        f"{n}=[{getattr(self, n).numel()}]" for n in self.params)
        if self.channels is not None:
            own += f", channels={self.channels}"
        return (own + ", " if own else "") + super().extra_repr()
