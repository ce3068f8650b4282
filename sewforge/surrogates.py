"""Surrogate gradients: Heaviside forward, a smooth derivative backward.

Each surrogate is defined once: its derivative in PyTorch (the reference and CPU path), the same
derivative as a ``@triton.jit`` function that every fused neuron kernel can take, and its
primitive where one exists (tests check the derivative against a finite difference of it).
Every surrogate has one scalar shape parameter (``alpha``, or ``a`` for Rectangular) that the
kernels receive at run time, so changing it does not compile a new kernel.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from ._triton import jit, tl
from .registry import SURROGATES

__all__ = ["Surrogate", "create_surrogate", "spike", "ATan", "Sigmoid", "Rectangular",
           "PiecewiseQuadratic", "Constant", "ATanA5"]


class Surrogate:
    """Base class. Subclasses set ``param_name``, ``default`` and implement the derivative."""

    param_name: Optional[str] = "alpha"
    default: float = 1.0
    #: ``@triton.jit`` function ``(x, alpha) -> fp32`` computing the derivative.
    triton_derivative: Any = None
    #: The same derivative as a C expression in ``x`` and ``alpha`` (type ``real``) for the fused
    #: CPU kernel, or None (the CPU path then evaluates :meth:`derivative` in PyTorch).
    c_derivative: Optional[str] = None

    def __init__(self, *args: float, **kwargs: float):
        name = type(self).__name__
        if self.param_name is None:
            if args or kwargs:
                raise ValueError(f"surrogate {name} takes no parameters, got {args or kwargs}")
            self.alpha = 0.0
            return
        if len(args) > 1 or (args and kwargs) or set(kwargs) - {self.param_name}:
            raise ValueError(
                f"surrogate {name} takes one parameter {self.param_name!r}, got args={args} kwargs={kwargs}")
        given = args[0] if args else kwargs.get(self.param_name, self.default)
        try:
            value = float(given)
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            shown = value if isinstance(given, (int, float)) else repr(given)
            raise ValueError(f"surrogate {name}: {self.param_name} must be a finite number > 0, got {shown}")
        self.alpha = value

    # reference definitions -------------------------------------------------------------
    def derivative(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def primitive(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """A smooth step whose derivative is :meth:`derivative`, or None if there is none."""
        return None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Heaviside step ``x >= 0`` with this surrogate's gradient."""
        return spike(x, self)

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.name if self.param_name is None else f"{self.name}({self.param_name}={self.alpha:g})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.alpha == other.alpha  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.alpha))


class _SpikeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # fp16/bf16 are evaluated in fp32; fp64 keeps its precision (gradcheck, the reference in fp64)
        xc = x if x.dtype == torch.float64 else x.float()
        return grad * ctx.surrogate.derivative(xc).to(grad.dtype), None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    """Heaviside ``x >= 0`` forward, ``surrogate.derivative`` backward."""
    return _SpikeFunction.apply(x, surrogate)


def create_surrogate(name: Any = "ATan", **kwargs: float) -> Surrogate:
    """A surrogate from a registered name (``"ATan"``), an instance, or a class."""
    if isinstance(name, Surrogate):
        if kwargs:
            raise ValueError(f"create_surrogate: got an instance {name!r} and extra arguments {kwargs}")
        return name
    if isinstance(name, type) and issubclass(name, Surrogate):
        return name(**kwargs)
    if not isinstance(name, str):
        raise TypeError(f"surrogate must be a registered name or a Surrogate, got {type(name).__name__}")
    return SURROGATES.get(name)(**kwargs)


# --------------------------------------------------------------------------------------------
@jit
def _atan_d(x, alpha):
    z = 1.5707963267948966 * alpha * x
    return alpha / (2.0 * (1.0 + z * z))


@SURROGATES.register("ATan", description="arctan surrogate of the paper, alpha/(2(1+(pi/2 alpha x)^2))")
class ATan(Surrogate):
    """sigma(x) = arctan(pi/2 alpha x)/pi + 1/2 (the paper's choice, alpha = 2)."""

    default = 2.0
    triton_derivative = _atan_d
    c_derivative = "alpha / (2 * (1 + (((real)1.5707963267948966 * alpha * x) * ((real)1.5707963267948966 * alpha * x))))"

    def derivative(self, x):
        return self.alpha / (2 * (1 + (math.pi / 2 * self.alpha * x) ** 2))

    def primitive(self, x):
        return torch.atan(math.pi / 2 * self.alpha * x) / math.pi + 0.5


