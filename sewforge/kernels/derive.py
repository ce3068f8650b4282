"""Charge equations from one Python step function: the PyTorch, C and Triton forms derived.

A neuron author writes the membrane update once, as plain arithmetic on the previous potential
``v``, the input ``x`` and named parameters ``p.<name>`` (``p.v_rest`` is the potential the neuron
decays toward)::

    def lif(v, x, p):
        return v + (x - (v - p.v_rest)) * p.k

    LIF = charge_from_step(lif, params=("k",))

:func:`charge_from_step` runs the function once on symbolic stand-ins, which records it as a small
expression tree. From the tree it writes

* the charge itself in PyTorch, C and Triton, operation for operation in the author's order (no
  reassociation, so all three round alike and fire on the same elements);
* dH/dV, dH/dX and dH/dp for every learnable parameter, differentiated exactly with SymPy. Where a
  derivative reads ``x`` and the charge is linear in ``x``, ``x`` is replaced by its value from
  ``h`` (``x = (h - H(v, 0)) / (dH/dX)``), so the backward pass need not read the input again.

The Triton functions are written as a module into the kernel cache folder and imported (Triton
compiles from source text). The result is a :class:`~sewforge.kernels.charge.ChargeEquation`, so
every surrogate, reset mode, detach choice and SEW function composes with it as with a
hand-written one.

Allowed in a step function: ``+ - * /``, unary ``-``, ``**`` with a constant integer exponent,
``abs``, ``torch.exp / log / sqrt / tanh / atan / sigmoid`` (also as tensor methods), Python
numbers, and the declared parameters. Anything else (a comparison, an ``if`` on the state, a
``math`` function, an undeclared parameter, a tuple returned) raises :class:`StepFunctionError`
naming the function, the line and what is allowed, when the charge is derived; never in a kernel.
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import linecache
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .charge import ChargeEquation

__all__ = ["charge_from_step", "StepFunctionError", "DerivedCharge", "ALLOWED"]

ALLOWED = ("+, -, *, /, unary -, ** with a constant integer exponent (1 to 8), abs, "
           "torch.exp/log/sqrt/tanh/atan/sigmoid, Python numbers and the declared parameters")
_RESERVED = {"v", "x", "h", "p", "P", "v_rest", "tl", "real", "torch", "math"}


class StepFunctionError(ValueError):
    """A step function that cannot be turned into kernels."""


# ---- tracing ------------------------------------------------------------------------------------
class _Node:
    __slots__ = ("op", "args", "value")

    def __init__(self, op: str, args: Tuple["_Node", ...] = (), value: Any = None):
        self.op, self.args, self.value = op, args, value


_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_FUNCS = ("exp", "log", "sqrt", "tanh", "atan", "sigmoid", "abs")


class _Tracing:
    """The function being traced (to point errors at its own lines)."""

    fn: Optional[Callable] = None
    params: Tuple[str, ...] = ()


def _where() -> str:
    fn = _Tracing.fn
    frame = sys._getframe(1)
    while frame is not None and (fn is None or frame.f_code is not fn.__code__):
        frame = frame.f_back
    if frame is None:
        return _describe(fn)
    return _line(fn, frame.f_lineno)


def _describe(fn: Any) -> str:
    name = getattr(fn, "__qualname__", repr(fn))
    try:
        return f"step function {name} ({inspect.getsourcefile(fn)}:{fn.__code__.co_firstlineno})"
    except (TypeError, AttributeError):
        return f"step function {name}"


def _line(fn: Any, lineno: int) -> str:
    path = fn.__code__.co_filename
    text = linecache.getline(path, lineno).strip()
    return f"step function {fn.__qualname__}, {path}:{lineno}" + (f": `{text}`" if text else "")


def _fail(what: str) -> "StepFunctionError":
    return StepFunctionError(f"{_where()}: {what}; allowed: {ALLOWED}")


def _lift(a: Any) -> _Node:
    if isinstance(a, _Sym):
        return a.node
    if isinstance(a, bool) or not isinstance(a, (int, float)):
        raise _fail(f"unsupported operand {type(a).__name__} {a!r}" if not isinstance(a, torch.Tensor)
                    else "a tensor constant inside the step function (declare it as a parameter)")
    if not math.isfinite(a):
        raise _fail(f"the constant {a!r} is not finite")
    return _Node("const", value=a)


class _Sym:
    """A symbolic stand-in for ``v``, ``x`` or a parameter while the step function is traced."""

    __slots__ = ("node",)

    def __init__(self, node: _Node):
        self.node = node

    def _bin(self, op, other, swap=False):
        a, b = (_lift(other), self.node) if swap else (self.node, _lift(other))
        return _Sym(_Node(op, (a, b)))

    __add__ = lambda s, o: s._bin("add", o)  # noqa: E731
    __radd__ = lambda s, o: s._bin("add", o, True)  # noqa: E731
    __sub__ = lambda s, o: s._bin("sub", o)  # noqa: E731
    __rsub__ = lambda s, o: s._bin("sub", o, True)  # noqa: E731
    __mul__ = lambda s, o: s._bin("mul", o)  # noqa: E731
    __rmul__ = lambda s, o: s._bin("mul", o, True)  # noqa: E731
    __truediv__ = lambda s, o: s._bin("div", o)  # noqa: E731
    __rtruediv__ = lambda s, o: s._bin("div", o, True)  # noqa: E731

    def __neg__(self):
        return _Sym(_Node("neg", (self.node,)))

    def __pos__(self):
        return self

    def __abs__(self):
        return _Sym(_Node("abs", (self.node,)))

    def __pow__(self, e):
        if isinstance(e, bool) or not isinstance(e, int) and not (isinstance(e, float) and e.is_integer()):
            raise _fail(f"** with exponent {e!r} (only a constant integer exponent is supported)")
        if not 1 <= int(e) <= 8:
            raise _fail(f"** with exponent {e!r} (the exponent must be 1 to 8; write 1 / v ** n for a negative one)")
        return _Sym(_Node("pow", (self.node,), int(e)))

    def __rpow__(self, base):
        raise _fail("a number raised to the state or a parameter (use torch.exp(y * log(b)))")

    def __bool__(self):
        raise _fail("a condition on the state or a parameter (`if`, `and`, `or`, comparisons); branches are not "
                    "differentiable, the spike and reset are added by sewforge")

    def __lt__(self, o):
        raise _fail("a comparison (<, <=, >, >=, ==); the spike and reset are added by sewforge")

    __le__ = __gt__ = __ge__ = __lt__

    def __eq__(self, o):  # type: ignore[override]
        raise _fail("a comparison (==, !=); the spike and reset are added by sewforge")

    __ne__ = __eq__
    __hash__ = None  # type: ignore[assignment]

    def __floordiv__(self, o):
        raise _fail("// (floor division is not differentiable)")

    __rfloordiv__ = __mod__ = __rmod__ = __floordiv__

    def __float__(self):
        raise _fail("float() of the state or a parameter (math.* functions and conversions need a number; use "
                    "torch.exp and friends)")

    __int__ = __index__ = __complex__ = __float__

    def __getitem__(self, i):
        raise _fail("indexing the state or a parameter (each is a scalar per neuron)")

    def __iter__(self):
        raise _fail("iterating over the state or a parameter (each is a scalar per neuron)")

    def __getattr__(self, name):
        if name in _FUNCS:
            return lambda: _Sym(_Node(name, (self.node,)))
        raise _fail(f"the attribute or method .{name}")

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        name = {"arctan": "atan", "absolute": "abs"}.get(name, name)
        if name in _FUNCS and len(args) == 1 and not kwargs:
            return _Sym(_Node(name, (_lift(args[0]),)))
        if any(isinstance(a, torch.Tensor) for a in args):
            raise _fail("a tensor constant inside the step function (declare it as a parameter)")
        raise _fail(f"torch.{name}")


class _Params:
    """``p`` while tracing: the declared parameters and ``v_rest``; anything else is an error."""

    def __init__(self, names: Sequence[str]):
        object.__setattr__(self, "_names", tuple(names))

    def __getattr__(self, name: str):
        names = object.__getattribute__(self, "_names")
        if name == "v_rest":
            return _Sym(_Node("var", value="v_rest"))
        if name in names:
            return _Sym(_Node("var", value=name))
        declared = ", ".join(f"p.{n}" for n in names) or "none"
        raise StepFunctionError(f"{_where()}: reads the parameter p.{name}, which is not declared (declared: "
                                f"{declared}, and p.v_rest); declare it with params=(..., {name!r})")

    def __setattr__(self, name, value):
        raise _fail(f"assigns p.{name} (parameters are read-only in a step)")


def trace(step: Callable, params: Sequence[str]) -> _Node:
    """The expression tree of ``step(v, x, p)``."""
    _Tracing.fn = step
    try:
        try:
            out = step(_Sym(_Node("var", value="v")), _Sym(_Node("var", value="x")), _Params(params))
        except StepFunctionError:
            raise
        except Exception as exc:  # an operation the stand-ins do not support (math.exp, numpy, ...)
            lineno = None
            for fs in reversed(_walk_tb(exc.__traceback__)):
                if fs[0] is step.__code__:
                    lineno = fs[1]
                    break
            where = _line(step, lineno) if lineno else _describe(step)
            raise StepFunctionError(f"{where}: unsupported operation ({type(exc).__name__}: {exc}); allowed: "
                                    f"{ALLOWED}") from None
        if isinstance(out, (tuple, list)):
            if len(out) != 1:
                raise StepFunctionError(f"{_describe(step)} returns {len(out)} values; a neuron with one state "
                                        "variable returns the new potential only")
            out = out[0]
        if not isinstance(out, _Sym):
            if isinstance(out, (int, float)) and not isinstance(out, bool):
                out = _Sym(_lift(out))
            else:
                raise StepFunctionError(f"{_describe(step)} returns {type(out).__name__}; it must return the new "
                                        "potential computed from v, x and p")
        return out.node
    finally:
        _Tracing.fn = None


def _walk_tb(tb) -> List[Tuple[Any, int]]:
    out = []
    while tb is not None:
        out.append((tb.tb_frame.f_code, tb.tb_lineno))
        tb = tb.tb_next
    return out


# ---- printing the charge in the author's order --------------------------------------------------
_PREC = {"add": 1, "sub": 1, "mul": 2, "div": 2}


def _number(value: float, lang: str) -> str:
    if float(value).is_integer() and abs(value) < 2 ** 53:
        text = f"{int(value)}"
        return text if lang == "c" else text + ".0"
    text = repr(float(value))
    return f"(real){text}" if lang == "c" else text


def _emit(node: _Node, lang: str, names: Dict[str, str]) -> Tuple[str, int]:
    """``(text, precedence)``; 9 binds tightest. ``names`` maps variables to their spelling."""
    op = node.op
    if op == "var":
        return names[node.value], 9
    if op == "const":
        text = _number(node.value, lang)
        return (f"({text})", 9) if node.value < 0 else (text, 9)
    if op in _BIN:
        p = _PREC[op]
        a, pa = _emit(node.args[0], lang, names)
        b, pb = _emit(node.args[1], lang, names)
        if pa < p:
            a = f"({a})"
        if pb <= p:  # a + (b + c) is not (a + b) + c in floating point: keep the author's grouping
            b = f"({b})"
        return f"{a} {_BIN[op]} {b}", p
    a, pa = _emit(node.args[0], lang, names)
    if op == "neg":
        return f"-({a})" if pa < 9 else f"-{a}", 3
    if op == "pow":
        base = a if pa == 9 else f"({a})"
        return "(" + " * ".join([base] * node.value) + ")", 9
    if op == "sigmoid":
        e = _FUNC_NAMES[lang]["exp"]
        one = "(real)1" if lang == "c" else "1.0"
        return f"({one} / ({one} + {e}(-({a}))))", 9
    return f"{_FUNC_NAMES[lang][op]}({a})", 9


_FUNC_NAMES = {
    "c": {"exp": "EXP", "log": "LOG", "sqrt": "SQRT", "tanh": "TANH", "atan": "ATAN", "abs": "FABS"},
    "triton": {"exp": "tl.exp", "log": "tl.log", "sqrt": "_sqrt", "tanh": "_tanh", "atan": "_atan",
               "abs": "tl.abs"},
    "torch": {"exp": "torch.exp", "log": "torch.log", "sqrt": "torch.sqrt", "tanh": "torch.tanh",
              "atan": "torch.atan", "abs": "torch.abs"},
}


# ---- differentiation (SymPy) --------------------------------------------------------------------
def _to_sympy(node: _Node, syms: Dict[str, Any]):
    import sympy

    op = node.op
    if op == "var":
        return syms[node.value]
    if op == "const":
        v = node.value
        return sympy.Integer(int(v)) if float(v).is_integer() else sympy.Float(repr(float(v)), 17)
    args = [_to_sympy(a, syms) for a in node.args]
    if op == "add":
        return args[0] + args[1]
    if op == "sub":
        return args[0] - args[1]
    if op == "mul":
        return args[0] * args[1]
    if op == "div":
        return args[0] / args[1]
    if op == "neg":
        return -args[0]
    if op == "pow":
        return args[0] ** node.value
    if op == "sigmoid":
        return 1 / (1 + sympy.exp(-args[0]))
    return {"exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "tanh": sympy.tanh, "atan": sympy.atan,
            "abs": sympy.Abs}[op](args[0])


def _sym_print(e, lang: str, names: Dict[Any, str]) -> str:
    """A SymPy expression as C, Triton or PyTorch source."""
    import sympy

    def num(value) -> str:
        return _number(float(value), lang)

    def p(e) -> Tuple[str, int]:
        if e.is_Symbol:
            return names[e], 9
        if e.is_Number:
            t = num(e)
            return (f"({t})", 9) if e < 0 else (t, 9)
        if e.is_Add:
            terms = list(e.as_ordered_terms())
            out = ""
            for i, term in enumerate(terms):
                neg = term.could_extract_minus_sign()
                t, pt = p(-term if neg else term)
                if pt <= 1 and (i > 0 or not neg):
                    t = f"({t})" if i > 0 else t
                if i == 0:
                    out = f"-({t})" if neg and pt < 3 else (f"-{t}" if neg else t)
                else:
                    out += f" - {t}" if neg else f" + {t}"
            return out, 1
        if e.is_Mul:
            c, rest = e.as_coeff_Mul()
            if c < 0:
                t, pt = p(-e)
                return (f"-({t})" if pt < 3 else f"-{t}"), 3
            n, d = sympy.fraction(e)
            if d != 1:
                tn, pn = p(n)
                td, pd = p(d)
                return f"{tn if pn >= 2 else f'({tn})'} / {td if pd == 9 else f'({td})'}", 2
            parts = []
            for f in sympy.Mul.make_args(e):
                t, pt = p(f)
                parts.append(t if pt >= 2 else f"({t})")
            return " * ".join(parts), 2
        if e.is_Pow:
            base, ex = e.as_base_exp()
            b, pb = p(base)
            b = b if pb == 9 else f"({b})"
            if ex.is_Integer and 1 <= int(ex) <= 8:
                return "(" + " * ".join([b] * int(ex)) + ")", 9
            if ex.is_Integer and -8 <= int(ex) <= -1:
                one = "(real)1" if lang == "c" else "1.0"
                return f"{one} / (" + " * ".join([b] * -int(ex)) + ")", 2
            if ex == sympy.Rational(1, 2):
                return f"{_FUNC_NAMES[lang]['sqrt']}({b})", 9
            if ex == sympy.Rational(-1, 2):
                one = "(real)1" if lang == "c" else "1.0"
                return f"{one} / {_FUNC_NAMES[lang]['sqrt']}({b})", 2
            t, _ = p(ex)
            if lang == "c":
                return f"POW({b}, {t})", 9
            if lang == "torch":
                return f"torch.pow({b}, {t})", 9
            return f"tl.exp(({t}) * tl.log({b}))", 9
        if isinstance(e, sympy.sign):
            a, _ = p(e.args[0])
            if lang == "c":
                return f"(real)(({a}) > 0) - (real)(({a}) < 0)", 1
            if lang == "torch":
                return f"torch.sign({a})", 9
            return f"tl.where(({a}) > 0, 1.0, tl.where(({a}) < 0, -1.0, 0.0))", 9
        fname = {sympy.exp: "exp", sympy.log: "log", sympy.tanh: "tanh", sympy.atan: "atan",
                 sympy.Abs: "abs"}.get(type(e))
        if fname is None:
            raise StepFunctionError(f"cannot print the derivative term {e} (of type {type(e).__name__})")
        a, _ = p(e.args[0])
        return f"{_FUNC_NAMES[lang][fname]}({a})", 9

    return p(e)[0]


def _printable(e) -> bool:
    """Whether every function in ``e`` has a C, Triton and PyTorch spelling (simplify may bring
    in others, such as cosh)."""
    import sympy

    allowed = (sympy.exp, sympy.log, sympy.tanh, sympy.atan, sympy.Abs, sympy.sign)
    return all(isinstance(f, allowed) for f in e.atoms(sympy.Function)) and not e.has(sympy.Piecewise)


def _simplest(*candidates):
    import sympy

    ok = [e for e in candidates if _printable(e)] or list(candidates[:1])
    return min(ok, key=lambda e: (sympy.count_ops(e), len(str(e))))


# ---- the derived equation ------------------------------------------------------------------------
@dataclass(frozen=True, eq=False, repr=False)  # identity-hashed and printed like every ChargeEquation
class DerivedCharge(ChargeEquation):
    """A :class:`ChargeEquation` derived from a step function; keeps its sources for reading."""

    #: the author's function
    step: Optional[Callable] = None
    param_names: Tuple[str, ...] = ()
    learnable_names: Tuple[str, ...] = ()
    #: ``{"torch": source, "c": {"h", "dh_dv", "dh_dx", "dh_dp": {name: expression}}, "triton": source}``
    sources: Dict[str, Any] = field(default_factory=dict)
    #: the derivatives in PyTorch, ``(v, x, h, p, v_rest)``: dH/dV, dH/dX and a tuple of dH/dp
    torch_derivatives: Optional[Tuple[Callable, Callable, Callable]] = None


def _cache_dir() -> Path:
    root = os.environ.get("SEWFORGE_KERNEL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sewforge" / "kernels") / "derived"


_MODULES: Dict[str, Any] = {}
_TRITON_HELPERS = '''

@jit
def _sqrt(a):
    # correctly rounded, as PyTorch's (sqrt_rn takes fp32 only)
    if a.dtype == tl.float64:
        r = tl.sqrt(a)
    else:
        r = tl.sqrt_rn(a)
    return r

@jit
def _tanh(a):
    # no libdevice (the interpreter has none): a continued fraction near 0, where 1 - exp(-2|a|)
    # would cancel, and (1 - e) / (1 + e) elsewhere
    b = tl.abs(a)
    e = tl.exp(-2.0 * b)
    far = (1.0 - e) / (1.0 + e)
    q = a * a
    cf = 21.0
    for k in tl.static_range(10):
        cf = (19.0 - 2.0 * k) + q / cf
    near = b / cf
    t = tl.where(b < 0.5, near, far)
    return tl.where(a < 0, -t, t)


@jit
def _atan(a):
    # atan(a) = 2 atan(a / (1 + sqrt(1 + a^2))) three times, then the series on |z| <= tan(pi/16)
    z = a / (1.0 + _sqrt(1.0 + a * a))
    z = z / (1.0 + _sqrt(1.0 + z * z))
    z = z / (1.0 + _sqrt(1.0 + z * z))
    z2 = z * z
    s = 1.0 / 23.0
    for k in tl.static_range(11):
        s = 1.0 / (21.0 - 2.0 * k) - z2 * s
    return 8.0 * z * s
'''


_PRIVATE: List[Path] = []


def _private_dir() -> Path:
    if not _PRIVATE:
        _PRIVATE.append(Path(tempfile.mkdtemp(prefix="sewforge-derived-")))
    return _PRIVATE[0]


def _import_source(source: str, tag: str):
    digest = hashlib.sha256(source.encode()).hexdigest()[:20]
    mod = _MODULES.get(digest)
    if mod is not None:
        return mod
    path = None
    for folder in (_cache_dir(), _private_dir()):
        path = folder / f"charge_{tag}_{digest}.py"
        try:
            if not path.exists():
                folder.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, suffix=".py")
                with os.fdopen(fd, "w") as f:
                    f.write(source)
                os.replace(tmp, path)  # atomic: concurrent writers of the same source are harmless
            break
        except OSError:  # an unwritable cache: this process's own folder instead
            continue
    spec = importlib.util.spec_from_file_location(f"sewforge_derived_{digest}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    _MODULES[digest] = mod
    return mod


def charge_from_step(step: Callable, params: Iterable[str] = (), *, learnable: Optional[Iterable[str]] = None,
                     name: Optional[str] = None) -> ChargeEquation:
    """Derive a :class:`ChargeEquation` from ``step(v, x, p) -> h``.

    ``params``: the names the function reads as ``p.<name>``, in the order of the neuron's
    ``charge_params()`` vector. ``learnable``: the names that get gradients (default: all).
    Raises :class:`StepFunctionError` for anything the kernels cannot run.
    """
    params = tuple(params)
    fn_name = name or getattr(step, "__name__", "step")
    if not callable(step):
        raise StepFunctionError(f"charge_from_step: expected a function step(v, x, p), got {type(step).__name__}")
    for pname in params:
        if not isinstance(pname, str) or not pname.isidentifier() or pname in _RESERVED or pname.startswith("_"):
            raise StepFunctionError(f"{_describe(step)}: parameter name {pname!r} is not allowed (an identifier "
                                    f"not starting with _ and not one of {', '.join(sorted(_RESERVED))})")
    if len(set(params)) != len(params):
        raise StepFunctionError(f"{_describe(step)}: parameter names repeat: {params}")
    learn = params if learnable is None else tuple(learnable)
    unknown = [n for n in learn if n not in params]
    if unknown:
        raise StepFunctionError(f"{_describe(step)}: learnable {unknown} not among the parameters {params}")
    try:
        sig = inspect.signature(step)
        sig.bind(None, None, None)
    except TypeError:
        raise StepFunctionError(f"{_describe(step)} must take three arguments (v, x, p)") from None
    except ValueError:
        pass
    tree = trace(step, params)

    # the charge, in the author's order
    idx = {n: i for i, n in enumerate(params)}
    torch_names = {"v": "v", "x": "x", "v_rest": "v_rest", **{n: f"p[{i}]" for n, i in idx.items()}}
    c_names = {"v": "v", "x": "x", "v_rest": "v_rest", **{n: f"p{i}" for n, i in idx.items()}}
    tr_names = {"v": "v", "x": "x", "v_rest": "v_rest", **{n: f"p_{n}" for n in params}}
    torch_h = _emit(tree, "torch", torch_names)[0]
    c_h = _emit(tree, "c", c_names)[0]
    tr_h = _emit(tree, "triton", tr_names)[0]

    # the derivatives (SymPy; cached on disk by the charge's canonical text)
    d = _derivatives(tree, params, learn, c_h)
    needs_x = d["needs_x"]
    c_dv, c_dx, c_dp = d["c"][0], d["c"][1], tuple(d["c"][2:])
    tr_dv, tr_dx, tr_dp = d["triton"][0], d["triton"][1], d["triton"][2:]
    d_p = tr_dp

    # the Triton module
    def loads(exprs: Sequence[str]) -> str:
        used = [n for n in params if any(f"p_{n}" in e for e in exprs)]
        return "".join(f"    p_{n} = tl.load(P + {idx[n]})\n" for n in used)

    charge_reads = _reads(tree) & {"v", "x"}
    tr_h_block = tr_h if charge_reads else f"v * 0.0 + ({tr_h})"
    src = [f'"""Triton forms of the charge {fn_name}, derived by sewforge.kernels.derive (generated file)."""',
           "from sewforge._triton import jit, tl"]
    body_src = [f"\n@jit\ndef charge(v, x, P, v_rest):\n{loads([tr_h])}    return {tr_h_block}\n",
                f"\n@jit\ndef dh_dv(v, x, h, P, v_rest):\n{loads([tr_dv])}    return {tr_dv}\n",
                f"\n@jit\ndef dh_dx(v, x, h, P, v_rest):\n{loads([tr_dx])}    return {tr_dx}\n"]
    if len(d_p) == 1:
        body_src.append(f"\n@jit\ndef dh_dp(v, x, h, P, v_rest):\n{loads(tr_dp)}    return {tr_dp[0]}\n")
    elif d_p:
        rows = 1 << (len(d_p) - 1).bit_length()
        rows_src = "".join(f"    d{i} = {e}\n" for i, e in enumerate(tr_dp))
        stacked = "0.0"
        for i in reversed(range(len(d_p))):
            stacked = f"tl.where(r == {i}, d{i}[None, :], {stacked})"
        body_src.append(f"\n@jit\ndef dh_dp(v, x, h, P, v_rest):\n{loads(tr_dp)}{rows_src}"
                        f"    r = tl.arange(0, {rows})[:, None]\n    return {stacked}\n")
    body = "\n".join(body_src)
    if any(f"{helper}(" in body for helper in ("_tanh", "_atan", "_sqrt")):
        src.append(_TRITON_HELPERS)
    triton_source = "\n".join(src) + "\n" + body
    from .._triton import HAS_TRITON

    mod = _import_source(triton_source, _safe(fn_name)) if HAS_TRITON else None

    # the PyTorch form
    t_dv, t_dx, t_dp = d["torch"][0], d["torch"][1], d["torch"][2:]
    torch_src = (f"def charge(v, x, p, v_rest):\n    return {torch_h}\n\n\n"
                 f"def dh_dv(v, x, h, p, v_rest):\n    return {t_dv}\n\n\n"
                 f"def dh_dx(v, x, h, p, v_rest):\n    return {t_dx}\n\n\n"
                 f"def dh_dp(v, x, h, p, v_rest):\n    return ({''.join(e + ', ' for e in t_dp)})\n")
    namespace: Dict[str, Any] = {"torch": torch}
    exec(compile(torch_src, f"<sewforge charge {fn_name}>", "exec"), namespace)
    torch_charge = namespace["charge"]

    eq = DerivedCharge(
        name=fn_name, torch_charge=torch_charge,
        triton_charge=getattr(mod, "charge", None), triton_dh_dv=getattr(mod, "dh_dv", None),
        triton_dh_dx=getattr(mod, "dh_dx", None), triton_dh_dp=getattr(mod, "dh_dp", None) if d_p else None,
        num_params=len(params), needs_input_in_backward=needs_x,
        c_charge=c_h, c_dh_dv=c_dv, c_dh_dx=c_dx, c_dh_dp=(c_dp if len(c_dp) != 1 else c_dp[0]) if c_dp else None,
        learnable=tuple(idx[n] for n in learn) if learn else (0,),
        step=step, param_names=params, learnable_names=learn,
        sources={"torch": torch_src, "triton": triton_source,
                 "c": {"h": c_h, "dh_dv": c_dv, "dh_dx": c_dx, "dh_dp": dict(zip(learn, c_dp))}},
        torch_derivatives=(namespace["dh_dv"], namespace["dh_dx"], namespace["dh_dp"]),
    )
    return eq


_DERIVE_VERSION = 1


def _derivatives(tree: _Node, params: Tuple[str, ...], learn: Tuple[str, ...], c_h: str) -> Dict[str, Any]:
    """dH/dV, dH/dX and dH/dp (each learnable) as C, Triton and PyTorch source, and whether any
    reads ``x``; from the disk cache when this charge was derived before."""
    import json

    key = hashlib.sha256(json.dumps([_DERIVE_VERSION, c_h, params, learn]).encode()).hexdigest()[:24]
    path = _cache_dir() / f"derivatives_{key}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    out = _derive_sympy(tree, params, learn)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the derivation next time
    return out


def _derive_sympy(tree: _Node, params: Tuple[str, ...], learn: Tuple[str, ...]) -> Dict[str, Any]:
    import sympy

    syms = {n: sympy.Symbol(n, real=True) for n in ("v", "x", "v_rest", *params)}
    hs = sympy.Symbol("h", real=True)
    f = _to_sympy(tree, syms)
    v, x = syms["v"], syms["x"]
    dfdx = sympy.diff(f, x)
    x_of_h = None
    if x not in dfdx.free_symbols and dfdx != 0:  # linear in x: x is known from h
        x_of_h = (hs - f.subs(x, 0)) / dfdx

    def derive(by) -> Any:
        d = sympy.diff(f, by)
        best = _simplest(d, sympy.simplify(d))
        if x_of_h is not None and x in best.free_symbols:
            e = sympy.simplify(d.subs(x, x_of_h))
            if x not in e.free_symbols and _printable(e):
                best = e
        return best

    exprs = [derive(v), derive(x)] + [derive(syms[n]) for n in learn]
    base = {syms["v"]: "v", syms["x"]: "x", hs: "h", syms["v_rest"]: "v_rest"}
    idx = {n: i for i, n in enumerate(params)}
    names = {"c": {**base, **{syms[n]: f"p{i}" for n, i in idx.items()}},
             "triton": {**base, **{syms[n]: f"p_{n}" for n in params}},
             "torch": {**base, **{syms[n]: f"p[{i}]" for n, i in idx.items()}}}

    def triton(e) -> str:
        text = _sym_print(e, "triton", names["triton"])
        # a value that reads no per-neuron variable is a scalar: make it a block like v
        return text if e.free_symbols & {v, x, hs} else f"v * 0.0 + ({text})"

    def torch_(e) -> str:
        text = _sym_print(e, "torch", names["torch"])
        return text if e.free_symbols & {v, x, hs} else f"torch.zeros_like(v) + ({text})"

    return {"needs_x": any(x in e.free_symbols for e in exprs),
            "c": [_sym_print(e, "c", names["c"]) for e in exprs],
            "triton": [triton(e) for e in exprs],
            "torch": [torch_(e) for e in exprs]}


def _reads(node: _Node) -> set:
    if node.op == "var":
        return {node.value}
    out: set = set()
    for a in node.args:
        out |= _reads(a)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)[:40] or "step"
