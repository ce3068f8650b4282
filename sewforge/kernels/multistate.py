"""Neurons with several state variables, the previous spike and per-channel parameters.

A neuron of this kind is one step function over its states (the first is the membrane potential
``v``, the one that fires and resets), the input ``x``, optionally the neuron's spike of the
previous step ``s`` and the parameters ``p``; it returns the charged value of every state, before
firing::

    def adaptive_lif(v, a, x, s, p):
        return v + (x - (v - p.v_rest)) * p.k, p.rho * a + s

    def fire(v, a, p):                       # the quantity compared with v_threshold
        return v - p.beta * a

One step ``t`` is: ``h = step(u[t-1], x[t], s[t-1], p)`` (``s[-1] = 0``); ``s[t] = H(fire(h, p) -
v_threshold)``; the potential is reset (hard or soft, detached or not), every other state carries
on unchanged: ``u[t] = (reset(h_v, s[t]), h_a, ...)``. So a spike raises a state through ``s`` one
step later.

:func:`multistate_from_step` traces the function into expression trees (the machinery of
:mod:`sewforge.kernels.derive`: same allowed operations, same errors naming the function and line)
and differentiates them exactly with SymPy: the Jacobian of ``step`` with respect to the states,
``x``, ``s`` and each learnable parameter, and the gradient of ``fire``. From these the fused CPU
kernel (C, compiled per specialisation) runs the forward, keeping only the charged value of each
state per step, and the backward through time over the vector of state adjoints. The reference,
:func:`multistate_reference`, calls the author's own step function in a loop and lets autograd
differentiate it: it shares nothing with the derived code, so comparing the two is a real test.

Per-channel parameters hold one value per channel (dimension 2 of ``[T, B, C, ...]``); the kernel
reads the parameter of each element's channel in any dense layout (channels_last too), and the
gradient of a per-channel parameter is summed per channel.

The same algorithm runs in Triton (:mod:`sewforge.kernels.multistate_triton`) on the Triton backend.
Both run as the ``torch.library`` custom ops ``sewforge::multistate_forward`` / ``multistate_backward``
(one node per neuron for ``torch.compile``, no graph break). The forward keeps the charged states
(``num_states`` values per element and step, in the compute dtype), and the input only when a
derivative reads it.
"""
from __future__ import annotations

import ctypes
import hashlib
import inspect
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import derive as _d
from .derive import StepFunctionError
from .layout import as_time_dense, new_output
from .ops import first_order
from .reference import compute_dtype

__all__ = ["MultiStateEquation", "multistate_from_step", "multistate_reference", "multistate_neuron",
           "StepFunctionError"]


# ---- tracing ------------------------------------------------------------------------------------
def _call(fn: Callable, args: Sequence[Any], params: Sequence[str]) -> Any:
    _d._Tracing.fn = fn
    try:
        try:
            return fn(*args, _d._Params(params))
        except StepFunctionError:
            raise
        except Exception as exc:  # an operation the stand-ins do not support (math.exp, numpy, ...)
            lineno = None
            for code, line in reversed(_d._walk_tb(exc.__traceback__)):
                if code is fn.__code__:
                    lineno = line
                    break
            where = _d._line(fn, lineno) if lineno else _d._describe(fn)
            raise StepFunctionError(f"{where}: unsupported operation ({type(exc).__name__}: {exc}); allowed: "
                                    f"{_d.ALLOWED}") from None
    finally:
        _d._Tracing.fn = None


def _as_node(value: Any, fn: Callable, what: str) -> "_d._Node":
    if isinstance(value, _d._Sym):
        return value.node
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return _d._Node("const", value=float(value))
    raise StepFunctionError(f"{_d._describe(fn)} returns {type(value).__name__} for {what}; it must be computed "
                            "from the states, x, s and p")


def _arg_names(fn: Callable) -> List[str]:
    try:
        ps = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in ps):
        raise StepFunctionError(f"{_d._describe(fn)}: takes *args, **kwargs or keyword-only arguments; write the "
                                "states, x, (s) and p as plain arguments")
    return [p.name for p in ps]


def _var(name: str) -> "_d._Sym":
    return _d._Sym(_d._Node("var", value=name))


# ---- the equation --------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # identity-hashed: one compiled kernel per equation object
class MultiStateEquation:
    """A neuron of several states / with the previous spike / with per-channel parameters, derived
    from its step function. ``c`` holds the C expressions of the kernels (see :func:`multistate_from_step`)."""

    name: str
    states: Tuple[str, ...]
    param_names: Tuple[str, ...]
    learnable_names: Tuple[str, ...]
    per_channel: Tuple[str, ...]
    uses_s: bool
    step: Callable
    fire: Optional[Callable]
    initial: Tuple[float, ...]
    c: Dict[str, Any] = field(default_factory=dict)
    #: whether a derivative reads the input (the forward then keeps it for the backward)
    needs_input_in_backward: bool = True

    @property
    def num_states(self) -> int:
        return len(self.states)

    @property
    def tr(self) -> Dict[str, Any]:
        """The kernels' expressions in Triton."""
        return self.c["triton"]

    def jacobian(self, u: Sequence[torch.Tensor], x: torch.Tensor, s: torch.Tensor, p: torch.Tensor,
                 v_rest: float) -> Dict[str, Any]:
        """The derived partial derivatives of ``step`` at one point, evaluated in PyTorch:
        ``d_u[m][i]`` (new state m by old state i), ``d_x[m]``, ``d_s[m]``, ``d_p[m][k]`` (by the k-th
        learnable parameter); ``p`` holds every parameter in declaration order."""
        ns: Dict[str, Any] = {"torch": torch}
        exec(compile(self.c["torch_jacobian"], f"<sewforge jacobian {self.name}>", "exec"), ns)
        return ns["jacobian"](list(u), x, s, p, v_rest)

    def __repr__(self) -> str:
        return f"MultiStateEquation({self.name!r}, states={self.states})"


