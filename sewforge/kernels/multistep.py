"""Fused multi-step neuron kernel, optionally fused with a SEW element-wise function.

One launch runs all T steps forward (``out[t] = SN(X)[t]`` or ``g(SN(X)[t], S[t])``) and one
launch runs the backward in reverse time. Each program owns ``BLOCK`` neurons and keeps their
state in fp32 (fp64 for fp64 inputs) registers across the time loop.

The kernels are generic: the neuron's charge equation and its partial derivatives, the surrogate
derivative and the element-wise function are ``@triton.jit`` functions passed as ``tl.constexpr``
arguments, so every (neuron, surrogate, reset mode, detach, g) combination is compiled into its
own specialised kernel on first use and cached by Triton (see :func:`specializations`).

Two host launchers, :func:`triton_forward` and :func:`triton_backward`, allocate the outputs and
launch; they hold no autograd logic (the custom ops of :mod:`sewforge.kernels.ops` and
:func:`multistep_triton` wrap them). Every tensor is addressed as a flat buffer of ``T * N``
elements (``N`` = elements per step), so any layout that is dense with time outermost works
as is, channels_last included, and the outputs are allocated with the input's strides. Block
size and warps are tuned per ``N`` by ``triton.autotune`` on the GPU; the interpreter (tests on
the CPU) runs one block size chosen from ``N``.

Memory traffic in bytes per element and step when training (:func:`traffic_bytes`); b = bytes
of the input dtype, c = 4 for the fp32 state (8 for fp64). The minimum reads every input once and
writes every output once, so its backward must recompute the potentials from X (b bytes instead of
the c of H, and a second sweep over time):

=====================  =====================================  ======  =============  =======
pass                   this kernel                            bytes   fp32 / fp16    minimum
=====================  =====================================  ======  =============  =======
forward, no g          read X, write spikes, write H          2b + c  12 / 8         2b
forward, g             read X and S, write O, write H         3b + c  16 / 10        3b
backward, no g         read dO and H, write dX                2b + c  12 / 8         3b
backward, g = ADD      read dO and H, write dX and dS         3b + c  16 / 10        4b
backward, AND / IAND   read dO, H and S, write dX and dS      4b + c  20 / 12        5b
=====================  =====================================  ======  =============  =======

Totals, fp32 / fp16 (bf16 as fp16): 24 / 16 without g (minimum 20 / 10), 32 / 20 with ADD
(28 / 14), 36 / 22 with AND or IAND (32 / 16). Inference writes no H and is at the minimum, 2b
or 3b. A neuron whose derivatives read X (``needs_input_in_backward``) adds b to the backward.
Applying g outside the kernel instead would cost at least 4b more: the spikes written and read
again in the forward, their gradient written and read again in the backward.

Saving H (the charged potential, in the state dtype) is the one extra tensor: from it the backward
recomputes the spikes (``H >= V_th``, bit-identical to the forward's decision because H is kept
at full state precision), the post-reset potential and every surrogate value, so nothing else is
saved. The scalars V_th, V_reset and alpha reach the kernels as fp64 and are rounded once to
the state dtype, so fp64 inputs fire exactly as the fp64 reference does.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, List, Optional, Tuple

import torch

from .._triton import HAS_TRITON, interpreting, jit, tl
from .layout import fill_outputs_with, new_output as _empty_like, same_layout, time_dense  # noqa: F401
from .reference import compute_dtype
from .spec import KernelSpec, specialize, specializations  # noqa: F401  (re-exported)

__all__ = ["KernelSpec", "specialize", "specializations", "triton_forward", "triton_backward",
           "fill_outputs_with", "force_block", "time_dense", "compile_ahead", "traffic_bytes", "TUNING_CONFIGS"]

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


# The run-time scalars are declared fp64 (a Python float would be passed as fp32) and rounded once
# to the state dtype CD: fp64 inputs compare against the exact fp64 threshold, fp32 state against
# the same fp32 value PyTorch uses.
@jit(do_not_specialize=["T"])  # one kernel for every sequence length
def _multistep_fwd(
    X, SC, OUT, H, P, V0, VT, CNT,
    N, T, v_threshold: "fp64", v_reset: "fp64",
    CHARGE: tl.constexpr, G: tl.constexpr,
    HAS_G: tl.constexpr, HARD_RESET: tl.constexpr, HAS_V0: tl.constexpr,
    STORE_VT: tl.constexpr, SAVE_H: tl.constexpr, COUNT: tl.constexpr, BLOCK: tl.constexpr, CD: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v_th = tl.full([], v_threshold, CD)
    v_rest = tl.full([], v_reset, CD)  # the host passes 0 for a soft reset
    v = _initial_state(V0, offs, mask, v_rest, HAS_V0, BLOCK, CD)
    n64 = tl.cast(N, tl.int64)  # t * N passes 2**31 on large activations
    cnt = tl.zeros([BLOCK], tl.int32)  # spikes of each neuron (at most T)
    for t in range(T):
        idx = offs + t * n64
        x = tl.load(X + idx, mask=mask, other=0.0).to(CD)
        h = CHARGE(v, x, P, v_rest).to(CD)
        fired = h >= v_th
        s = fired.to(CD)
        if SAVE_H:
            tl.store(H + idx, h, mask=mask)
        if HAS_G:
            sc = tl.load(SC + idx, mask=mask, other=0.0).to(CD)
            o = G(s, sc)
        else:
            o = s
        tl.store(OUT + idx, o.to(OUT.dtype.element_ty), mask=mask)
        if COUNT:
            cnt += (fired & mask).to(tl.int32)
        v = _reset(h, s, v_rest, v_th, HARD_RESET)
    if STORE_VT:
        tl.store(VT + offs, v, mask=mask)
    if COUNT:
        # whole numbers below 2**53: the fp64 sum is exact in any order (deterministic)
        tl.atomic_add(CNT, tl.sum(cnt.to(tl.int64), axis=0).to(tl.float64), sem="relaxed")


@jit(do_not_specialize=["T"])
def _multistep_bwd(
    GO, X, H, SC, P, V0, GX, GSC, GP,
    N, T, v_threshold: "fp64", v_reset: "fp64", alpha: "fp64",
    DH_DV: tl.constexpr, DH_DX: tl.constexpr, DH_DP: tl.constexpr, SG: tl.constexpr,
    G_DA: tl.constexpr, G_DS: tl.constexpr,
    HAS_G: tl.constexpr, READ_SC: tl.constexpr, WRITE_GX: tl.constexpr, WRITE_GSC: tl.constexpr,
    HAS_DP: tl.constexpr, NUM_DP: tl.constexpr, NEEDS_X: tl.constexpr, HARD_RESET: tl.constexpr,
    DETACH_RESET: tl.constexpr, HAS_V0: tl.constexpr, BLOCK: tl.constexpr, CD: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    v_th = tl.full([], v_threshold, CD)
    v_rest = tl.full([], v_reset, CD)  # the host passes 0 for a soft reset
    a = tl.full([], alpha, CD)
    v_init = _initial_state(V0, offs, mask, v_rest, HAS_V0, BLOCK, CD)
    grad_v = tl.zeros([BLOCK], CD)  # dL/dV[t], carried backwards in time
    dp = tl.zeros([NUM_DP, BLOCK], CD)  # one row per learnable parameter
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
        sg = SG(h - v_th, a).to(CD)
        go = tl.load(GO + idx, mask=mask, other=0.0).to(CD)
        if HAS_G:
            if READ_SC:
                sc = tl.load(SC + idx, mask=mask, other=0.0).to(CD)
            else:
                sc = s  # g's derivatives do not depend on S (ADD): the shortcut is never read
            if WRITE_GSC:
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
        if WRITE_GX:
            tl.store(GX + idx, (grad_h * DH_DX(v_prev, x, h, P, v_rest)).to(GX.dtype.element_ty), mask=mask)
        if HAS_DP:
            dp += grad_h[None, :] * DH_DP(v_prev, x, h, P, v_rest).to(CD)
        grad_v = grad_h * DH_DV(v_prev, x, h, P, v_rest).to(CD)
        h = h_prev
    if HAS_DP:
        # one partial sum per program; the host adds them up (deterministic, unlike float atomics)
        tl.store(GP + pid * NUM_DP + tl.arange(0, NUM_DP), tl.sum(tl.where(mask[None, :], dp, 0.0), axis=1))


# --------------------------------------------------------------------------------------------
def forward_constants(spec: KernelSpec, *, has_v0: bool, store_vt: bool, save_h: bool, count: bool,
                      cd) -> Dict[str, Any]:
    """The ``tl.constexpr`` arguments of the forward kernel for this specialisation (BLOCK apart)."""
    has_g = spec.g is not None
    return dict(CHARGE=spec.charge.triton_charge, G=spec.g.triton_fn if has_g else _no_g, HAS_G=has_g,
                HARD_RESET=spec.hard_reset, HAS_V0=has_v0, STORE_VT=store_vt, SAVE_H=save_h, COUNT=count, CD=cd)


def backward_constants(spec: KernelSpec, *, has_dp: bool, needs_x: bool, read_sc: bool, write_gx: bool,
                       write_gsc: bool, has_v0: bool, cd) -> Dict[str, Any]:
    """The ``tl.constexpr`` arguments of the backward kernel for this specialisation (BLOCK apart)."""
    has_g = spec.g is not None
    ch = spec.charge
    return dict(DH_DV=ch.triton_dh_dv, DH_DX=ch.triton_dh_dx, DH_DP=ch.triton_dh_dp if has_dp else ch.triton_dh_dx,
                SG=spec.surrogate.triton_derivative,
                G_DA=spec.g.triton_dg_da if has_g else _no_g, G_DS=spec.g.triton_dg_ds if has_g else _no_g,
                HAS_G=has_g, READ_SC=read_sc, WRITE_GX=write_gx, WRITE_GSC=write_gsc, HAS_DP=has_dp,
                NUM_DP=ch.dp_rows if has_dp else 1, NEEDS_X=needs_x, HARD_RESET=spec.hard_reset,
                DETACH_RESET=spec.detach_reset, HAS_V0=has_v0, CD=cd)


# No multiply-add contraction: the charge must round exactly as the PyTorch reference does, so
# that both fire on the same elements (the kernels are bound by memory, not arithmetic).
_LAUNCH_OPTIONS: Dict[str, Any] = {} if interpreting() else {"enable_fp_fusion": False}

#: (BLOCK, num_warps) tried by the autotuner on the GPU, per N (elements per step).
TUNING_CONFIGS: Tuple[Tuple[int, int], ...] = ((128, 1), (256, 2), (512, 4), (1024, 4), (1024, 8), (2048, 8))
_FORCED_BLOCK: Optional[int] = None


@contextlib.contextmanager
def force_block(block: int):
    """Launch with this BLOCK (one config, no tuning): tests use it to run many programs."""
    global _FORCED_BLOCK
    if block < 1 or block & (block - 1):
        raise ValueError(f"force_block: BLOCK must be a power of two, got {block}")
    old, _FORCED_BLOCK = _FORCED_BLOCK, block
    try:
        yield
    finally:
        _FORCED_BLOCK = old


def _prune(configs, named_args, **kwargs):
    # blocks larger than a step only add idle lanes: keep those up to the smallest that covers N
    n = named_args["N"]
    cover = 1 << max(int(n) - 1, 0).bit_length()
    kept = [c for c in configs if c.kwargs["BLOCK"] <= max(cover, 128)]
    return kept or configs[:1]


def _tuned(kernel, reset_to_zero: List[str]):
    if not HAS_TRITON:
        return None
    import triton

    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in TUNING_CONFIGS]
    # the accumulation buffers (allocated zeroed) are zeroed again before every benchmark run and
    # after the last one
    return triton.autotune(configs=configs, key=["N"], reset_to_zero=reset_to_zero,
                           prune_configs_by={"early_config_prune": _prune})(kernel)


_multistep_fwd_tuned = _tuned(_multistep_fwd, ["CNT"])
_multistep_bwd_tuned = _tuned(_multistep_bwd, ["GP"])


def _interpreter_block(n: int) -> int:
    # the interpreter pays per program, not per element: one program for most test shapes
    return max(16, min(4096, 1 << (max(n, 1) - 1).bit_length()))


def _launch_block(n: int) -> Optional[int]:
    """The BLOCK to launch the untuned kernel with, or None to let the autotuner choose."""
    if _FORCED_BLOCK is not None:
        return _FORCED_BLOCK
    return _interpreter_block(n) if interpreting() else None


def _smallest_block(tuned, n: int) -> int:
    """The smallest BLOCK the next launch may use (what per-program buffers are sized for)."""
    return _launch_block(n) or min(c.kwargs["BLOCK"] for c in tuned.configs)


def _launch(raw, tuned, n: int, args: tuple, constants: Dict[str, Any]) -> None:
    block = _launch_block(n)
    if block is None:
        tuned[lambda meta: (triton_cdiv(n, meta["BLOCK"]),)](*args, **constants, **_LAUNCH_OPTIONS)
    else:
        raw[(triton_cdiv(n, block),)](*args, **constants, BLOCK=block, **_LAUNCH_OPTIONS)


# --------------------------------------------------------------------------------------------
def _check_layout(name: str, t: Optional[torch.Tensor], ref: torch.Tensor) -> None:
    if t is not None and t.numel() and not same_layout(t, ref):
        raise ValueError(f"{name} has shape {tuple(t.shape)} and strides {t.stride()}; the fused kernel needs "
                         f"those of the input, {tuple(ref.shape)} and {ref.stride()}")


def _scalars(v_threshold: float, v_reset: Optional[float]) -> Tuple[float, float]:
    return float(v_threshold), float(v_reset) if v_reset is not None else 0.0


def _prepare_forward(x, shortcut, params, v0, spec: KernelSpec, v_threshold, v_reset, *, save_h: bool,
                     need_vt: bool, count: bool):
    """Outputs and kernel arguments of one forward launch (also used on the meta device by
    :func:`compile_ahead`, so it compiles exactly what the launcher launches)."""
    T = x.shape[0]
    n = math.prod(x.shape[1:])
    cd = compute_dtype(x.dtype)
    has_g = spec.g is not None
    if not time_dense(x):
        raise ValueError(f"triton_forward: x of shape {tuple(x.shape)} and strides {x.stride()} is not dense "
                         "with time outermost")
    if has_g:
        if shortcut is None:
            raise ValueError(f"triton_forward: g={spec.g.name} needs a shortcut")
        _check_layout("shortcut", shortcut, x)
    if T > 0:
        _check_layout("v0", v0, x[0])
    if params.dim() != 1 or params.numel() < max(1, spec.charge.num_params) or params.dtype != cd:
        raise ValueError(f"triton_forward: params must be 1-D {cd} with at least max(1, {spec.charge.num_params}) "
                         f"elements, got {tuple(params.shape)} {params.dtype}")
    out = _empty_like(x, torch.promote_types(x.dtype, shortcut.dtype) if has_g else x.dtype)
    h = _empty_like(x, cd) if save_h else None
    vt = _empty_like(x[0], cd) if need_vt and T > 0 else None
    cnt = torch.zeros(1, dtype=torch.float64, device=x.device) if count else None
    unused = torch.empty(1, dtype=cd, device=x.device)  # stands for every pointer a flag turns off
    args = (x, shortcut if has_g else unused, out, h if save_h else unused, params,
            v0 if v0 is not None else unused, vt if vt is not None else unused,
            cnt if count else torch.empty(1, dtype=torch.float64, device=x.device),
            n, T, *_scalars(v_threshold, v_reset))
    constants = forward_constants(spec, has_v0=v0 is not None, store_vt=vt is not None, save_h=save_h, count=count,
                                  cd=_tl_dtype(cd))
    return (out, h, vt, cnt), args, constants


def triton_forward(x, shortcut, params, v0, spec: KernelSpec, v_threshold: float, v_reset: Optional[float], *,
                   save_h: bool, need_vt: bool, count: bool
                   ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """-> (out, h, vt, spike_count)

    ``x``: ``[T, ...]``, dense with time outermost (each step may be channels_last);
    ``shortcut`` (when ``spec.g``) the same shape and strides, ``v0`` (or None) those of ``x[0]``;
    ``params`` 1-D in the compute dtype, at least one element. ``out`` is the spikes in x's dtype,
    or ``g(spikes, shortcut)`` in the promoted dtype; ``h`` (``save_h``) the charged potential and
    ``vt`` (``need_vt``) the potential after the last step, both in the compute dtype;
    ``spike_count`` (``count``) a 1-element fp64 tensor with the neuron's spikes (before g) summed
    over every step and element. Outputs take x's strides.
    """
    (out, h, vt, cnt), args, constants = _prepare_forward(
        x, shortcut, params, v0, spec, v_threshold, v_reset, save_h=save_h, need_vt=need_vt, count=count)
    T, n = args[9], args[8]
    if T > 0 and n > 0:
        _launch(_multistep_fwd, _multistep_fwd_tuned, n, args, constants)
    if need_vt and vt is None:  # no step: the initial state
        cd = compute_dtype(x.dtype)
        vt = (v0.to(cd, copy=True) if v0 is not None
              else torch.full(x.shape[1:], _scalars(v_threshold, v_reset)[1], dtype=cd, device=x.device))
    return out, h, vt, cnt


def _prepare_backward(grad_out, x, h, shortcut, params, v0, spec: KernelSpec, v_threshold, v_reset, alpha, *,
                      need_gx: bool, need_gsc: bool, need_gp: bool, x_dtype, sc_dtype, min_block: int):
    """Outputs and kernel arguments of one backward launch (see :func:`_prepare_forward`)."""
    T = h.shape[0]
    n = math.prod(h.shape[1:])
    cd = h.dtype
    has_g = spec.g is not None
    read_sc = has_g and spec.g.backward_reads_s
    needs_x = spec.charge.needs_input_in_backward
    write_gsc = need_gsc and has_g
    has_dp = need_gp and spec.charge.triton_dh_dp is not None
    if cd != compute_dtype(x_dtype):
        raise ValueError(f"triton_backward: h has dtype {cd}; inputs of {x_dtype} keep their state in "
                         f"{compute_dtype(x_dtype)}")
    if not time_dense(h):
        raise ValueError(f"triton_backward: h of strides {h.stride()} is not dense with time outermost")
    _check_layout("grad_out", grad_out, h)
    if needs_x:
        if x is None:
            raise ValueError(f"triton_backward: the derivatives of {spec.charge.name} read the input x; pass it")
        _check_layout("x", x, h)
    if read_sc:
        if shortcut is None:
            raise ValueError(f"triton_backward: the derivatives of g={spec.g.name} read the shortcut; pass it")
        _check_layout("shortcut", shortcut, h)
    if write_gsc and sc_dtype is None:
        raise ValueError("triton_backward: need_gsc needs sc_dtype, the dtype of the shortcut's gradient")
    if T > 0:
        _check_layout("v0", v0, h[0])
    gx = _empty_like(h, x_dtype) if need_gx else None
    gsc = _empty_like(h, sc_dtype) if write_gsc else None
    # sized for the smallest block any launch may use: a larger block leaves the tail at zero
    gp_partial = (torch.zeros(triton_cdiv(n, min_block) * spec.charge.dp_rows, dtype=cd, device=h.device)
                  if has_dp else None)
    unused = torch.empty(1, dtype=cd, device=h.device)
    args = (grad_out, x if needs_x else unused, h, shortcut if read_sc else unused, params,
            v0 if v0 is not None else unused, gx if need_gx else unused, gsc if write_gsc else unused,
            gp_partial if has_dp else unused,
            n, T, *_scalars(v_threshold, v_reset), float(alpha))
    constants = backward_constants(spec, has_dp=has_dp, needs_x=needs_x, read_sc=read_sc, write_gx=need_gx,
                                   write_gsc=write_gsc, has_v0=v0 is not None, cd=_tl_dtype(cd))
    return (gx, gsc, gp_partial), args, constants


def triton_backward(grad_out, x, h, shortcut, params, v0, spec: KernelSpec, v_threshold: float,
                    v_reset: Optional[float], alpha: float, *, need_gx: bool, need_gsc: bool, need_gp: bool,
                    x_dtype: torch.dtype, sc_dtype: Optional[torch.dtype]
                    ) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]:
    """-> (grad_x, grad_shortcut, grad_params)

    ``h`` is the forward's saved potential, ``grad_out`` (and ``x``, ``shortcut``) share its
    shape and strides. ``x`` is read only when ``spec.charge.needs_input_in_backward`` and the
    shortcut only when g's derivatives depend on it (not for ADD); either may be None otherwise.
    ``grad_x`` (``need_gx``) is in ``x_dtype``, ``grad_shortcut`` (``need_gsc`` and g) in
    ``sc_dtype``; ``grad_params`` (``need_gp``) has params' shape: at the charge's ``learnable``
    indices the gradient summed over every element and step, zeros elsewhere. A gradient that is not
    needed is None and is not written.
    """
    (gx, gsc, gp_partial), args, constants = _prepare_backward(
        grad_out, x, h, shortcut, params, v0, spec, v_threshold, v_reset, alpha, need_gx=need_gx,
        need_gsc=need_gsc, need_gp=need_gp, x_dtype=x_dtype, sc_dtype=sc_dtype,
        min_block=_smallest_block(_multistep_bwd_tuned, math.prod(h.shape[1:])))
    n, T = args[9], args[10]
    if T > 0 and n > 0 and (gx is not None or gsc is not None or gp_partial is not None):
        _launch(_multistep_bwd, _multistep_bwd_tuned, n, args, constants)
    else:
        for t in (gx, gsc, gp_partial):
            if t is not None:
                t.zero_()
    gp = None
    if need_gp:
        gp = torch.zeros_like(params)
        if gp_partial is not None:
            # a full reduction over every element and step, one row per learnable parameter
            ch = spec.charge
            sums = gp_partial.view(-1, ch.dp_rows).sum(0)
            gp[list(ch.learnable)] = sums[:len(ch.learnable)]
    return gx, gsc, gp


def triton_cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _tl_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# --------------------------------------------------------------------------------------------
def traffic_bytes(dtype: torch.dtype, g_name: Optional[str] = None, training: bool = True) -> Dict[str, int]:
    """Bytes moved per element and step by the kernels (the module docstring's table).

    Returns ``forward``, ``backward`` (0 unless ``training``), ``total``, and the op's minimum
    (every input read once, every output written once; the backward then re-reads X instead of
    H): ``min_forward``, ``min_backward``, ``minimum``. For a charge whose derivatives read X,
    add the input's bytes to ``backward``. The shortcut is taken to be of the input's dtype.
    """
    b = torch.empty((), dtype=dtype).element_size()
    c = torch.empty((), dtype=compute_dtype(dtype)).element_size()
    reads_s = False
    if g_name is not None:
        from ..elementwise import create_elementwise

        reads_s = create_elementwise(g_name).backward_reads_s
    g = 0 if g_name is None else b
    min_fwd = 2 * b + g  # read X (and S), write O
    fwd = min_fwd + (c if training else 0)  # + write H
    min_bwd = bwd = 0
    if training:
        sc = b if reads_s else 0
        bwd = 2 * b + c + g + sc  # read dO and H, write dX (and dS; read S unless ADD)
        min_bwd = 3 * b + g + sc  # read dO and X, write dX, ...
    return dict(forward=fwd, backward=bwd, total=fwd + bwd, min_forward=min_fwd, min_backward=min_bwd,
                minimum=min_fwd + min_bwd)


# --------------------------------------------------------------------------------------------
_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64"}


def _signature(kernel, args: tuple, constants: Dict[str, Any]) -> Tuple[Dict[str, str], Dict[Tuple[int], Any]]:
    names = kernel.arg_names
    sig: Dict[str, str] = {}
    for name, a in zip(names, args):
        if isinstance(a, torch.Tensor):
            sig[name] = _PTR[a.dtype]
        elif isinstance(a, float):
            sig[name] = "fp64"  # the kernels declare their float scalars fp64
        elif isinstance(a, int):
            sig[name] = "i32" if -2 ** 31 <= a < 2 ** 31 else "i64"
        else:
            raise TypeError(f"compile_ahead: no signature for {name}={a!r}")
    sig.update({k: "constexpr" for k in constants})
    missing = set(names) - set(sig)
    if missing:
        raise RuntimeError(f"compile_ahead: no signature for kernel arguments {sorted(missing)}")
    return {k: sig[k] for k in names}, {(names.index(k),): v for k, v in constants.items()}


def compile_ahead(spec: KernelSpec, dtype: torch.dtype = torch.float16, *, arch: int = 90, block: int = 1024,
                  num_warps: int = 4, training: bool = True, sc_dtype: Optional[torch.dtype] = None,
                  has_v0: bool = False, need_vt: bool = False, count: bool = False, need_gx: bool = True,
                  need_gsc: bool = True, need_gp: bool = True, large: bool = False) -> Dict[str, Any]:
    """Compile the kernels the launchers would launch for this specialisation and these flags for
    an NVIDIA GPU of compute capability ``arch`` (90 = H100) without needing one: Triton's real
    compiler down to a cubin. The arguments are built by the launchers' own preparation code on
    the meta device, so the signature and constants are exactly those of a real launch.

    ``training`` saves H and compiles the backward (``need_gx``, ``need_gsc``, ``need_gp``);
    ``sc_dtype`` is the shortcut's dtype (default: ``dtype``); ``large`` makes N a 64-bit
    argument, as it is from 2**31 elements per step. Returns ``{"forward": CompiledKernel,
    "backward": CompiledKernel or None, "constants": {"forward": ..., "backward": ...}}``.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if interpreting():
        raise RuntimeError("compile_ahead needs Triton's compiler: unset TRITON_INTERPRET in this process")
    if dtype not in _PTR:
        raise ValueError(f"compile_ahead: dtype {dtype} is not one of {', '.join(map(str, _PTR))}")
    cd = compute_dtype(dtype)
    meta = torch.device("meta")
    shape = (3, 2 ** 31 if large else 4096)
    x = torch.empty(shape, dtype=dtype, device=meta)
    sc = torch.empty(shape, dtype=sc_dtype or dtype, device=meta) if spec.g is not None else None
    v0 = torch.empty(shape[1:], dtype=cd, device=meta) if has_v0 else None
    params = torch.empty(max(1, spec.charge.num_params), dtype=cd, device=meta)
    target = GPUTarget("cuda", arch, 32)
    options = {"enable_fp_fusion": False, "num_warps": num_warps}

    def build(kernel, args, constants):
        sig, constexprs = _signature(kernel, args, {**constants, "BLOCK": block})
        return triton.compile(ASTSource(kernel, sig, constexprs), target=target, options=options)

    (out, h, _, _), fargs, fconst = _prepare_forward(x, sc, params, v0, spec, 1.0, 0.0, save_h=training,
                                                     need_vt=need_vt, count=count)
    fwd = build(_multistep_fwd, fargs, fconst)
    bwd, bconst = None, None
    if training:
        _, bargs, bconst = _prepare_backward(
            torch.empty_like(out), x, h, sc, params, v0, spec, 1.0, 0.0, 1.0, need_gx=need_gx, need_gsc=need_gsc,
            need_gp=need_gp, x_dtype=dtype, sc_dtype=sc.dtype if sc is not None else None, min_block=block)
        bwd = build(_multistep_bwd, bargs, bconst)
    return {"forward": fwd, "backward": bwd, "constants": {"forward": fconst, "backward": bconst}}