@jit
def _sigmoid_d(x, alpha):
    sg = 1.0 / (1.0 + tl.exp(-alpha * x))
    return alpha * sg * (1.0 - sg)


@SURROGATES.register("Sigmoid")
class Sigmoid(Surrogate):
    """sigma(x) = sigmoid(alpha x) (SpikingJelly's later default, alpha = 4)."""

    default = 4.0
    triton_derivative = _sigmoid_d
    c_derivative = "alpha * (1 / (1 + EXP(-alpha * x))) * (1 - 1 / (1 + EXP(-alpha * x)))"

    def derivative(self, x):
        sg = torch.sigmoid(self.alpha * x)
        return self.alpha * sg * (1 - sg)

    def primitive(self, x):
        return torch.sigmoid(self.alpha * x)


@jit
def _rect_d(x, alpha):
    return tl.where(tl.abs(x) < alpha * 0.5, 1.0 / alpha, 0.0)


@SURROGATES.register("Rectangular")
class Rectangular(Surrogate):
    """sigma'(x) = 1/a on |x| < a/2, else 0 (a = 1 gives 0/1 gradients, Appendix A.5)."""

    param_name = "a"
    default = 1.0
    triton_derivative = _rect_d
    c_derivative = "(FABS(x) < alpha / 2 ? 1 / alpha : 0)"

    def derivative(self, x):
        return (x.abs() < self.alpha / 2).to(x.dtype) / self.alpha

    def primitive(self, x):
        return torch.clamp(x / self.alpha + 0.5, 0.0, 1.0)


@jit
def _pwq_d(x, alpha):
    return tl.where(tl.abs(x) > 1.0 / alpha, 0.0, alpha - alpha * alpha * tl.abs(x))


@SURROGATES.register("PiecewiseQuadratic")
class PiecewiseQuadratic(Surrogate):
    """sigma'(x) = alpha - alpha^2 |x| on |x| <= 1/alpha, else 0 (Esser et al.)."""

    default = 1.0
    triton_derivative = _pwq_d
    c_derivative = "(FABS(x) > 1 / alpha ? 0 : alpha - alpha * alpha * FABS(x))"

    def derivative(self, x):
        return torch.where(x.abs() > 1 / self.alpha, torch.zeros_like(x), self.alpha - self.alpha ** 2 * x.abs())

    def primitive(self, x):
        a = self.alpha
        mid = -0.5 * a * a * x.abs() * x + a * x + 0.5
        return torch.where(x < -1 / a, torch.zeros_like(x), torch.where(x > 1 / a, torch.ones_like(x), mid))


@jit
def _const_d(x, alpha):
    return x * 0.0 + 1.0


@SURROGATES.register("Constant")
class Constant(Surrogate):
    """sigma'(x) = 1: the straight-through estimator ("Constant 1" of Table S3)."""

    param_name = None
    triton_derivative = _const_d
    c_derivative = "1"

    def derivative(self, x):
        return torch.ones_like(x)

    def primitive(self, x):
        return x


_A5 = 1.0 + math.pi ** 2 / 4


@jit
def _atan_a5_d(x, alpha):
    z = 3.141592653589793 * x
    return 3.4674011002723395 / (1.0 + z * z)


@SURROGATES.register("ATanA5")
class ATanA5(Surrogate):
    """sigma'(x) = (1 + pi^2/4) / (1 + (pi x)^2), so sigma'(+-0.5) = 1 (Appendix A.5, V_th = 0.5)."""

    param_name = None
    triton_derivative = _atan_a5_d
    c_derivative = "(real)3.4674011002723395 / (1 + ((real)3.141592653589793 * x) * ((real)3.141592653589793 * x))"

    def derivative(self, x):
        return _A5 / (1 + (math.pi * x) ** 2)

    def primitive(self, x):
        return _A5 / math.pi * torch.atan(math.pi * x)
