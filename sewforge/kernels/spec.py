"""What a fused kernel is specialised on, shared by the GPU (Triton) and CPU (C) compilers.

A :class:`KernelSpec` names everything that is compiled into a kernel rather than passed at run
time: the charge equation, the surrogate's type, the SEW function g, the reset mode and whether
the reset is detached. Each specialisation gets a stable string key, so the ``torch.library``
custom ops (:mod:`sewforge.kernels.ops`), which accept only plain arguments, can name it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..elementwise import ElementwiseFunction
from .charge import ChargeEquation

__all__ = ["KernelSpec", "specialize", "specializations", "spec_from_key", "resolve"]


@dataclass(frozen=True)
class KernelSpec:
    """One specialisation: everything that is compiled into the kernel (not run-time scalars)."""

    charge: ChargeEquation
    surrogate: type
    g: Optional[ElementwiseFunction]
    hard_reset: bool
    detach_reset: bool

    def describe(self) -> str:
        reset = "hard" if self.hard_reset else "soft"
        g = f" -> g={self.g.name}" if self.g is not None else ""
        return f"{self.charge.name} + {self.surrogate.__name__} ({reset} reset, detach={self.detach_reset}){g}"

    @property
    def key(self) -> str:
        """A string naming this specialisation within the process (for the custom ops)."""
        return _KEYS[self]


_SPECS: Dict[KernelSpec, int] = {}
_KEYS: Dict[KernelSpec, str] = {}
_BY_KEY: Dict[str, KernelSpec] = {}


def specialize(charge: ChargeEquation, surrogate: object, g: Optional[ElementwiseFunction],
               hard_reset: bool, detach_reset: bool) -> KernelSpec:
    """The specialisation of one neuron call (counted, see :func:`specializations`)."""
    key, _ = resolve(charge, type(surrogate), g, hard_reset, detach_reset, torch.float32, "triton")
    return _BY_KEY[key]


def spec_from_key(key: str) -> KernelSpec:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no kernel specialisation {key!r} in this process") from None


def specializations() -> Dict[str, int]:
    """Specialisations used so far in this process, with how often each was launched."""
    return {spec.describe(): n for spec, n in _SPECS.items()}


@torch._dynamo.assume_constant_result
def resolve(charge: ChargeEquation, surrogate: type, g: Optional[ElementwiseFunction], hard_reset: bool,
            detach_reset: bool, dtype: torch.dtype, backend: str) -> Tuple[str, str]:
    """``(spec key, implementation)`` of one fused call: the implementation is ``"triton"``, or on the
    CPU ``"c"`` (the compiled kernel) or ``"torch"`` (the plain-PyTorch path).

    A constant for ``torch.compile``: it is evaluated once while tracing rather than traced, since
    it hashes kernel objects and may compile a CPU kernel."""
    spec = KernelSpec(charge, surrogate, g, bool(hard_reset), bool(detach_reset))
    _SPECS[spec] = _SPECS.get(spec, 0) + 1
    if spec not in _KEYS:
        key = f"{len(_KEYS)}:{spec.describe()}"
        _KEYS[spec] = key
        _BY_KEY[key] = spec
    if backend != "cpu":
        return _KEYS[spec], backend
    from .cpu import cpu_impl

    return _KEYS[spec], cpu_impl(spec, dtype)