def multistate_from_step(step: Callable, states: Sequence[str] = ("v",), params: Sequence[str] = (), *,
                         learnable: Optional[Sequence[str]] = None, per_channel: Sequence[str] = (),
                         fire: Optional[Callable] = None, initial: Optional[Dict[str, float]] = None,
                         name: Optional[str] = None) -> MultiStateEquation:
    """Trace ``step(*states, x, [s,] p)`` (and ``fire(*states, p)``) and derive the kernels' forms.

    Raises :class:`StepFunctionError` naming the function and line for anything the kernels cannot
    run: arguments that do not match ``states``, a wrong number of returned values, undeclared
    parameters, unsupported operations."""
    states = tuple(states)
    params = tuple(params)
    fn_name = name or getattr(step, "__name__", "step")
    if not callable(step):
        raise StepFunctionError(f"{fn_name}: expected a step function, got {type(step).__name__}")
    if not states or any(not isinstance(s, str) or not s.isidentifier() for s in states) or \
            len(set(states)) != len(states):
        raise StepFunctionError(f"{_d._describe(step)}: states must be distinct identifiers, the potential first "
                                f"(e.g. ('v', 'a')), got {states!r}")
    taken = [n for n in states if n in ("x", "s", "p", "v_rest")]
    if taken:
        raise StepFunctionError(f"{_d._describe(step)}: state name{'s' if len(taken) > 1 else ''} {taken} taken: x is "
                                "the input, s the previous spike, p the parameters")
    for pname in params:
        if not isinstance(pname, str) or not pname.isidentifier() or pname in _d._RESERVED or pname.startswith("_"):
            raise StepFunctionError(f"{_d._describe(step)}: parameter name {pname!r} is not allowed (an identifier "
                                    f"not starting with _ and not one of {', '.join(sorted(_d._RESERVED))})")
        if pname in states or pname == "s":
            raise StepFunctionError(f"{_d._describe(step)}: parameter name {pname!r} is also a state or s")
    learn = params if learnable is None else tuple(learnable)
    bad = [n for n in tuple(learn) + tuple(per_channel) if n not in params]
    if bad:
        raise StepFunctionError(f"{_d._describe(step)}: {bad} not among the parameters {params}")
    K = len(states)
    args = _arg_names(step)
    with_s, without_s = list(states) + ["x", "s", "p"], list(states) + ["x", "p"]
    if args and args not in (with_s, without_s):
        raise StepFunctionError(
            f"{_d._describe(step)} takes ({', '.join(args)}) but states = {states}: a step takes the states in that "
            f"order, then x, optionally s (the previous spike), then p: ({', '.join(without_s)}) or "
            f"({', '.join(with_s)})")
    uses_s = args == with_s
    initial = dict(initial or {})
    unknown = [n for n in initial if n not in states[1:]]
    if unknown:
        raise StepFunctionError(f"{_d._describe(step)}: initial values for {unknown}, which are not states after "
                                f"{states[0]!r} (the potential starts at v_reset); states: {states}")
    init = tuple(float(initial.get(n, 0.0)) for n in states)

    # the step
    u = [_var(f"@u{i}") for i in range(K)]
    out = _call(step, u + [_var("@x")] + ([_var("@s")] if uses_s else []), params)
    if K == 1 and not isinstance(out, (tuple, list)):
        out = (out,)
    if not isinstance(out, (tuple, list)) or len(out) != K:
        n = len(out) if isinstance(out, (tuple, list)) else 1
        raise StepFunctionError(f"{_d._describe(step)} returns {n} value{'s' if n != 1 else ''} but states = "
                                f"{states}: return one new value per state, in that order")
    trees = [_as_node(o, step, f"state {states[i]!r}") for i, o in enumerate(out)]
    # fire
    if fire is not None:
        fargs = _arg_names(fire)
        if fargs and fargs != list(states) + ["p"]:
            raise StepFunctionError(f"{_d._describe(fire)} takes ({', '.join(fargs)}); fire takes the states "
                                    f"({', '.join(states)}) and p, and returns the value compared with the "
                                    "threshold")
        fire_tree = _as_node(_call(fire, u, params), fire, "the firing value")
    else:
        fire_tree = _d._Node("var", value="@u0")

    c, needs_x = _derive(trees, fire_tree, K, params, learn)
    return MultiStateEquation(name=fn_name, states=states, param_names=params, learnable_names=tuple(learn),
                              per_channel=tuple(n for n in params if n in per_channel), uses_s=uses_s, step=step,
                              fire=fire, initial=init, c=c, needs_input_in_backward=needs_x)


_DERIVE_VERSION = 1


def _derive(trees: List["_d._Node"], fire_tree: "_d._Node", K: int, params: Tuple[str, ...],
            learn: Tuple[str, ...]) -> Tuple[Dict[str, Any], bool]:
    """The kernels' expressions and whether a derivative reads x; from the disk cache (no SymPy
    import) when this equation was derived before."""
    import json

    names = {"@x": "xv", "@s": "sp", "v_rest": "v_rest", **{f"@u{i}": f"u{i}" for i in range(K)},
             **{n: f"p{i}" for i, n in enumerate(params)}}
    canonical = [_DERIVE_VERSION, K, params, learn, [_d._emit(t, "c", names)[0] for t in trees],
                 _d._emit(fire_tree, "c", names)[0]]
    key = hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:24]
    path = _d._cache_dir() / f"multistate_{key}.json"
    try:
        cached = json.loads(path.read_text())
        return cached["c"], cached["needs_x"]
    except (OSError, ValueError, KeyError):
        pass
    c, needs_x = _derive_sympy(trees, fire_tree, K, params, learn)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"c": c, "needs_x": needs_x}, f)
        os.replace(tmp, path)  # atomic: concurrent writers of the same equation are harmless
    except OSError:
        pass  # a read-only cache only costs the derivation next time
    return c, needs_x


