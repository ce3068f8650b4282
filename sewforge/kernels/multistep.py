"""Fused multi-step neuron kernel, optionally fused with a SEW element-wise function.

One launch runs all T steps forward (``out[t] = SN(X)[t]`` or ``g(SN(X)[t], S[t])``) and one
launch runs the backward in reverse time. Each program owns ``BLOCK`` neurons and keeps their
state in fp32 (fp64 for fp64 inputs) registers across the time loop.

The kernels are generic: the neuron's charge equation and its partial derivatives, the surrogate
derivative and the element-wise function are ``@triton.jit`` functions passed as ``tl.constexpr``
arguments, so every (neuron, surrogate, reset mode, detach, g) combination is compiled into its
own specialised kernel on first use and cached by Triton (see :func:`specializations`).

Memory traffic per element and step (b = bytes of the input dtype, c = 4 for the fp32 state):

=========================  ===============================  ==============================
pass                       this kernel                      minimum for the op
=========================  ===============================  ==============================
forward                    read X (b), write S (b),         read X, write S
                           write H (c)
backward                   read dS (b), read H (c),         read dS, read what the
                           write dX (b)                     recurrence needs (H), write dX
+ fused g (forward)        read shortcut (b), write O (b)   same
+ fused g (backward)       read shortcut (b), write dS_sc   same
=========================  ===============================  ==============================

Saving H (the charged potential, in the state dtype) is the one extra tensor: from it the backward
recomputes the spikes (``H >= V_th``, bit-identical to the forward's decision because H is kept
at full state precision), the post-reset potential and every surrogate value, so nothing else is
saved; X is read back only for neurons whose derivatives need it. With fp16 inputs that is
2+2+4 = 8 bytes forward and 2+4+2 = 8 bytes backward per element and step, against 4 + 6 for
an implementation that would also save spikes and V.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Tuple

import torch

from .._triton import interpreting, jit, tl
from .reference import compute_dtype
from .spec import KernelSpec, specialize, specializations  # noqa: F401  (re-exported)

__all__ = ["KernelSpec", "specialize", "specializations", "multistep_triton", "fill_outputs_with",
           "compile_ahead"]

_OUTPUT_FILL: Optional[float] = None


@contextlib.contextmanager
def fill_outputs_with(value: float = float("nan")):
    """Pre-fill every tensor the kernels write (instead of leaving it uninitialised), so a test
    sees any element a kernel forgot to write."""
    global _OUTPUT_FILL
    old, _OUTPUT_FILL = _OUTPUT_FILL, value
    try:
        yield
    finally:
        _OUTPUT_FILL = old


def _empty(shape, dtype, device) -> torch.Tensor:
    if _OUTPUT_FILL is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.full(shape, _OUTPUT_FILL, dtype=dtype, device=device)


@jit
def _no_g(a, s):
    return a


@jit
def _initial_state(V0, offs, mask, v_rest, HAS_V0: tl.constexpr, BLOCK: tl.constexpr, CD: tl.constexpr):
    if HAS_V0:
        v = tl.load(V0 + offs, mask=mask, other=0.0).to(CD)
    else:
        v = tl.zeros([BLOCK], CD) + v_rest
    return v


@jit
def _reset(h, s, v_rest, v_th, HARD_RESET: tl.constexpr):
    """The potential after a step: back to v_rest where it fired (hard) or minus V_th (soft)."""
    if HARD_RESET:
        v = tl.where(s > 0, v_rest, h)
    else:
        v = h - s * v_th
    return v


@jit(do_not_specialize=["T"])  # one kernel for every sequence length
def _multistep_fwd(
    X, SC, OUT, H, P, V0, VT,
    N, T, v_th, v_reset,
    CHARGE: tl.constexpr, G: tl.constexpr,
    HAS_G: tl.constexpr, HARD_RESET: tl.constexpr, HAS_V0: tl.constexpr,
    STORE_VT: tl.constexpr, SAVE_H: tl.constexpr, BLOCK: tl.constexpr, CD: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v_rest = v_reset  # the host passes 0 for a soft reset
    v = _initial_state(V0, offs, mask, v_rest, HAS_V0, BLOCK, CD)
    n64 = tl.cast(N, tl.int64)  # t * N passes 2**31 on large activations
    for t in range(T):
        idx = offs + t * n64
        x = tl.load(X + idx, mask=mask, other=0.0).to(CD)
        h = CHARGE(v, x, P, v_rest).to(CD)
        s = (h >= v_th).to(CD)
        if SAVE_H:
            tl.store(H + idx, h, mask=mask)
        if HAS_G:
            sc = tl.load(SC + idx, mask=mask, other=0.0).to(CD)
            o = G(s, sc)
        else:
            o = s
        tl.store(OUT + idx, o.to(OUT.dtype.element_ty), mask=mask)
        v = _reset(h, s, v_rest, v_th, HARD_RESET)
    if STORE_VT:
        tl.store(VT + offs, v, mask=mask)


@jit(do_not_specialize=["T"])
def _multistep_bwd(
    GO, X, H, SC, P, V0, GX, GSC, GP,
    N, T, v_th, v_reset, alpha,
    DH_DV: tl.constexpr, DH_DX: tl.constexpr, DH_DP: tl.constexpr, SG: tl.constexpr,
    G_DA: tl.constexpr, G_DS: tl.constexpr,
    HAS_G: tl.constexpr, HAS_DP: tl.constexpr, NEEDS_X: tl.constexpr, HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_V0: tl.constexpr, BLOCK: tl.constexpr, CD: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v_rest = v_reset  # the host passes 0 for a soft reset
    v_init = _initial_state(V0, offs, mask, v_rest, HAS_V0, BLOCK, CD)
    grad_v = tl.zeros([BLOCK], CD)  # dL/dV[t], carried backwards in time
    dp = tl.zeros([BLOCK], CD)
    n64 = tl.cast(N, tl.int64)  # t * N passes 2**31 on large activations
    h = tl.load(H + offs + (T - 1) * n64, mask=mask, other=0.0)
    for i in range(T):
        t = T - 1 - i
        idx = offs + t * n64
        # V[t-1] is rebuilt from H[t-1] (or the initial state at t = 0)
        h_prev = tl.load(H + idx - n64, mask=mask & (t > 0), other=0.0)
        v_prev = _reset(h_prev, (h_prev >= v_th).to(CD), v_rest, v_th, HARD_RESET)
        v_prev = tl.where(t > 0, v_prev, v_init)

        s = (h >= v_th).to(CD)
        sg = SG(h - v_th, alpha).to(CD)
        go = tl.load(GO + idx, mask=mask, other=0.0).to(CD)
        if HAS_G:
            sc = tl.load(SC + idx, mask=mask, other=0.0).to(CD)
            tl.store(GSC + idx, (go * G_DS(s, sc)).to(GSC.dtype.element_ty), mask=mask)
            ga = go * G_DA(s, sc)
        else:
            ga = go
        if HARD_RESET:
            if DETACH_RESET:
                dv_dh = 1.0 - s
            else:
                dv_dh = 1.0 - s + (v_rest - h) * sg
        else:
            if DETACH_RESET:
                dv_dh = s * 0.0 + 1.0
            else:
                dv_dh = 1.0 - v_th * sg
        grad_h = ga * sg + grad_v * dv_dh
        if NEEDS_X:
            x = tl.load(X + idx, mask=mask, other=0.0).to(CD)
        else:
            x = h
        tl.store(GX + idx, (grad_h * DH_DX(v_prev, x, h, P, v_rest)).to(GX.dtype.element_ty), mask=mask)
        if HAS_DP:
            dp += grad_h * DH_DP(v_prev, x, h, P, v_rest).to(CD)
        grad_v = grad_h * DH_DV(v_prev, x, h, P, v_rest).to(CD)
        h = h_prev
    if HAS_DP:
        tl.store(GP + pid, tl.sum(tl.where(mask, dp, 0.0), axis=0))


# --------------------------------------------------------------------------------------------
def forward_constants(spec: KernelSpec, *, has_v0: bool, store_vt: bool, save_h: bool, block: int, cd) -> Dict[str, Any]:
    """The ``tl.constexpr`` arguments of the forward kernel for this specialisation."""
    has_g = spec.g is not None
    return dict(CHARGE=spec.charge.triton_charge, G=spec.g.triton_fn if has_g else _no_g, HAS_G=has_g,
                HARD_RESET=spec.hard_reset, HAS_V0=has_v0, STORE_VT=store_vt, SAVE_H=save_h,
                BLOCK=block, CD=cd)


def backward_constants(spec: KernelSpec, *, has_dp: bool, needs_x: bool, has_v0: bool, block: int, cd) -> Dict[str, Any]:
    """The ``tl.constexpr`` arguments of the backward kernel for this specialisation."""
    has_g = spec.g is not None
    ch = spec.charge
    return dict(DH_DV=ch.triton_dh_dv, DH_DX=ch.triton_dh_dx, DH_DP=ch.triton_dh_dp if has_dp else ch.triton_dh_dx,
                SG=spec.surrogate.triton_derivative,
                G_DA=spec.g.triton_dg_da if has_g else _no_g, G_DS=spec.g.triton_dg_ds if has_g else _no_g,
                HAS_G=has_g, HAS_DP=has_dp, NEEDS_X=needs_x, HARD_RESET=spec.hard_reset,
                DETACH_RESET=spec.detach_reset, HAS_V0=has_v0, BLOCK=block, CD=cd)


# No multiply-add contraction: the charge must round exactly as the PyTorch reference does, so
# that both fire on the same elements (the kernels are bound by memory, not arithmetic).
_LAUNCH_OPTIONS: Dict[str, Any] = {} if interpreting() else {"enable_fp_fusion": False}


def _block_size(n: int) -> int:
    if interpreting():  # the interpreter pays per program, not per element
        return max(16, min(4096, 1 << (max(n, 1) - 1).bit_length()))
    return 1024 if n >= 1 << 16 else 256


class _MultiStepFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, params, shortcut, v0, spec, surrogate, v_threshold, v_reset, need_vt):  # type: ignore[override]
        T = x.shape[0]
        n = x.numel() // max(T, 1)
        cd = compute_dtype(x.dtype)
        x_c = x.contiguous()
        has_g = spec.g is not None
        sc = shortcut.contiguous() if has_g else x_c
        out_dtype = torch.promote_types(x.dtype, shortcut.dtype) if has_g else x.dtype
        out = _empty(x.shape, out_dtype, x.device)
        needs_grad = any(ctx.needs_input_grad[:3])
        h = _empty(x.shape, cd, x.device) if needs_grad else out
        vt = _empty(x.shape[1:] if need_vt else (0,), cd, x.device)
        p = params.to(device=x.device, dtype=cd).contiguous()
        if p.numel() == 0:
            p = torch.zeros(1, dtype=cd, device=x.device)
        v0_c = v0.to(cd).contiguous() if v0 is not None else out
        block = _block_size(n)
        grid = (triton_cdiv(n, block),)
        if n > 0 and T > 0:
            _multistep_fwd[grid](
                x_c, sc, out, h, p, v0_c, vt, n, T, float(v_threshold),
                float(v_reset if v_reset is not None else 0.0),
                **forward_constants(spec, has_v0=v0 is not None, store_vt=need_vt, save_h=needs_grad, block=block,
                                         cd=_tl_dtype(cd)),
                **_LAUNCH_OPTIONS,
            )
        elif need_vt:
            vt.copy_(v0 if v0 is not None else torch.full_like(vt, v_reset or 0.0))
        ctx.spec, ctx.surrogate = spec, surrogate
        ctx.v_threshold, ctx.v_reset = float(v_threshold), v_reset
        ctx.has_v0 = v0 is not None
        ctx.x_dtype, ctx.sc_dtype = x.dtype, (shortcut.dtype if has_g else None)
        if needs_grad:
            ctx.save_for_backward(
                x_c if spec.charge.needs_input_in_backward else None, h, sc if has_g else None, p,
                v0_c if v0 is not None else None)
        ctx.mark_non_differentiable(vt)
        return out, vt

    @staticmethod
    def backward(ctx, grad_out, _grad_vt):  # type: ignore[override]
        x_saved, h, sc, p, v0 = ctx.saved_tensors
        spec = ctx.spec
        T = h.shape[0]
        n = h.numel() // max(T, 1)
        cd = h.dtype
        go = grad_out.contiguous()
        gx = _empty(h.shape, ctx.x_dtype, h.device)
        has_g = spec.g is not None
        gsc = _empty(h.shape, ctx.sc_dtype, h.device) if has_g else gx
        has_dp = spec.charge.triton_dh_dp is not None and ctx.needs_input_grad[1]
        block = _block_size(n)
        nprog = triton_cdiv(n, block)
        gp_partial = _empty((nprog,), cd, h.device) if has_dp else torch.zeros(1, dtype=cd, device=h.device)
        if n > 0 and T > 0:
            _multistep_bwd[(nprog,)](
                go, x_saved if x_saved is not None else h, h, sc if has_g else h, p,
                v0 if v0 is not None else h, gx, gsc, gp_partial,
                n, T, ctx.v_threshold, float(ctx.v_reset if ctx.v_reset is not None else 0.0),
                float(ctx.surrogate.alpha),
                **backward_constants(spec, has_dp=has_dp, needs_x=x_saved is not None, has_v0=v0 is not None,
                                          block=block, cd=_tl_dtype(cd)),
                **_LAUNCH_OPTIONS,
            )
        else:
            gx.zero_()
            gsc.zero_()
        gp = None
        if ctx.needs_input_grad[1]:
            gp = torch.zeros_like(p)
            if has_dp:
                gp[0] = gp_partial.sum()  # a full reduction over every element and step
        if torch.is_grad_enabled():  # create_graph=True: the kernel's gradients have no derivative
            anchor = torch.zeros(0, device=h.device, requires_grad=True)  # puts the marker in the graph
            gx, gp, gsc = (_NotTwiceDifferentiable.apply(t, anchor) if t is not None else None
                           for t in (gx, gp, gsc))
        return gx, gp, (gsc if has_g else None), None, None, None, None, None, None


class _NotTwiceDifferentiable(torch.autograd.Function):
    """Marks a gradient computed by the backward kernel: differentiating it again raises (rather
    than silently treating it as a constant, as a plain kernel output would be)."""

    @staticmethod
    def forward(ctx, grad, anchor):  # type: ignore[override]
        return grad.clone()

    @staticmethod
    def backward(ctx, _grad):  # type: ignore[override]
        raise RuntimeError(
            "sewforge's Triton neuron kernel cannot differentiate twice through its own backward "
            "(create_graph=True, e.g. a gradient penalty); use backend='torch' (SEWFORGE_BACKEND=torch) "
            "for higher-order gradients")


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def multistep_triton(x, charge, params, surrogate, v_threshold, v_reset, detach_reset,
                     v0=None, shortcut=None, g=None, need_vt=False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fused kernel version of :func:`sewforge.kernels.reference.multistep_reference`."""
    spec = specialize(charge, surrogate, g, v_reset is not None, detach_reset)
    if charge.num_params and params.numel() < charge.num_params:
        raise ValueError(f"neuron {charge.name} needs {charge.num_params} parameters, got {params.numel()}")
    out, vt = _MultiStepFunction.apply(x, params, shortcut if g is not None else None, v0, spec, surrogate,
                                       v_threshold, v_reset, need_vt)
    return out, vt


