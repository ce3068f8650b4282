"""The fused neuron op as ``torch.library`` custom ops: ``sewforge::neuron_forward`` / ``neuron_backward``.

One op runs a neuron (optionally fused with a SEW function g) over all T steps; autograd is
registered for it, and a fake implementation gives shapes and layouts without running anything,
so ``torch.compile`` captures a whole SEW network with each neuron as one node: no graph break and
no loop over T unrolled into the graph. The op dispatches on the device: the Triton kernels
(:mod:`sewforge.kernels.multistep`) on CUDA, the fused CPU kernels (:mod:`sewforge.kernels.cpu`)
elsewhere. ``impl="triton"`` on CPU tensors runs the Triton kernels in Triton's interpreter (tests).

Launcher contract shared by both implementations (``triton_forward`` / ``cpu_forward`` and the
backward pair): ``x`` is ``[T, ...]``, dense with time outermost (contiguous, or channels_last per
step); the shortcut, the output gradient and H have x's shape and strides; ``params`` is 1-D in the
compute dtype with at least one element. Everything the op returns keeps x's layout.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .layout import as_time_dense
from .reference import compute_dtype
from .spec import spec_from_key

__all__ = ["fused_neuron"]

_EMPTY = (0,)


def _launchers(impl: str):
    if impl == "triton":
        from .multistep import triton_backward, triton_forward

        return triton_forward, triton_backward
    from .cpu import cpu_backward, cpu_forward

    return cpu_forward, cpu_backward


@torch.library.custom_op("sewforge::neuron_forward", mutates_args=())
def neuron_forward(x: Tensor, shortcut: Optional[Tensor], params: Tensor, v0: Optional[Tensor], spec: str,
                   impl: str, v_threshold: float, v_reset: Optional[float], alpha: float, save_h: bool,
                   need_vt: bool, count: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(out, h, vt, spike_count)``; absent results are empty tensors. ``alpha`` (the surrogate's
    shape parameter) is only recorded for the backward."""
    fwd, _ = _launchers(impl)
    out, h, vt, counted = fwd(x, shortcut, params, v0, spec_from_key(spec), v_threshold, v_reset,
                              save_h=save_h, need_vt=need_vt, count=count)
    cd = compute_dtype(x.dtype)
    empty = x.new_empty(_EMPTY, dtype=cd)
    return (out, h if h is not None else empty, vt if vt is not None else empty.clone(),
            counted if counted is not None else x.new_empty(_EMPTY, dtype=torch.float64))


@neuron_forward.register_fake
def _(x, shortcut, params, v0, spec, impl, v_threshold, v_reset, alpha, save_h, need_vt, count):
    g = spec_from_key(spec).g
    out_dtype = x.dtype if g is None else torch.promote_types(x.dtype, shortcut.dtype)
    cd = compute_dtype(x.dtype)
    out = torch.empty_like(x, dtype=out_dtype)
    h = torch.empty_like(x, dtype=cd) if save_h else x.new_empty(_EMPTY, dtype=cd)
    vt = torch.empty_like(x[0], dtype=cd) if need_vt and x.shape[0] > 0 else (
        x.new_empty(x.shape[1:], dtype=cd) if need_vt else x.new_empty(_EMPTY, dtype=cd))
    c = x.new_empty((1,) if count else _EMPTY, dtype=torch.float64)
    return out, h, vt, c