def _derive_sympy(trees: List["_d._Node"], fire_tree: "_d._Node", K: int, params: Tuple[str, ...],
                  learn: Tuple[str, ...]) -> Tuple[Dict[str, Any], bool]:
    import sympy

    idx = {n: i for i, n in enumerate(params)}
    # the forward, in the author's order of operations
    names = {"@x": "xv", "@s": "sp", "v_rest": "v_rest", **{f"@u{i}": f"u{i}" for i in range(K)},
             **{n: f"p{i}" for n, i in idx.items()}}
    new = [_d._emit(t, "c", names)[0] for t in trees]
    fire_h = _d._emit(fire_tree, "c", {**names, **{f"@u{i}": f"h{i}" for i in range(K)}})[0]
    fire_hp = _d._emit(fire_tree, "c", {**names, **{f"@u{i}": f"hp{i}" for i in range(K)}})[0]
    # the derivatives
    syms = {"@x": sympy.Symbol("xv", real=True), "@s": sympy.Symbol("sp", real=True),
            "v_rest": sympy.Symbol("v_rest", real=True), **{f"@u{i}": sympy.Symbol(f"u{i}", real=True)
                                                             for i in range(K)},
            **{n: sympy.Symbol(f"p{i}", real=True) for n, i in idx.items()}}
    cnames = {s: str(s) for s in syms.values()}
    F = [_d._to_sympy(t, syms) for t in trees]
    phi = _d._to_sympy(fire_tree, syms)
    us = [syms[f"@u{i}"] for i in range(K)]
    x, s = syms["@x"], syms["@s"]
    pl = [syms[n] for n in learn]

    def pr(e) -> str:
        return _d._sym_print(e, "c", cnames)

    def d(e, by):
        return sympy.diff(e, by)

    d_u = [[pr(d(F[m], us[i])) for i in range(K)] for m in range(K)]  # d new_m / d u_i
    d_x = [pr(d(F[m], x)) for m in range(K)]
    d_s = [pr(d(F[m], s)) for m in range(K)]
    d_p = [[pr(d(F[m], q)) for q in pl] for m in range(K)]
    # fire reads the charged values: printed in h0.. (the u symbols stand for them)
    hnames = {**cnames, **{us[i]: f"h{i}" for i in range(K)}}
    dfire_h = [_d._sym_print(d(phi, us[i]), "c", hnames) for i in range(K)]
    dfire_p = [_d._sym_print(d(phi, q), "c", hnames) for q in pl]
    needs_x = any(x in d(F[m], by).free_symbols for m in range(K) for by in us + [x, s] + pl)
    # the same derivatives in PyTorch, to check them against finite differences of the step function
    tn = {sym: f"p[{str(sym)[1:]}]" if str(sym).startswith("p") else str(sym) for sym in syms.values()}
    jac = {"d_u": [[d(F[m], us[i]) for i in range(K)] for m in range(K)], "d_x": [d(F[m], x) for m in range(K)],
           "d_s": [d(F[m], s) for m in range(K)], "d_p": [[d(F[m], q) for q in pl] for m in range(K)]}

    def tp(e) -> str:
        return _d._sym_print(e, "torch", tn) if e.free_symbols else f"torch.tensor({float(e)!r}, dtype=torch.float64)"

    torch_src = "def jacobian(u, xv, sp, p, v_rest):\n    " + "; ".join(f"u{i} = u[{i}]" for i in range(K)) + \
        "\n    return {" + ", ".join(
            f"{k!r}: [" + ", ".join(("[" + ", ".join(tp(e) for e in row) + "]") if isinstance(row, list) else tp(row)
                                    for row in rows) + "]" for k, rows in jac.items()) + "}\n"
    # the same in Triton (sewforge.kernels.multistate_triton)
    trn = {**cnames}
    trh = {**cnames, **{us[i]: f"h{i}" for i in range(K)}}

    def tr(e, nm=trn) -> str:
        return _d._sym_print(e, "triton", nm)

    triton = {"new": [_d._emit(t, "triton", names)[0] for t in trees],
              "fire_h": _d._emit(fire_tree, "triton", {**names, **{f"@u{i}": f"h{i}" for i in range(K)}})[0],
              "fire_hp": _d._emit(fire_tree, "triton", {**names, **{f"@u{i}": f"hp{i}" for i in range(K)}})[0],
              "d_u": [[tr(d(F[m], us[i])) for i in range(K)] for m in range(K)],
              "d_x": [tr(d(F[m], x)) for m in range(K)], "d_s": [tr(d(F[m], s)) for m in range(K)],
              "d_p": [[tr(d(F[m], q)) for q in pl] for m in range(K)],
              "dfire_h": [tr(d(phi, us[i]), trh) for i in range(K)], "dfire_p": [tr(d(phi, q), trh) for q in pl]}
    return {"new": new, "fire_h": fire_h, "fire_hp": fire_hp, "d_u": d_u, "d_x": d_x, "d_s": d_s, "d_p": d_p,
            "dfire_h": dfire_h, "dfire_p": dfire_p, "torch_jacobian": torch_src, "triton": triton}, needs_x


# ---- the reference: the author's own function, differentiated by autograd ------------------------
class _Values:
    """``p`` in the reference: each parameter's tensor (per-channel ones shaped to broadcast over
    ``[B, C, ...]``) and ``v_rest``."""

    def __init__(self, values: Dict[str, torch.Tensor], v_rest: float):
        self.__dict__.update(values)
        self.v_rest = v_rest


def _shaped(values: Dict[str, torch.Tensor], per_channel: Sequence[str], step_dims: int) -> Dict[str, torch.Tensor]:
    out = {}
    for n, t in values.items():
        if n in per_channel:
            t = t.reshape((-1,) + (1,) * max(step_dims - 2, 0))
        out[n] = t
    return out


def multistate_reference(x: torch.Tensor, eq: MultiStateEquation, values: Dict[str, torch.Tensor], surrogate: Any,
                         v_threshold: float, v_reset: Optional[float], detach_reset: bool,
                         state0: Optional[Tuple[torch.Tensor, ...]] = None, shortcut: Optional[torch.Tensor] = None,
                         g: Any = None) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """``(out, state)``: spikes (or ``g(spikes, shortcut)``) shaped like ``x`` and the state after
    the last step, ``(u_0, ..., u_{K-1}, last spike)`` in the compute dtype. ``values``: each
    parameter's tensor in the compute dtype (0-d, or ``[C]`` for a per-channel one)."""
    from ..surrogates import spike

    cd = compute_dtype(x.dtype)
    v_rest = 0.0 if v_reset is None else float(v_reset)
    p = _Values(_shaped({n: t.to(cd) for n, t in values.items()}, eq.per_channel, x.dim() - 1), v_rest)
    shape = x.shape[1:]
    if state0 is None:
        us = [torch.full(shape, v_rest if i == 0 else eq.initial[i], dtype=cd, device=x.device)
              for i in range(eq.num_states)]
        s_prev = torch.zeros(shape, dtype=cd, device=x.device)
    else:
        us, s_prev = [t.to(cd) for t in state0[:-1]], state0[-1].to(cd)
    out_dtype = x.dtype if g is None else torch.promote_types(x.dtype, shortcut.dtype)
    if x.shape[0] == 0:
        empty = x.to(out_dtype) if g is None else x.to(out_dtype) + shortcut.to(out_dtype)
        return empty, tuple(us) + (s_prev,)
    outs = []
    for t in range(x.shape[0]):
        args = us + [x[t].to(cd)] + ([s_prev] if eq.uses_s else [])
        new = eq.step(*args, p)
        if not isinstance(new, (tuple, list)):
            new = (new,)
        new = [n if isinstance(n, torch.Tensor) else torch.full(shape, float(n), dtype=cd, device=x.device)
               for n in new]
        new = [n.to(cd).expand(shape) for n in new]
        f = eq.fire(*new, p) if eq.fire is not None else new[0]
        s = spike(f - v_threshold, surrogate)
        s_r = s.detach() if detach_reset else s
        h0 = new[0]
        v = h0 - s_r * v_threshold if v_reset is None else h0 * (1.0 - s_r) + v_reset * s_r
        us = [v] + list(new[1:])
        s_prev = s
        o = s if g is None else g.torch_fn(s, shortcut[t].to(cd))
        outs.append(o.to(out_dtype))
    return torch.stack(outs), tuple(us) + (s_prev,)


