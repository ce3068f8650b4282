"""Charge equations: what makes one neuron different from another.

Most equations are not written by hand: :func:`sewforge.kernels.derive.charge_from_step` derives
every form below from one Python step function. This module is the interface the kernels consume.

A neuron's membrane update ``H[t] = f(V[t-1], X[t])`` is given in PyTorch (the reference,
differentiated by autograd), as ``@triton.jit`` functions with its partial derivatives (the GPU
kernels, :mod:`sewforge.kernels.multistep`) and, optionally, as C expressions of the same
derivatives (the fused CPU kernels, :mod:`sewforge.kernels.cpu`). The kernel compilers compose
these with any surrogate, reset mode, detach choice and SEW function into fused forward/backward
kernels, so a new neuron needs no kernel code. A neuron without C expressions still runs fused on
the CPU, through a plain-PyTorch forward/backward (slower, still linear in T).

Conventions shared by both forms:

* ``params`` is a 1-D tensor (``P`` a pointer in Triton) of the neuron's scalar parameters in the
  compute dtype. The parameters listed in ``learnable`` (indices, default ``(0,)``) get gradients:
  ``dh_dp`` is the derivative with respect to them, a ``[BLOCK]`` value for one parameter, a
  ``[R, BLOCK]`` value (one row per learnable parameter, padded with rows of zeros to ``R``, the
  next power of two) for several; ``c_dh_dp`` is one C expression per learnable parameter. The
  Triton functions read a parameter with ``tl.load(P + i)``.
* ``v_rest`` is the potential the neuron decays toward: ``v_reset`` for a hard reset, 0 for a soft
  reset (``v_reset=None``), as in SpikingJelly.
* The Triton derivatives take ``(v, x, h, P, v_rest)``: ``h`` is the charged potential of the same
  step, so derivatives that need ``x`` can often use ``h`` instead; set
  ``needs_input_in_backward=True`` only when they truly read ``x`` (it costs one more read per
  element in the backward pass).
* The C expressions use the same names: ``v``, ``x``, ``h``, ``v_rest`` and the parameters as
  ``p0``, ``p1``, ...; all are of type ``real`` (``float``, or ``double`` for fp64 input). Call
  math functions through the macros ``EXP``, ``LOG``, ``SQRT``, ``FABS``, ``TANH``, ``ATAN`` and
  ``POW``, which pick the function of the compute type; write constants as ``(real)0.5``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple, Union

import torch


__all__ = ["ChargeEquation"]


@dataclass(frozen=True, eq=False)  # identity: compared and hashed by object, cheaply (also under torch.compile)
class ChargeEquation:
    """The membrane charge of one neuron type, in PyTorch and in Triton."""

    name: str
    #: ``(v, x, params, v_rest) -> h`` in PyTorch (differentiable).
    torch_charge: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]
    #: ``@triton.jit (v, x, P, v_rest) -> h``.
    triton_charge: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dV``.
    triton_dh_dv: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dX``.
    triton_dh_dx: Any
    #: ``@triton.jit (v, x, h, P, v_rest) -> dH/dparams[learnable]``, or None when nothing is learnable.
    triton_dh_dp: Any = None
    #: Number of scalars in ``params``.
    num_params: int = 0
    needs_input_in_backward: bool = False
    #: C expression of ``h`` in ``v, x, p0.., v_rest`` for the fused CPU kernel (None: no C form).
    c_charge: Optional[str] = None
    #: C expression of dH/dV in ``v, x, h, p0.., v_rest``.
    c_dh_dv: Optional[str] = None
    #: C expression of dH/dX.
    c_dh_dx: Optional[str] = None
    #: C expression of dH/dp for each learnable parameter (one string when there is one).
    c_dh_dp: Optional[Union[str, Tuple[str, ...]]] = None
    #: Indices into ``params`` of the parameters that ``dh_dp`` differentiates by.
    learnable: Tuple[int, ...] = (0,)

    @property
    def c_dh_dps(self) -> Tuple[str, ...]:
        """``c_dh_dp`` as a tuple (empty when nothing is learnable)."""
        if self.c_dh_dp is None:
            return ()
        return (self.c_dh_dp,) if isinstance(self.c_dh_dp, str) else tuple(self.c_dh_dp)

    @property
    def dp_rows(self) -> int:
        """Rows of the Triton ``dh_dp`` value: the number of learnable parameters rounded up to a
        power of two."""
        return 1 << max(len(self.learnable) - 1, 0).bit_length()

    @property
    def has_c(self) -> bool:
        """Whether the fused CPU kernel can be generated for this equation."""
        return self.c_charge is not None and self.c_dh_dv is not None and self.c_dh_dx is not None and (
            self.triton_dh_dp is None or self.c_dh_dp is not None)

    def __repr__(self) -> str:
        return f"ChargeEquation({self.name!r})"