_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def compile_ahead(spec: KernelSpec, dtype: torch.dtype = torch.float16, *, arch: int = 90,
                  block: int = 1024, training: bool = True) -> Dict[str, Any]:
    """Compile this specialisation's forward (and backward) kernels for an NVIDIA GPU of compute
    capability ``arch`` (90 = H100) without needing one: Triton's real compiler down to a cubin.

    Returns ``{"forward": CompiledKernel, "backward": CompiledKernel or None}``. Used by the tests
    to check on a machine without a GPU that every kernel compiles, and to inspect the PTX.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_ahead needs Triton's compiler: unset TRITON_INTERPRET in this process")
    if dtype not in _PTR:
        raise ValueError(f"compile_ahead: dtype {dtype} is not one of {', '.join(map(str, _PTR))}")
    cd = compute_dtype(dtype)
    x_ptr, c_ptr = _PTR[dtype], _PTR[cd]
    target = GPUTarget("cuda", arch, 32)

    def build(kernel, pointers: Dict[str, str], scalars: Dict[str, str], constants: Dict[str, Any]):
        sig = {**pointers, **scalars, **{k: "constexpr" for k in constants}}
        names = kernel.arg_names
        missing = set(names) - set(sig)
        if missing:
            raise RuntimeError(f"compile_ahead: no signature for kernel arguments {sorted(missing)}")
        constexprs = {(names.index(k),): v for k, v in constants.items()}
        return triton.compile(ASTSource(kernel, {k: sig[k] for k in names}, constexprs), target=target,
                              options={"enable_fp_fusion": False})

    fwd = build(_multistep_fwd,
                dict(X=x_ptr, SC=x_ptr, OUT=x_ptr, H=c_ptr, P=c_ptr, V0=c_ptr, VT=c_ptr),
                dict(N="i32", T="i32", v_th="fp32", v_reset="fp32"),
                forward_constants(spec, has_v0=False, store_vt=False, save_h=training, block=block, cd=_tl_dtype(cd)))
    bwd = None
    if training:
        bwd = build(_multistep_bwd,
                    dict(GO=x_ptr, X=x_ptr, H=c_ptr, SC=x_ptr, P=c_ptr, V0=c_ptr, GX=x_ptr, GSC=x_ptr, GP=c_ptr),
                    dict(N="i32", T="i32", v_th="fp32", v_reset="fp32", alpha="fp32"),
                    backward_constants(spec, has_dp=spec.charge.triton_dh_dp is not None,
                                            needs_x=spec.charge.needs_input_in_backward, has_v0=False,
                                            block=block, cd=_tl_dtype(cd)))
    return {"forward": fwd, "backward": bwd}