# ---- the fused CPU kernel (C) -----------------------------------------------------------------------
@dataclass(frozen=True)
class _Spec:
    eq: MultiStateEquation
    surrogate: type
    g: Any
    hard_reset: bool
    detach_reset: bool


_FWD = r"""
void fwd(const io_t* restrict X, const io_t* restrict SC, io_t* restrict OUT, real* restrict H,
         const real* restrict P, real* const* S0, const real* restrict SP0, real* const* SOUT,
         real* restrict SPOUT, int64_t start, int64_t stop, int64_t N, int64_t T, int64_t C, int64_t inner,
         double v_th_, double v_rest_, double* restrict count_out) {{
  const real v_th = (real)v_th_, v_rest = (real)v_rest_;
  {params_top}
  real ub[{K}][BLOCK]; real spb[BLOCK]; {ch_decl}
  int64_t count = 0;
  for (int64_t b0 = start; b0 < stop; b0 += BLOCK) {{
    const int64_t n = (stop - b0) < BLOCK ? (stop - b0) : BLOCK;
    {ch_fill}
    for (int64_t j = 0; j < n; j++) {{
      for (int k = 0; k < {K}; k++) ub[k][j] = S0[k][b0 + j];
      spb[j] = SP0 ? SP0[b0 + j] : (real)0;
    }}
    for (int64_t t = 0; t < T; t++) {{
      const int64_t o = t * N + b0;
      for (int64_t j = 0; j < n; j++) {{
        {params}
        {load_u}
        const real sp = spb[j]; (void)sp;
        const real xv = LD(X[o + j]); (void)xv;
        {charge}
        const real f = (real)({fire});
        const real s = f >= v_th ? (real)1 : (real)0;
        if (H) {{ {store_h} }}
        count += (int64_t)(f >= v_th);
        {out_stmt}
        ub[0][j] = {reset};
        {carry}
        spb[j] = s;
      }}
    }}
    if (SOUT) {{ for (int64_t j = 0; j < n; j++) {{ for (int k = 0; k < {K}; k++) SOUT[k][b0 + j] = ub[k][j]; }} }}
    if (SPOUT) {{ for (int64_t j = 0; j < n; j++) SPOUT[b0 + j] = spb[j]; }}
  }}
  if (count_out) *count_out = (double)count;
}}
"""

_BWD = r"""
static const real zero_block[BLOCK];  /* the previous spike before the first step, when none is given */

void bwd(const io_t* restrict GO, const io_t* restrict X, const real* restrict H, const io_t* restrict SC,
         const real* restrict P, real* const* S0, const real* restrict SP0, io_t* restrict GX, io_t* restrict GSC,
         int64_t start, int64_t stop, int64_t N, int64_t T, int64_t C, int64_t inner, double v_th_,
         double v_rest_, double alpha_, double* restrict gp_out) {{
  const real v_th = (real)v_th_, v_rest = (real)v_rest_, alpha = (real)alpha_;
  const int64_t TN = T * N;
  {params_top}
  real lam[{K}][BLOCK]; real gsn[BLOCK]; {ch_decl}
  {dp_decl}
  for (int64_t b0 = start; b0 < stop; b0 += BLOCK) {{
    const int64_t n = (stop - b0) < BLOCK ? (stop - b0) : BLOCK;
    {ch_fill}
    for (int64_t j = 0; j < n; j++) {{ for (int k = 0; k < {K}; k++) lam[k][j] = 0; gsn[j] = 0; {dp_zero} }}
    for (int64_t t = T - 1; t >= 0; t--) {{
      const int64_t o = t * N + b0;
      {prev_setup}
      for (int64_t j = 0; j < n; j++) {{
        {params}
        {load_h}
        const real f = (real)({fire});
        const real s = f >= v_th ? (real)1 : (real)0;
        const real sg = (real)({sg});
        const real go = LD(GO[o + j]);
        {g_stmt}
        const real dlds = ga + gsn[j]{reset_s};
        const real q = dlds * sg;
        {gammas}
        {dp_fire}
        {prev}
        const real xv = {load_x}; (void)xv;
        {lam_new}
        {gs_new}
        if (GX) GX[o + j] = ST({gx});
        {dp_step}
      }}
    }}
    {gp_reduce}
  }}
}}
"""