@torch.library.custom_op("sewforge::neuron_backward", mutates_args=())
def neuron_backward(grad_out: Tensor, x: Optional[Tensor], h: Tensor, shortcut: Optional[Tensor], params: Tensor,
                    v0: Optional[Tensor], spec: str, impl: str, v_threshold: float, v_reset: Optional[float],
                    alpha: float, need_gx: bool, need_gsc: bool, need_gp: bool, x_dtype: torch.dtype,
                    sc_dtype: torch.dtype) -> Tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_shortcut, grad_params)``; gradients not asked for are empty tensors."""
    _, bwd = _launchers(impl)
    s = spec_from_key(spec)
    gx, gsc, gp = bwd(grad_out, x, h, shortcut, params, v0, s, v_threshold, v_reset, alpha,
                      need_gx=need_gx, need_gsc=need_gsc, need_gp=need_gp, x_dtype=x_dtype,
                      sc_dtype=sc_dtype if s.g is not None else None)
    return (gx if gx is not None else h.new_empty(_EMPTY, dtype=x_dtype),
            gsc if gsc is not None else h.new_empty(_EMPTY, dtype=sc_dtype),
            gp if gp is not None else h.new_empty(_EMPTY, dtype=params.dtype))


@neuron_backward.register_fake
def _(grad_out, x, h, shortcut, params, v0, spec, impl, v_threshold, v_reset, alpha, need_gx, need_gsc, need_gp,
      x_dtype, sc_dtype):
    has_g = spec_from_key(spec).g is not None
    gx = torch.empty_like(h, dtype=x_dtype) if need_gx else h.new_empty(_EMPTY, dtype=x_dtype)
    gsc = torch.empty_like(h, dtype=sc_dtype) if need_gsc and has_g else h.new_empty(_EMPTY, dtype=sc_dtype)
    gp = torch.empty_like(params) if need_gp else params.new_empty(_EMPTY)
    return gx, gsc, gp


def _setup_context(ctx, inputs, output) -> None:
    x, shortcut, params, v0, spec, impl, v_threshold, v_reset, alpha, save_h, need_vt, count = inputs
    _, h, vt, c = output
    ctx.mark_non_differentiable(h, vt, c)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for H, V[T] and the count
    s = spec_from_key(spec)
    keep_sc = s.g is not None and s.g.backward_reads_s
    ctx.save_for_backward(x if s.charge.needs_input_in_backward else None, h,
                          shortcut if keep_sc else None, params, v0)
    ctx.spec, ctx.impl = spec, impl
    ctx.v_threshold, ctx.v_reset = v_threshold, v_reset
    ctx.x_dtype, ctx.out_dtype = x.dtype, output[0].dtype
    ctx.sc_dtype = shortcut.dtype if shortcut is not None else x.dtype
    ctx.has_g = s.g is not None
    ctx.grad_s_is_grad_out = ctx.has_g and s.g.grad_s_is_grad_out
    ctx.alpha = alpha


def _backward(ctx, grad_out, _gh, _gvt, _gcount):
    x, h, shortcut, params, v0 = ctx.saved_tensors
    need_gx, need_gsc, need_gp = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
    if grad_out is None:  # the output was not used in the loss
        grad_out = torch.zeros_like(h, dtype=ctx.out_dtype)
    if h.numel() == 0 and h.dim() == 1 and grad_out.numel() > 0:
        raise RuntimeError("sewforge neuron: the forward ran without keeping H (no input needed a gradient)")
    go = as_time_dense(grad_out.to(ctx.out_dtype), like=h) if grad_out.numel() > 0 else grad_out
    need_gsc = need_gsc and ctx.has_g
    # ADD: dL/dS is dL/dO itself, handed on (no full-size copy written and kept during backward)
    pass_on = need_gsc and ctx.grad_s_is_grad_out and ctx.sc_dtype == ctx.out_dtype
    gx, gsc, gp = neuron_backward(go, x, h, shortcut, params, v0, ctx.spec, ctx.impl, ctx.v_threshold, ctx.v_reset,
                                  ctx.alpha, need_gx, need_gsc and not pass_on, need_gp, ctx.x_dtype, ctx.sc_dtype)
    gx = gx if need_gx else None
    gsc = grad_out.to(ctx.out_dtype) if pass_on else (gsc if need_gsc else None)
    gp = gp if need_gp else None
    gx, gsc, gp = first_order(gx, gsc, gp, device=h.device)
    return gx, gsc, gp, None, None, None, None, None, None, None, None, None


#: what differentiating a fused neuron op's gradients raises
TWICE_NEURON = ("sewforge's fused neuron op cannot differentiate twice through its own backward (create_graph=True, "
                "e.g. a gradient penalty); use backend='torch' (SEWFORGE_BACKEND=torch) for higher-order gradients")


def first_order(*grads: Optional[Tensor], device: torch.device, message: str = TWICE_NEURON
                ) -> Tuple[Optional[Tensor], ...]:
    """The gradients a fused backward computed, marked (under create_graph=True) so that
    differentiating them again raises ``message`` instead of failing inside autograd or treating
    them as constants: the kernels' gradients have no derivative."""
    if not torch.is_grad_enabled():
        return grads
    anchor = torch.zeros(0, device=device, requires_grad=True)
    return tuple(_NotTwiceDifferentiable.apply(t, anchor, message) if t is not None else None for t in grads)


neuron_forward.register_autograd(_backward, setup_context=_setup_context)

class _NotTwiceDifferentiable(torch.autograd.Function):
    """Marks a gradient computed by a fused backward: differentiating it again raises (rather
    than silently treating it as a constant, as a plain kernel output would be)."""

    @staticmethod
    def forward(ctx, grad, anchor, message):  # type: ignore[override]
        ctx.message = message
        return grad.clone()

    @staticmethod
    def backward(ctx, _grad):  # type: ignore[override]
        raise RuntimeError(ctx.message)


