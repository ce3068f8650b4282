"""Multi-step spiking neuron modules.

A neuron module holds its hyper-parameters and (learnable) parameters and hands the whole
sequence ``[T, ...]`` to :func:`sewforge.kernels.multistep_neuron`, which runs the fused kernel or
the PyTorch reference. Every forward starts from ``V = v_reset`` unless ``stateful=True``, in which
case the potential after the last step is kept (detached) for the next call until :meth:`reset`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..kernels import BACKENDS, multistep_neuron
from ..kernels.charge import ChargeEquation
from ..memory import combined_bound, mark_spikes
from ..surrogates import Surrogate, create_surrogate

__all__ = ["BaseNeuron", "check_tau", "check_neuron_module"]


def finite_number(name: str, value: Any, owner: str) -> float:
    """``value`` as a finite float, or a ValueError naming ``owner`` and ``name``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(f):
        raise ValueError(f"{owner}: {name} must be finite, got {value!r}")
    return f


def check_tau(name: str, value: Any, owner: str) -> float:
    tau = finite_number(name, value, owner)
    if tau <= 1.0:
        raise ValueError(f"{owner}: {name} must be > 1 (the decay 1/{name} must lie in (0, 1)), got {value!r}")
    return tau


def check_neuron_module(sn: Any, owner: str) -> nn.Module:
    """``sn`` if it can serve as a multi-step neuron (an ``nn.Module`` whose forward takes the
    input ``[T, ...]`` as its one required argument), else a one-line TypeError naming its class
    and the package it came from."""
    import inspect

    where = type(sn).__module__.split(".")[0]
    if not isinstance(sn, nn.Module):
        raise TypeError(f"{owner}: the neuron factory returned {type(sn).__name__} (from {where}), expected a "
                        "neuron nn.Module")
    try:
        sig = inspect.signature(sn.forward)
    except (TypeError, ValueError):  # a builtin or C forward: nothing to check
        return sn
    try:
        sig.bind(None)
    except TypeError:
        raise TypeError(f"{owner}: neuron {type(sn).__name__} (from {where}) has forward{sig}; a neuron's forward "
                        "must take the input x [T, ...] as its one required argument (and optionally "
                        "shortcut=, g= for the fused SEW op)") from None
    return sn