def generate_source(spec: _Spec, dtype: torch.dtype) -> str:
    """The C source of the forward and backward of one multi-state specialisation."""
    from .cpu import _BLOCK, _IO, _IO_TYPES, _PRELUDE, _sub_s, _sub_x

    eq, g = spec.eq, spec.g
    c = eq.c
    K, L = eq.num_states, len(eq.learnable_names)
    double = compute_dtype(dtype) == torch.float64
    fn = (lambda nm: nm) if double else (lambda nm: nm + "f")
    src = [_PRELUDE.format(real="double" if double else "float", exp=fn("exp"), log=fn("log"), sqrt=fn("sqrt"),
                           fabs=fn("fabs"), tanh=fn("tanh"), atan=fn("atan"), pow=fn("pow"), block=_BLOCK),
           _IO_TYPES[_IO[dtype]]]
    nparams = len(eq.param_names)
    if eq.per_channel:  # each element's channel, once per block; parameters read per element
        params_top = "(void)inner;"
        params = " ".join(f"const real p{i} = P[{i} * C + chb[j]]; (void)p{i};" for i in range(nparams))
        ch_decl = "int64_t chb[BLOCK];"
        ch_fill = "for (int64_t j = 0; j < n; j++) chb[j] = ((b0 + j) / inner) % C;"
    else:  # one value per parameter: read once
        params_top = " ".join(f"const real p{i} = P[{i} * C]; (void)p{i};" for i in range(nparams)) + " (void)inner;"
        params, ch_decl, ch_fill = "", "", ""
    layout = dict(params_top=params_top, params=params, ch_decl=ch_decl, ch_fill=ch_fill)
    has_g = g is not None
    reset = "(s > 0 ? v_rest : h0)" if spec.hard_reset else "(h0 - s * v_th)"
    src.append(_FWD.format(
        K=K, **layout,
        load_u=" ".join(f"const real u{i} = ub[{i}][j];" for i in range(K)),
        charge=" ".join(f"const real h{i} = (real)({e});" for i, e in enumerate(c["new"])),
        fire=c["fire_h"],
        store_h=" ".join(f"H[{i} * T * N + o + j] = h{i};" for i in range(K)),
        out_stmt=(f"{{ const real a = s; const real s_ = LD(SC[o + j]); OUT[o + j] = ST({_sub_s(g.c_fn)}); }}"
                  if has_g else "OUT[o + j] = ST(s);"),
        reset=reset,
        carry=" ".join(f"ub[{i}][j] = h{i};" for i in range(1, K))))
    # backward
    if has_g:
        g_stmt = ("const real a = s; const real s_ = SC ? LD(SC[o + j]) : (real)0; (void)s_; "
                  f"const real ga = go * (real)({_sub_s(g.c_dg_da)}); "
                  f"if (GSC) GSC[o + j] = ST(go * (real)({_sub_s(g.c_dg_ds)}));")
    else:
        g_stmt = "const real ga = go;"
    if spec.detach_reset:
        reset_s = ""
    else:
        reset_s = " + lam[0][j] * (v_rest - h0)" if spec.hard_reset else " - lam[0][j] * v_th"
    dr_dh = "(1 - s)" if spec.hard_reset else "(real)1"
    gammas = [f"const real g0 = lam[0][j] * {dr_dh} + q * (real)({c['dfire_h'][0]});"]
    gammas += [f"const real g{i} = lam[{i}][j] + q * (real)({c['dfire_h'][i]});" for i in range(1, K)]
    reset_prev = "(s_p > 0 ? v_rest : hp0)" if spec.hard_reset else "(hp0 - s_p * v_th)"
    # the states before step t: H of step t - 1 (reset), or the initial states at t = 0. The choice of
    # source is made once per step, so that the loop over the block has no branch and vectorises
    prev_setup = ("const int first = t == 0; "
                  + " ".join(f"const real* restrict hpp{i} = first ? S0[{i}] + b0 : H + {i} * TN + (o - N);"
                             for i in range(K))
                  + " const real* restrict spp = (first && SP0) ? SP0 + b0 : zero_block;")
    prev = (" ".join(f"const real hp{i} = hpp{i}[j];" for i in range(K))
            + f" const real s_f = (real)({c['fire_hp']}) >= v_th ? (real)1 : (real)0;"
            + " const real s_p = first ? spp[j] : s_f;"
            + f" const real u0 = first ? hp0 : {reset_prev}; "
            + " ".join(f"const real u{i} = hp{i};" for i in range(1, K)) + " const real sp = s_p; (void)sp;")

    def dot(col: List[str]) -> str:
        terms = [f"g{m} * (real)({e})" for m, e in enumerate(col) if e != "0"]
        return " + ".join(terms) if terms else "(real)0"

    lam_new = " ".join(f"const real l{i} = {dot([c['d_u'][m][i] for m in range(K)])};" for i in range(K)) + " " + \
        " ".join(f"lam[{i}][j] = l{i};" for i in range(K))
    gs_new = f"gsn[j] = {dot(c['d_s'])};" if eq.uses_s else ""
    dp_fire = " ".join(f"dp{k}[j] += q * (real)({e});" for k, e in enumerate(c["dfire_p"]) if e != "0")
    dp_step = " ".join(f"dp{k}[j] += {dot([c['d_p'][m][k] for m in range(K)])};" for k in range(L))
    ch = "chb[j]" if eq.per_channel else "0"
    gp_reduce = ("if (gp_out) { for (int64_t j = 0; j < n; j++) { "
                 + " ".join(f"gp_out[{k} * C + {ch}] += (double)dp{k}[j];" for k in range(L)) + " } }") if L else ""
    src.append(_BWD.format(
        K=K, **layout,
        dp_decl=" ".join(f"real dp{k}[BLOCK];" for k in range(L)),
        dp_zero=" ".join(f"dp{k}[j] = 0;" for k in range(L)),
        load_h=" ".join(f"const real h{i} = H[{i} * TN + o + j];" for i in range(K)),
        fire=c["fire_h"], sg=_sub_x(spec.surrogate.c_derivative, "(f - v_th)"), g_stmt=g_stmt, reset_s=reset_s,
        gammas=" ".join(gammas), dp_fire=dp_fire if L else "", prev=prev, prev_setup=prev_setup,
        load_x="LD(X[o + j])" if eq.needs_input_in_backward else "(real)0",
        lam_new=lam_new, gs_new=gs_new, gx=dot(c["d_x"]), dp_step=dp_step, gp_reduce=gp_reduce))
    return "\n".join(src)


