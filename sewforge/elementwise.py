"""Spike-element-wise functions g (Table 1): ``O = g(A, S)``.

``A`` is the residual branch's spikes (``SN(F(S))``), ``S`` the shortcut; the order matters for
IAND. Each function is given in PyTorch and as ``@triton.jit`` functions with its two partial
derivatives, so the fused SEW kernel computes ``g(SN(X), S)`` and its backward in one pass.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ._triton import jit, tl  # noqa: F401  (the interpreter needs tl in the module of every jit function)
from .registry import ELEMENTWISE

__all__ = ["ElementwiseFunction", "create_elementwise", "sew_function", "ADD", "AND", "IAND", "RIAND"]


@dataclass(frozen=True, eq=False)  # identity: compared and hashed by object, cheaply (also under torch.compile)
class ElementwiseFunction:
    """``g(a, s)`` in PyTorch and Triton, with ``dg/da`` and ``dg/ds`` for the fused backward."""

    name: str
    torch_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    triton_fn: Any
    triton_dg_da: Any
    triton_dg_ds: Any
    #: the value of A that makes ``g(A, S) == S`` for binary S (0 for ADD/IAND, 1 for AND);
    #: zero-init sets the block's last neuron to emit it.
    identity_a: float = 0.0
    description: str = ""
    #: ``g``, ``dg/da`` and ``dg/ds`` as C expressions in ``a`` and ``s`` for the fused CPU
    #: kernel (None: that kernel applies g in PyTorch after the neuron).
    c_fn: Optional[str] = None
    c_dg_da: Optional[str] = None
    c_dg_ds: Optional[str] = None
    #: False when neither partial derivative depends on ``s`` (ADD): the backward then does not
    #: read the shortcut at all.
    backward_reads_s: bool = True
    #: True when dg/ds is 1 everywhere (ADD): the shortcut's gradient is the output's gradient
    #: itself, handed on without a copy.
    grad_s_is_grad_out: bool = False

    @property
    def has_c(self) -> bool:
        return None not in (self.c_fn, self.c_dg_da, self.c_dg_ds)

    def __call__(self, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.torch_fn(a, s)

    def __repr__(self) -> str:
        return f"ElementwiseFunction({self.name!r})"

    def __reduce__(self):
        # pickled (and deep-copied) by registered name: the functions themselves do not pickle
        return (create_elementwise, (self.name,))


def create_elementwise(name: Any) -> ElementwiseFunction:
    """A registered element-wise function by name (``"ADD"``, ``"and"``) or the object itself."""
    if isinstance(name, ElementwiseFunction):
        return name
    if not isinstance(name, str):
        raise TypeError(f"element-wise function must be a name or ElementwiseFunction, got {type(name).__name__}")
    return ELEMENTWISE.get(name)


def sew_function(a: torch.Tensor, s: torch.Tensor, g: Any = "ADD") -> torch.Tensor:
    """``g(a, s)`` for two spike tensors of the same shape, device and dtype."""
    if a.shape != s.shape:
        raise ValueError(f"sew_function: a has shape {tuple(a.shape)} but s has {tuple(s.shape)}; they must match")
    if a.device != s.device:
        raise ValueError(f"sew_function: a is on {a.device} but s is on {s.device}; put both on one device")
    return create_elementwise(g)(a, s)


def _register(fn: ElementwiseFunction) -> ElementwiseFunction:
    ELEMENTWISE.add(fn.name, fn, description=fn.description)
    return fn


@jit
def _add(a, s):
    return a + s


@jit
def _one(a, s):
    return a * 0.0 + 1.0


@jit
def _and(a, s):
    return a * s


@jit
def _and_da(a, s):
    return s


@jit
def _and_ds(a, s):
    return a


@jit
def _iand(a, s):
    return (1.0 - a) * s


@jit
def _iand_da(a, s):
    return -s


@jit
def _iand_ds(a, s):
    return 1.0 - a


@jit
def _riand(a, s):
    return a * (1.0 - s)


@jit
def _riand_da(a, s):
    return 1.0 - s


@jit
def _riand_ds(a, s):
    return -a


ADD = _register(ElementwiseFunction("ADD", lambda a, s: a + s, _add, _one, _one, 0.0, "A + S",
                                    c_fn="a + s", c_dg_da="1", c_dg_ds="1", backward_reads_s=False,
                                    grad_s_is_grad_out=True))
AND = _register(ElementwiseFunction("AND", lambda a, s: a * s, _and, _and_da, _and_ds, 1.0, "A * S",
                                    c_fn="a * s", c_dg_da="s", c_dg_ds="a"))
IAND = _register(ElementwiseFunction("IAND", lambda a, s: (1 - a) * s, _iand, _iand_da, _iand_ds, 0.0,
                                     "(1 - A) * S", c_fn="(1 - a) * s", c_dg_da="-s", c_dg_ds="1 - a"))
#: IAND with its operands reversed, ``A * (1 - S)``: what SpikingJelly's ``Bottleneck`` computes for
#: ``cnf="IAND"`` (its ``BasicBlock`` computes the paper's ``(1 - A) * S``). Only for running
#: networks converted from such checkpoints (:mod:`sewforge.interop`); no A makes it an identity,
#: so zero-init cannot start a RIAND block as one.
RIAND = _register(ElementwiseFunction("RIAND", lambda a, s: a * (1 - s), _riand, _riand_da, _riand_ds, 0.0,
                                      "A * (1 - S) (IAND with reversed operands, SpikingJelly's Bottleneck)",
                                      c_fn="a * (1 - s)", c_dg_da="1 - s", c_dg_ds="-a"))