def fused_neuron(x: Tensor, spec: str, how: str, params: Tensor, alpha: float, v_threshold: float,
                 v_reset: Optional[float], *, v0: Optional[Tensor] = None,
                 shortcut: Optional[Tensor] = None, need_state: bool = False,
                 count: bool = False) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Run the fused op: ``(out, v_last or None, spike_count or None)``.

    ``spec`` and ``how`` come from :func:`sewforge.kernels.spec.resolve`: the specialisation's key
    and ``"triton"``, ``"c"`` or ``"torch"``. Prepares what the launchers require (time-dense
    layout kept from the input, one dtype for X and the shortcut, parameters in the compute dtype).
    """
    if shortcut is not None and shortcut.dtype != x.dtype:  # one I/O dtype: cast up (exact), autograd casts back
        common = torch.promote_types(x.dtype, shortcut.dtype)
        x, shortcut = x.to(common), shortcut.to(common)
    x = as_time_dense(x)
    if shortcut is not None:
        shortcut = as_time_dense(shortcut, like=x)
    cd = compute_dtype(x.dtype)
    p = params.to(device=x.device, dtype=cd)
    if p.numel() == 0:
        p = torch.zeros(1, dtype=cd, device=x.device)
    if v0 is not None:
        v0 = as_time_dense(v0.to(cd), like=x[0]) if x.shape[0] > 0 else v0.to(cd)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or p.requires_grad
                                              or (shortcut is not None and shortcut.requires_grad))
    if how == "torch":  # no C form or no compiler: the plain-PyTorch path
        out, vt, c = _TorchPath.apply(x, shortcut, p, v0, spec_from_key(spec), float(alpha), float(v_threshold),
                                      v_reset, need_state, count)
        return out, (vt if need_state else None), (c if count else None)
    impl = "triton" if how == "triton" else "cpu"
    out, h, vt, c = neuron_forward(x, shortcut, p, v0, spec, impl, float(v_threshold),
                                   None if v_reset is None else float(v_reset), float(alpha), needs_grad,
                                   need_state, count)
    return out, (vt if need_state else None), (c if count else None)


class _TorchPath(torch.autograd.Function):
    """The fused algorithm in plain PyTorch (:func:`sewforge.kernels.cpu.torch_forward`), for
    charges without C forms or machines without a C compiler. Its backward differentiates the
    user's PyTorch charge step by step, which needs autograd inside the backward, so it is an
    ``autograd.Function`` rather than a custom op (``torch.compile`` traces through it)."""

    @staticmethod
    def forward(ctx, x, shortcut, params, v0, spec, alpha, v_threshold, v_reset, need_vt, count):  # type: ignore[override]
        from .cpu import torch_forward

        needs_grad = any(ctx.needs_input_grad[:3])
        out, h, vt, c = torch_forward(x, shortcut, params, v0, spec, v_threshold, v_reset, save_h=needs_grad,
                                      need_vt=need_vt, count=count)
        ctx.spec, ctx.alpha, ctx.v_threshold, ctx.v_reset = spec, alpha, v_threshold, v_reset
        ctx.sc_dtype = shortcut.dtype if shortcut is not None else None
        ctx.x_dtype, ctx.out_dtype = x.dtype, out.dtype
        if needs_grad:
            ctx.save_for_backward(x, h, shortcut, params, v0)
        outs = (out, vt if vt is not None else x.new_empty(_EMPTY), c if c is not None else x.new_empty(_EMPTY))
        ctx.mark_non_differentiable(*outs[1:])
        return outs

    @staticmethod
    def backward(ctx, grad_out, _gvt, _gc):  # type: ignore[override]
        from .cpu import torch_backward

        x, h, shortcut, params, v0 = ctx.saved_tensors
        if grad_out is None:
            grad_out = torch.zeros_like(h, dtype=ctx.out_dtype)
        gx, gsc, gp = torch_backward(grad_out, x, h, shortcut, params, v0, ctx.spec, ctx.v_threshold, ctx.v_reset,
                                     ctx.alpha, need_gx=ctx.needs_input_grad[0],
                                     need_gsc=ctx.needs_input_grad[1], need_gp=ctx.needs_input_grad[2],
                                     x_dtype=ctx.x_dtype, sc_dtype=ctx.sc_dtype)
        return gx, gsc, gp, None, None, None, None, None, None, None
