"""Conformance checks for neurons, surrogates and element-wise functions, core or plugin.

Each ``check_*`` function runs the fused kernels of a component (the fused CPU kernel and the
Triton kernel) against the PyTorch reference (and, for surrogates, the derivative against a finite
difference of the primitive) and raises ``AssertionError`` with the failing case when they
disagree. Plugin authors call them from their own tests in one line; on a machine without a GPU
set ``TRITON_INTERPRET=1`` before importing sewforge so the Triton kernels run in Triton's
interpreter (without it, only the fused CPU path is checked on CPU tensors).
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .elementwise import ElementwiseFunction, create_elementwise
from ._triton import HAS_TRITON, interpreting
from .kernels import multistep_neuron
from .kernels.layout import fill_outputs_with
from .neurons import BaseNeuron, create_neuron
from .surrogates import Surrogate, create_surrogate

__all__ = ["TOLERANCES", "compare_to_reference", "check_neuron", "check_surrogate", "check_elementwise",
           "fused_backends"]


def fused_backends(device: Any = "cpu") -> Tuple[str, ...]:
    """The fused implementations that can run on ``device`` in this process."""
    if torch.device(device).type == "cuda":
        return ("triton",) if HAS_TRITON else ()
    return ("cpu",) + (("triton",) if HAS_TRITON and interpreting() else ())


def _compare_module(neuron: Any, x: torch.Tensor, *, shortcut: Optional[torch.Tensor], g: Any,
                    grad_out: Optional[torch.Tensor], case: str, backend: str) -> None:
    """A step-function neuron of several states or per-channel parameters: the module itself on
    ``backend`` against the module on the reference (the author's step function under autograd)."""
    case = (case or f"{type(neuron).__name__}{tuple(x.shape)} {x.dtype}") + f" [{backend}]"
    saved = neuron.backend, neuron.stateful
    results = []
    try:
        neuron.stateful = False
        for b in ("torch", backend):
            neuron.backend = b
            neuron.zero_grad(set_to_none=True)
            xb = x.detach().clone().requires_grad_(True)
            sc = shortcut.detach().clone().requires_grad_(True) if shortcut is not None else None
            with fill_outputs_with(float("nan")):
                out = neuron(xb, shortcut=sc, g=g)
                go = grad_out if grad_out is not None else torch.ones_like(out)
                out.backward(go.to(out.dtype))
            grads = {n: p.grad.detach().clone() for n, p in neuron.named_parameters() if p.grad is not None}
            results.append((out.detach(), xb.grad, grads, sc.grad if sc is not None else None))
    finally:
        neuron.backend, neuron.stateful = saved
        neuron.zero_grad(set_to_none=True)
    _check_results(case, results[0], results[1], x.dtype, shortcut.dtype if shortcut is not None else None)


def _check_results(case: str, ref: Tuple[Any, ...], got: Tuple[Any, ...], x_dtype: torch.dtype,
                   sc_dtype: Optional[torch.dtype]) -> None:
    """Spikes identical; dL/dX, every parameter gradient (a dict name -> tensor) and dL/dS within the
    dtype's tolerance. Parameter gradients are sums over every element and step: compared relative
    to the magnitude of dL/dX."""
    (o_ref, gx_ref, gp_ref, gs_ref), (o_k, gx_k, gp_k, gs_k) = ref, got
    if o_k.dtype != o_ref.dtype or not torch.equal(o_k, o_ref):
        bad = (o_k != o_ref).sum().item() if o_k.shape == o_ref.shape else "all"
        raise AssertionError(f"{case}: kernel output differs from the reference in {bad} elements "
                             f"(dtypes {o_k.dtype} / {o_ref.dtype})")
    _close("dL/dX", gx_k, gx_ref, x_dtype, case)
    if set(gp_k) != set(gp_ref):
        raise AssertionError(f"{case}: gradients for parameters {sorted(gp_k)}, the reference has {sorted(gp_ref)}")
    scale = max(1.0, gx_ref.double().abs().sum().item())
    rtol, atol = TOLERANCES[x_dtype]
    for name, want in gp_ref.items():
        have = gp_k[name].double()
        err = (have - want.double()).abs()
        if (err > atol * scale + rtol * want.double().abs()).any():
            i = int(torch.argmax(err))
            raise AssertionError(f"{case}: gradient of parameter {name} {have.flatten()[i].item():.8g} differs from "
                                 f"the reference {want.double().flatten()[i].item():.8g} (element {i})")
    if gs_ref is not None:
        _close("dL/dS (shortcut)", gs_k, gs_ref, sc_dtype, case)


#: (rtol, atol) for gradients, per input dtype; spikes must match exactly in every dtype.
TOLERANCES: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float64: (1e-9, 1e-12),  # fp64 state and fp64 kernel scalars
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def _close(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, case: str) -> None:
    rtol, atol = TOLERANCES[dtype]
    if got.shape != want.shape:
        raise AssertionError(f"{case}: {name} has shape {tuple(got.shape)}, reference {tuple(want.shape)}")
    if torch.isnan(got).any() and not torch.isnan(want).any():
        raise AssertionError(f"{case}: {name} has NaN where the reference has none (unwritten elements?)")
    g64, w64 = got.double(), want.double()
    err = (g64 - w64).abs()
    bound = atol + rtol * w64.abs()
    if (err > bound).any():
        i = int(torch.argmax(err - bound))
        raise AssertionError(
            f"{case}: {name} differs from the reference: max abs error {err.max().item():.3g} "
            f"(at flat index {i}: kernel {g64.flatten()[i].item():.6g}, reference {w64.flatten()[i].item():.6g}; "
            f"rtol={rtol}, atol={atol})")


def compare_to_reference(
    neuron: BaseNeuron,
    x: torch.Tensor,
    *,
    shortcut: Optional[torch.Tensor] = None,
    g: Any = None,
    grad_out: Optional[torch.Tensor] = None,
    case: str = "",
    backend: Optional[str] = None,
) -> None:
    """Run ``neuron`` on ``x`` with the Triton kernel and with the reference; spikes must be
    identical and the gradients of x, the learnable parameter and the shortcut close.

    ``backend``: the fused implementation to check (``"cpu"`` or ``"triton"``); by default every
    one that can run on x's device (:func:`fused_backends`)."""
    if backend is None:
        for b in fused_backends(x.device):
            compare_to_reference(neuron, x, shortcut=shortcut, g=g, grad_out=grad_out, case=case, backend=b)
        return
    if getattr(neuron, "_multistate", None) is not None:
        return _compare_module(neuron, x, shortcut=shortcut, g=g, grad_out=grad_out, case=case, backend=backend)
    charge = neuron.charge_equation()
    case = (case or f"{type(neuron).__name__}{tuple(x.shape)} {x.dtype}") + f" [{backend}]"
    results = []
    for backend in ("torch", backend):
        xb = x.detach().clone().requires_grad_(True)
        params = neuron.charge_params().detach().to(x.device).clone()
        learnable = params.numel() > 0 and any(p.requires_grad for p in neuron.parameters())
        params.requires_grad_(learnable)
        sc = shortcut.detach().clone().requires_grad_(True) if shortcut is not None else None
        with fill_outputs_with(float("nan")):
            out, _, _ = multistep_neuron(xb, charge, params, neuron.surrogate, neuron.v_threshold, neuron.v_reset,
                                      neuron.detach_reset, shortcut=sc, g=g, backend=backend)
            go = grad_out if grad_out is not None else torch.ones_like(out)
            out.backward(go.to(out.dtype))
        results.append((out.detach(), xb.grad, params.grad if learnable else None,
                        sc.grad if sc is not None else None))
    named = []
    for out, gx, gp, gs in results:
        grads = {_param_name(charge, i): gp[i] for i in charge.learnable} if gp is not None else {}
        named.append((out, gx, grads, gs))
    _check_results(case, named[0], named[1], x.dtype, shortcut.dtype if shortcut is not None else None)


def _param_name(charge: Any, i: int) -> str:
    names = getattr(charge, "param_names", None)
    return names[i] if names else f"params[{i}]"


def _neuron_factory(neuron: Any, kwargs: Dict[str, Any]) -> Callable[..., BaseNeuron]:
    if isinstance(neuron, str):
        return lambda **kw: create_neuron(neuron, **{**kwargs, **kw})
    if isinstance(neuron, type):
        return lambda **kw: neuron(**{**kwargs, **kw})
    if callable(neuron):
        return lambda **kw: neuron(**{**kwargs, **kw})
    raise TypeError(f"neuron must be a registered name, a class or a factory, got {type(neuron).__name__}")


def check_neuron(
    neuron: Any,
    *,
    device: Any = "cpu",
    dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16, torch.bfloat16),
    surrogates: Iterable[Any] = ("ATan", "Sigmoid"),
    shapes: Sequence[Tuple[int, ...]] = ((1, 1), (5, 3, 7), (3, 2, 13), (4, 11)),
    gs: Sequence[Any] = (None, "ADD", "AND", "IAND"),
    seed: int = 0,
    **neuron_kwargs: Any,
) -> int:
    """Check a neuron's fused kernels against the reference on every combination of fused
    element-wise function ``gs``, dtype, reset (hard to 0, hard to a negative v_reset, soft) and
    detached or attached reset; surrogates and (odd, T-first) shapes take turns across the grid so
    that each one meets every reset and g. Returns the number of cases checked."""
    make = _neuron_factory(neuron, neuron_kwargs)
    gen = torch.Generator().manual_seed(seed)
    surrogates, shapes = list(surrogates), list(shapes)
    if not surrogates or not shapes or not dtypes or not gs:
        raise ValueError("check_neuron: surrogates, shapes, dtypes and gs must each name at least one case")
    n = 0
    # a non-zero v_reset too: with only 0 and soft reset (v_rest = 0 both) a kernel that ignores v_rest passes
    grid = itertools.product(gs, dtypes, (0.0, None, -0.25), (True, False))
    for i, (g, dtype, v_reset, detach) in enumerate(grid):
        sg = surrogates[(i + i // len(surrogates)) % len(surrogates)]
        mod = make(v_reset=v_reset, detach_reset=detach, surrogate=sg)
        shape = _fit_channels(shapes, getattr(mod, "channels", None))[i % len(shapes)]
        x = (torch.randn(shape, generator=gen) * 1.5 + 0.3).to(device=device, dtype=dtype)
        sc = (torch.rand(shape, generator=gen) > 0.5).to(device=device, dtype=dtype) if g is not None else None
        go = torch.randn(shape, generator=gen).to(device=device)
        compare_to_reference(mod, x, shortcut=sc, g=g, grad_out=go,
                             case=f"{type(mod).__name__}(v_reset={v_reset}, detach_reset={detach}, "
                                  f"surrogate={mod.surrogate!r}) g={g} x{tuple(shape)} {dtype}")
        n += 1
    return n


def _fit_channels(shapes: Sequence[Tuple[int, ...]], channels: Optional[int]) -> List[Tuple[int, ...]]:
    """For a neuron with per-channel parameters: each shape made ``[T, B, C, ...]`` with its C."""
    if channels is None:
        return list(shapes)
    out = []
    for shape in shapes:
        shape = tuple(shape) + (1,) * max(0, 3 - len(shape))
        out.append(shape[:2] + (channels,) + shape[3:])
    return out


def check_surrogate(surrogate: Any, *, device: Any = "cpu", points: int = 257, **kwargs: Any) -> None:
    """The derivative equals a central finite difference of the primitive (where there is one),
    and each fused kernel's derivative (C, Triton) equals the PyTorch one (through a one-step IF
    kernel, whose input gradient is exactly ``sigma'(x - V_th)``)."""
    sg: Surrogate = create_surrogate(surrogate, **kwargs)
    x = torch.linspace(-3.0, 3.0, points, dtype=torch.float64)
    d = sg.derivative(x)
    if not torch.isfinite(d).all() or (d < 0).any():
        raise AssertionError(f"{sg!r}: derivative must be finite and >= 0 on [-3, 3]")
    prim = sg.primitive(x)
    if prim is not None:
        h = 1e-6
        fd = (sg.primitive(x + h) - sg.primitive(x - h)) / (2 * h)
        # skip points next to a jump of the derivative (Rectangular's edges)
        smooth = (sg.derivative(x + 2 * h) - sg.derivative(x - 2 * h)).abs() < 1e-3
        err = (fd - d).abs()[smooth]
        if err.numel() and err.max() > 1e-4 * max(1.0, d.abs().max().item()):
            raise AssertionError(f"{sg!r}: derivative differs from the finite difference of the primitive "
                                 f"by {err.max().item():.3g}")
    neuron = create_neuron("IF", surrogate=sg)
    xs = x.float().reshape(1, -1).to(device)
    out = {}
    for backend in ("torch",) + fused_backends(device):
        xb = xs.clone().requires_grad_(True)
        o, _, _ = multistep_neuron(xb, neuron.charge_equation(), neuron.charge_params(), sg, 0.0, 0.0, True,
                                   backend=backend)
        o.sum().backward()
        out[backend] = xb.grad
    for backend, grad in out.items():
        _close("surrogate derivative", grad, out["torch"], torch.float32, f"{sg!r} ({backend} vs PyTorch)")


def check_elementwise(g: Any, *, device: Any = "cpu") -> None:
    """``g`` on spikes: the fused kernel's values and both gradients equal the PyTorch form for
    every combination of binary A and S (A comes from an IF neuron fed 0 or 2)."""
    fn: ElementwiseFunction = create_elementwise(g)
    a_in = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device)  # IF with V_th = 1: A = 0, 0, 1, 1
    s = torch.tensor([[0.0, 1.0, 0.0, 1.0]], device=device)
    neuron = create_neuron("IF", surrogate="Constant")
    compare_to_reference(neuron, a_in, shortcut=s, g=fn, case=f"g={fn.name} truth table")
    expect = fn.torch_fn(torch.tensor([0.0, 0.0, 1.0, 1.0]), s.cpu()[0])
    for backend in fused_backends(device):
        got, _, _ = multistep_neuron(a_in, neuron.charge_equation(), neuron.charge_params(), neuron.surrogate,
                                     backend=backend, shortcut=s, g=fn)
        if not torch.equal(got.cpu()[0], expect):
            raise AssertionError(f"g={fn.name}: {backend} kernel truth table {got.cpu()[0].tolist()} != "
                                 f"{expect.tolist()}")