class BaseNeuron(nn.Module):
    """A multi-step neuron defined by a :class:`ChargeEquation`.

    Subclasses provide :meth:`charge_equation` and :meth:`charge_params`; everything else (reset,
    surrogate, detach, kernels, state) is shared.
    """

    def __init__(
        self,
        *,
        v_threshold: float = 1.0,
        v_reset: Optional[float] = 0.0,
        detach_reset: bool = True,
        surrogate: Any = "ATan",
        stateful: bool = False,
        backend: Optional[str] = None,
    ):
        super().__init__()
        owner = type(self).__name__
        self.v_threshold = finite_number("v_threshold", v_threshold, owner)
        self.v_reset = None if v_reset is None else finite_number("v_reset", v_reset, owner)
        if self.v_reset is not None and self.v_reset >= self.v_threshold:
            raise ValueError(f"{owner}: v_reset ({v_reset}) must be below v_threshold ({v_threshold}), "
                             "or None for a soft reset")
        if not isinstance(detach_reset, bool):
            raise ValueError(f"{owner}: detach_reset must be True or False, got {detach_reset!r}")
        self.detach_reset = detach_reset
        self.surrogate: Surrogate = create_surrogate(surrogate)
        self.stateful = bool(stateful)
        if backend is not None and (not isinstance(backend, str) or backend.strip().lower() not in BACKENDS):
            raise ValueError(f"{owner}: backend={backend!r} is not a backend; use one of {', '.join(BACKENDS)} "
                             "(or None for SEWFORGE_BACKEND)")
        self.backend = backend
        self.v: Optional[torch.Tensor] = None
        #: count the neuron's own spikes inside the fused op (firing rates without un-fusing g):
        #: after each forward, ``spike_count`` (1-element float64 tensor) and ``spike_numel``.
        self.count_spikes = False
        self.spike_count: Optional[torch.Tensor] = None
        self.spike_numel = 0

    # to be provided by each neuron -------------------------------------------------------
    def charge_equation(self) -> ChargeEquation:
        raise NotImplementedError

    def charge_params(self) -> torch.Tensor:
        """The 1-D parameter vector the charge equation reads (may carry gradient in [0])."""
        return torch.zeros(0)

    # shared ------------------------------------------------------------------------------
    @torch.no_grad()
    def firing_input(self, margin: float = 1e-2) -> float:
        """A constant input that makes this neuron fire at every step from rest.

        Zero-init of a SEW AND block sets its last BN bias to this value so that ``A = 1`` and
        ``g(A, S) = S``. Found by bisection on the charge equation (assumed increasing in X);
        ``margin`` adds a relative safety gap against rounding in fp16/bf16.
        """
        charge = self.charge_equation()
        p = self.charge_params().detach().double().cpu()
        v_rest = 0.0 if self.v_reset is None else self.v_reset
        v = torch.tensor(v_rest, dtype=torch.float64)

        def fires(x: float) -> bool:
            return bool(charge.torch_charge(v, torch.tensor(x, dtype=torch.float64), p, v_rest) >= self.v_threshold)

        return self._least_firing_input(fires, margin)

    def _least_firing_input(self, fires: Callable[[float], bool], margin: float) -> float:
        """The least constant input for which ``fires`` holds (assumed monotone), by bisection, plus a
        relative ``margin``."""
        lo, hi = -1.0, 1.0
        while fires(lo):
            lo *= 2
            if lo < -1e12:
                raise ValueError(f"{type(self).__name__}: every constant input makes this neuron fire")
        while not fires(hi):
            hi *= 2
            if hi > 1e12:
                raise ValueError(f"{type(self).__name__}: no constant input makes this neuron fire")
        for _ in range(80):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if fires(mid) else (mid, hi)
        return hi + margin * max(abs(hi), 1e-3)

    def reset(self) -> None:
        """Forget the state kept by a ``stateful`` neuron."""
        self.v = None

    def forward(self, x: torch.Tensor, shortcut: Optional[torch.Tensor] = None, g: Any = None) -> torch.Tensor:
        """Spikes for ``x`` of shape ``[T, ...]``; with ``shortcut`` and ``g``, the fused
        ``g(SN(x), shortcut)`` of a SEW block."""
        owner = type(self).__name__
        for name, value in (("input", x), ("shortcut", shortcut)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"{owner}: the {name} must be a torch.Tensor [T, ...], got {type(value).__name__}; "
                                "convert it with torch.as_tensor(...)")
        v0 = self.v if self.stateful else None
        if v0 is not None and v0.shape != x.shape[1:]:
            raise ValueError(f"{type(self).__name__}: kept state has shape {tuple(v0.shape)} but this input has "
                             f"{tuple(x.shape[1:])} per step; call reset() before changing the input shape")
        if v0 is not None and v0.device != x.device:
            raise ValueError(f"{type(self).__name__}: kept state is on {v0.device} but this input is on "
                             f"{x.device}; call reset() after moving the neuron or its input")
        params = self.charge_params()
        if params.device != x.device:
            if params.requires_grad:  # a learnable parameter stays where the optimizer holds it
                raise ValueError(f"{owner}: its learnable parameters are on {params.device} but the input is on "
                                 f"{x.device}; move the neuron with .to({str(x.device)!r}) (or the input)")
            params = params.to(x.device)
        out, v_last, count = multistep_neuron(
            x, self.charge_equation(), params, self.surrogate, self.v_threshold, self.v_reset,
            self.detach_reset, v0=v0, shortcut=shortcut, g=g, backend=self.backend, need_state=self.stateful,
            count=self.count_spikes)
        if self.stateful:
            self.v = v_last
        if self.count_spikes:
            self.spike_count, self.spike_numel = count, x.numel()
        if g is None:
            return mark_spikes(out, binary=True)
        name = g.name if hasattr(g, "name") else str(g).upper()
        return mark_spikes(out, bound=combined_bound(name, shortcut))

    def extra_repr(self) -> str:
        reset = "soft" if self.v_reset is None else f"v_reset={self.v_reset:g}"
        parts = [f"v_threshold={self.v_threshold:g}", reset, f"detach_reset={self.detach_reset}",
                 f"surrogate={self.surrogate!r}"]
        if self.stateful:
            parts.append("stateful=True")
        return ", ".join(parts)