_FUNCTIONS = {"fwd": [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 6 + [ctypes.c_double] * 2 + [ctypes.c_void_p],
              "bwd": [ctypes.c_void_p] * 9 + [ctypes.c_int64] * 6 + [ctypes.c_double] * 3 + [ctypes.c_void_p]}


def _library(spec: _Spec, dtype: torch.dtype) -> Optional[ctypes.CDLL]:
    """The compiled kernel of one specialisation and dtype, or None (no compiler, no C form of the
    surrogate or g, a compiler without _Float16): the reference runs instead."""
    from . import cpu

    if os.environ.get("SEWFORGE_CPU_KERNEL", "auto").strip().lower() == "torch":
        return None
    if spec.surrogate.c_derivative is None or (spec.g is not None and not spec.g.has_c):
        return None
    return cpu.cached_library(("multi-state", spec, dtype), lambda: generate_source(spec, dtype), "sfms", dtype,
                              f"the CPU kernel of {spec.eq.name}", "it runs the PyTorch reference",
                              compiler_at_fault=False, functions=_FUNCTIONS)


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _ptrs(ts: Sequence[torch.Tensor]) -> Any:
    return (ctypes.c_void_p * len(ts))(*[t.data_ptr() for t in ts])


def _channels(x: torch.Tensor, eq: MultiStateEquation) -> Tuple[int, int]:
    """``(C, inner)``: the number of parameter columns and the memory stride of the channel within a
    step (each element's channel is ``(index // inner) % C``)."""
    if not eq.per_channel or x.dim() < 3:
        return 1, 1
    return x.shape[2], max(x[0].stride(1), 1) if x.shape[0] > 0 else 1


# ---- the launchers (C and Triton), one contract -----------------------------------------------------
# ``x`` [T, ...] time-dense; ``shortcut``, ``go`` of x's layout; ``P`` [num_params, C] in the compute
# dtype; ``S`` [K + 1, ...] the initial states and the previous spike, each row laid out like x[0]
# (strides ``(n, *x[0].stride())``). ``H`` is flat: K * T * n charged values in x's memory order.
def _launch_forward(impl: str, x, shortcut, P, S, spec: "_Spec", v_threshold: float, v_reset: Optional[float],
                    save_h: bool, need_state: bool, count: bool):
    """``(out, H, count, state)``; ``state`` is [K + 1, ...] like ``S`` (or empty)."""
    eq = spec.eq
    K = eq.num_states
    cd = compute_dtype(x.dtype)
    T = x.shape[0]
    n = x[0].numel() if T > 0 else 0
    dev = x.device
    v_rest = 0.0 if v_reset is None else float(v_reset)
    out = new_output(x, x.dtype if spec.g is None else torch.promote_types(x.dtype, shortcut.dtype))
    H = torch.empty(K * T * n if save_h else 0, dtype=cd, device=dev)
    C, inner = _channels(x, eq)
    state = torch.empty_strided(S.shape, S.stride(), dtype=cd, device=dev) if need_state else S.new_empty((0,))
    counted = torch.zeros(1 if count else 0, dtype=torch.float64, device=dev)
    if T == 0 or n == 0:
        if need_state:
            state.copy_(S)
        return out, H, counted, state
    if impl == "cpu":
        from .cpu import _run_chunks

        lib = _library(spec, x.dtype)
        s0p = _ptrs([S[i] for i in range(K)])
        soutp = _ptrs([state[i] for i in range(K)]) if need_state else None
        parts = _run_chunks(lib.fwd, n, torch.get_num_threads(), lambda a, b, slot: (
            _ptr(x), _ptr(shortcut), _ptr(out), _ptr(H) if save_h else None, _ptr(P), s0p, _ptr(S[K]), soutp,
            _ptr(state[K]) if need_state else None, a, b, n, T, C, inner, float(v_threshold), v_rest, slot))
        if count:
            counted.fill_(sum(part[0] for part in parts))
    else:
        from . import multistate_triton as mt

        flat = torch.as_strided(S, (K + 1, n), (n, 1))
        sflat = torch.as_strided(state, (K + 1, n), (n, 1)) if need_state else flat
        args, constants = mt.forward_args(spec, x, shortcut, out, H if save_h else None, P, flat, flat[K], sflat,
                                          sflat[K], counted if count else None, n, T, C, inner, v_threshold,
                                          v_rest, save_h=save_h, store=need_state, count=count)
        mt.forward_launch(spec, n, args, constants)
    return out, H, counted, state


def _launch_backward(impl: str, go, x, H, sc, P, S, spec: "_Spec", v_threshold: float, v_reset: Optional[float],
                     alpha: float, need_gx: bool, need_gsc: bool, need_gp: bool, x_dtype: torch.dtype,
                     sc_dtype: Optional[torch.dtype]):
    """``(grad_x, grad_shortcut, grad_P)``; gradients not asked for are None."""
    eq = spec.eq
    K, L = eq.num_states, len(eq.learnable_names)
    T = go.shape[0]
    n = go[0].numel() if T > 0 else 0
    v_rest = 0.0 if v_reset is None else float(v_reset)
    need_gsc = need_gsc and spec.g is not None
    gx = new_output(go, x_dtype) if need_gx else None
    gsc = new_output(go, sc_dtype) if need_gsc else None
    C, inner = _channels(go, eq)
    table = torch.zeros(L, C, dtype=torch.float64, device=go.device)
    if T == 0 or n == 0:
        for t in (gx, gsc):
            if t is not None:
                t.zero_()
    elif impl == "cpu":
        from .cpu import _run_chunks

        lib = _library(spec, x_dtype)
        s0p = _ptrs([S[i] for i in range(K)])
        parts = _run_chunks(lib.bwd, n, torch.get_num_threads(), lambda a, b, slot: (
            _ptr(go), _ptr(x), _ptr(H), _ptr(sc), _ptr(P), s0p, _ptr(S[K]), _ptr(gx), _ptr(gsc), a, b, n, T, C,
            inner, float(v_threshold), v_rest, float(alpha), slot if (need_gp and L) else None),
            width=max(1, L * C))
        if need_gp and L:
            table = torch.tensor([sum(part[i] for part in parts) for i in range(L * C)],
                                 dtype=torch.float64).reshape(L, C)
    else:
        from . import multistate_triton as mt

        gpe = torch.empty(L * n, dtype=H.dtype, device=H.device) if need_gp and L else None
        if gx is not None or gsc is not None or gpe is not None:
            flat = torch.as_strided(S, (K + 1, n), (n, 1))
            args, constants = mt.backward_args(spec, go, x, H, sc, P, flat, flat[K], gx, gsc, gpe, n, T, C, inner,
                                               v_threshold, v_rest, alpha, H.dtype)
            mt.backward_launch(spec, n, args, constants)
        if gpe is not None:
            ch = (torch.arange(n, device=H.device) // inner) % C
            table.index_add_(1, ch, gpe.view(L, n).double())
    gp = None
    if need_gp:
        gp = torch.zeros_like(P)
        idx = {nm: i for i, nm in enumerate(eq.param_names)}
        for k, nm in enumerate(eq.learnable_names):
            gp[idx[nm]] = table[k].to(gp.dtype)
    return gx, gsc, gp


def _with_layout(t: torch.Tensor, shape: torch.Size, stride: Tuple[int, ...]) -> torch.Tensor:
    """``t`` (of ``shape``) itself when it has the forward's strides, else a copy that has them."""
    if all(a == b for a, b, sz in zip(t.stride(), stride, shape) if sz != 1):
        return t
    out = torch.empty_strided(shape, stride, dtype=t.dtype, device=t.device)
    out.copy_(t)
    return out


# ---- the custom ops: one node per neuron for torch.compile --------------------------------------------
_SPECS: Dict[_Spec, str] = {}
_BY_KEY: Dict[str, _Spec] = {}


@torch._dynamo.assume_constant_result
def _resolve(eq: MultiStateEquation, surrogate: type, g: Any, hard_reset: bool, detach_reset: bool,
             dtype: torch.dtype, impl: str) -> Tuple[str, str]:
    """``(spec key, implementation)``: ``"cpu"`` (the compiled C kernel), ``"triton"`` or ``"torch"``
    (the reference: that backend, or no C compiler). A constant for ``torch.compile`` (it may compile
    the C kernel)."""
    spec = _Spec(eq, surrogate, g, bool(hard_reset), bool(detach_reset))
    key = _spec_key(spec)
    if impl == "cpu":
        return key, "cpu" if _library(spec, dtype) is not None else "torch"
    if impl == "triton" and surrogate.triton_derivative is not None and (g is None or g.triton_fn is not None):
        return key, "triton"
    return key, "torch"


def _spec_key(spec: _Spec) -> str:
    key = _SPECS.get(spec)
    if key is None:
        g = f" g={spec.g.name}" if spec.g is not None else ""
        key = (f"{len(_SPECS)}:{spec.eq.name} {spec.surrogate.__name__} "
               f"{'hard' if spec.hard_reset else 'soft'} detach={spec.detach_reset}{g}")
        _SPECS[spec] = key
        _BY_KEY[key] = spec
    return key


_E = (0,)


@torch.library.custom_op("sewforge::multistate_forward", mutates_args=())
def multistate_forward(x: torch.Tensor, shortcut: Optional[torch.Tensor], P: torch.Tensor, S: torch.Tensor, spec: str,
                       impl: str, v_threshold: float, v_reset: Optional[float], alpha: float, save_h: bool,
                       need_state: bool, count: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(out, H, spike_count, state)`` of a multi-state neuron; ``alpha`` is recorded for the backward."""
    return _launch_forward(impl, x, shortcut, P, S, _BY_KEY[spec], v_threshold, v_reset, save_h, need_state, count)


@multistate_forward.register_fake
def _(x, shortcut, P, S, spec, impl, v_threshold, v_reset, alpha, save_h, need_state, count):
    s = _BY_KEY[spec]
    cd = compute_dtype(x.dtype)
    out = torch.empty_like(x, dtype=x.dtype if s.g is None else torch.promote_types(x.dtype, shortcut.dtype))
    n = x[0].numel() if x.shape[0] > 0 else 0
    H = x.new_empty((s.eq.num_states * x.shape[0] * n if save_h else 0,), dtype=cd)
    counted = x.new_empty((1 if count else 0,), dtype=torch.float64)
    state = torch.empty_strided(S.shape, S.stride(), dtype=cd, device=x.device) if need_state else S.new_empty(_E)
    return out, H, counted, state


@torch.library.custom_op("sewforge::multistate_backward", mutates_args=())
def multistate_backward(go: torch.Tensor, x: Optional[torch.Tensor], H: torch.Tensor, sc: Optional[torch.Tensor],
                        P: torch.Tensor, S: torch.Tensor, spec: str, impl: str, v_threshold: float,
                        v_reset: Optional[float], alpha: float, need_gx: bool, need_gsc: bool, need_gp: bool,
                        x_dtype: torch.dtype, sc_dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(grad_x, grad_shortcut, grad_P)``; gradients not asked for are empty tensors."""
    gx, gsc, gp = _launch_backward(impl, go, x, H, sc, P, S, _BY_KEY[spec], v_threshold, v_reset, alpha, need_gx,
                                   need_gsc, need_gp, x_dtype, sc_dtype)
    return (gx if gx is not None else go.new_empty(_E, dtype=x_dtype),
            gsc if gsc is not None else go.new_empty(_E, dtype=sc_dtype),
            gp if gp is not None else P.new_empty(_E))


@multistate_backward.register_fake
def _(go, x, H, sc, P, S, spec, impl, v_threshold, v_reset, alpha, need_gx, need_gsc, need_gp, x_dtype, sc_dtype):
    has_g = _BY_KEY[spec].g is not None
    gx = torch.empty_like(go, dtype=x_dtype) if need_gx else go.new_empty(_E, dtype=x_dtype)
    gsc = torch.empty_like(go, dtype=sc_dtype) if need_gsc and has_g else go.new_empty(_E, dtype=sc_dtype)
    gp = torch.empty_like(P) if need_gp else P.new_empty(_E)
    return gx, gsc, gp


def _setup_context(ctx, inputs, output) -> None:
    x, shortcut, P, S, spec, impl, v_threshold, v_reset, alpha, save_h, need_state, count = inputs
    out, H, counted, state = output
    ctx.mark_non_differentiable(H, counted, state)
    ctx.set_materialize_grads(False)
    s = _BY_KEY[spec]
    keep_sc = s.g is not None and s.g.backward_reads_s
    ctx.save_for_backward(x if s.eq.needs_input_in_backward else None, H, shortcut if keep_sc else None, P, S)
    ctx.spec, ctx.impl, ctx.v_threshold, ctx.v_reset, ctx.alpha = spec, impl, v_threshold, v_reset, alpha
    ctx.x_dtype, ctx.out_dtype = x.dtype, out.dtype
    ctx.sc_dtype = shortcut.dtype if shortcut is not None else x.dtype
    ctx.has_g = s.g is not None
    ctx.layout = (out.shape, out.stride())


def _backward(ctx, grad_out, _gh, _gc, _gs):
    x, H, sc, P, S = ctx.saved_tensors
    lshape, lstride = ctx.layout
    if grad_out is None:
        grad_out = torch.zeros(lshape, dtype=ctx.out_dtype, device=H.device)
    if H.numel() == 0 and grad_out.numel() > 0:
        raise RuntimeError("sewforge neuron: the forward ran without keeping its states (no input needed a gradient)")
    go = _with_layout(grad_out.to(ctx.out_dtype), lshape, lstride)
    need_gx, need_gsc, need_gp = ctx.needs_input_grad[0], ctx.needs_input_grad[1] and ctx.has_g, ctx.needs_input_grad[2]
    gx, gsc, gp = multistate_backward(go, x, H, sc, P, S, ctx.spec, ctx.impl, ctx.v_threshold, ctx.v_reset, ctx.alpha,
                                      need_gx, need_gsc, need_gp, ctx.x_dtype, ctx.sc_dtype)
    gx, gsc, gp = first_order(gx if need_gx else None, gsc if need_gsc else None, gp if need_gp else None,
                              device=H.device)
    return gx, gsc, gp, None, None, None, None, None, None, None, None, None


multistate_forward.register_autograd(_backward, setup_context=_setup_context)


def check_channels(owner: str, names: Sequence[str], C: int, x: torch.Tensor) -> None:
    """A ValueError unless ``x`` is ``[T, B, C, ...]`` with the parameters' ``C`` channels."""
    if x.dim() >= 3 and x.shape[2] == C:
        return
    what = "parameter" + ("s " if len(names) > 1 else " ") + ", ".join(names)
    if x.dim() < 3:
        raise ValueError(f"{owner}: the per-channel {what} need an input [T, B, C, ...] with C = {C} channels, got "
                         f"shape {tuple(x.shape)}")
    raise ValueError(f"{owner}: the per-channel {what} hold {C} values (channels={C}) but the input "
                     f"{tuple(x.shape)} has {x.shape[2]} channels (dimension 2 of [T, B, C, ...]); build the neuron "
                     f"with channels={x.shape[2]}")


# ---- dispatch -------------------------------------------------------------------------------------
def param_table(eq: MultiStateEquation, values: Dict[str, torch.Tensor], C: int) -> torch.Tensor:
    """``[num_params, C]`` (at least one row): scalar parameters repeated over the columns."""
    if not eq.param_names:
        return torch.zeros(1, C)
    rows = []
    for n in eq.param_names:
        t = values[n]
        rows.append(t.expand(C) if t.dim() == 0 else t)
    dtype = torch.float64 if any(r.dtype == torch.float64 for r in rows) else torch.float32
    return torch.stack([r.to(dtype) for r in rows])


def multistate_neuron(x: torch.Tensor, eq: MultiStateEquation, values: Dict[str, torch.Tensor], surrogate: Any,
                      v_threshold: float, v_reset: Optional[float], detach_reset: bool, *,
                      state0: Optional[Tuple[torch.Tensor, ...]] = None, shortcut: Optional[torch.Tensor] = None,
                      g: Any = None, backend: Optional[str] = None, count: bool = False, need_state: bool = False):
    """Run a multi-state neuron over all T steps: ``(out, state, spike_count or None)``; ``state``
    is ``(u_0, ..., u_{K-1}, last spike)`` after the last step (detached)."""
    from . import _check, resolve_backend
    from ..elementwise import create_elementwise
    from ..surrogates import create_surrogate

    _check(x, shortcut, None, v_threshold, v_reset)
    if (shortcut is None) != (g is None):
        raise ValueError("the fused SEW op g(SN(X), S) needs both g and a shortcut (or neither)")
    g_fn = create_elementwise(g) if g is not None else None
    sg = create_surrogate(surrogate)
    if eq.per_channel:
        C = max((t.numel() for n, t in values.items() if n in eq.per_channel), default=0)
        check_channels(eq.name, eq.per_channel, C, x)
    impl = resolve_backend(x, backend)
    if impl in ("cpu", "triton") and shortcut is not None and shortcut.dtype != x.dtype:
        common = torch.promote_types(x.dtype, shortcut.dtype)  # one I/O dtype: cast up (exact)
        x, shortcut = x.to(common), shortcut.to(common)
    key, how = _resolve(eq, type(sg), g_fn, v_reset is not None, detach_reset, x.dtype, impl)
    if how == "torch":  # the reference (backend torch, no C compiler)
        out, state = multistate_reference(x, eq, values, sg, v_threshold, v_reset, detach_reset, state0=state0,
                                          shortcut=shortcut, g=g_fn)
        c = None
        if count:
            with torch.no_grad():
                a = out if g_fn is None else multistate_reference(
                    x.detach(), eq, {k: v.detach() for k, v in values.items()}, sg, v_threshold, v_reset,
                    detach_reset, state0=state0)[0]
                c = a.sum(dtype=torch.float64).reshape(1)
        return out, tuple(t.detach() for t in state), c
    x = as_time_dense(x)
    if shortcut is not None:
        shortcut = as_time_dense(shortcut, like=x)
    cd = compute_dtype(x.dtype)
    C, _ = _channels(x, eq)
    P = param_table(eq, values, C).to(device=x.device, dtype=cd)
    S = _initial(x, eq, state0, v_reset)
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or P.requires_grad or
                                              (shortcut is not None and shortcut.requires_grad))
    out, _, counted, state = multistate_forward(
        x, shortcut, P, S, key, how, float(v_threshold),
        None if v_reset is None else float(v_reset), float(sg.alpha), needs_grad, need_state, count)
    return out, (tuple(state.unbind(0)) if need_state else ()), (counted if count else None)


def _initial(x: torch.Tensor, eq: MultiStateEquation, state0: Optional[Tuple[torch.Tensor, ...]],
             v_reset: Optional[float]) -> torch.Tensor:
    """The initial states and previous spike as one [K + 1, ...] tensor, each row laid out like x[0]."""
    K = eq.num_states
    cd = compute_dtype(x.dtype)
    step = x[0] if x.shape[0] > 0 else torch.empty(x.shape[1:], device=x.device)
    n = step.numel()
    S = torch.empty_strided((K + 1,) + tuple(x.shape[1:]), (max(n, 1),) + tuple(step.stride()), dtype=cd,
                            device=x.device)
    if state0 is None:
        S[0].fill_(0.0 if v_reset is None else float(v_reset))
        for i in range(1, K):
            S[i].fill_(eq.initial[i])
        S[K].zero_()
    else:
        for i, t in enumerate(state0):
            S[i].copy_(t)
    return S
