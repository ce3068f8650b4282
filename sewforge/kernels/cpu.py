"""The fused CPU kernels: the Triton kernels' algorithm, compiled from C per specialisation.

Like the GPU kernels, the forward runs all T steps without an autograd graph and keeps only the
charged potential H (in the compute dtype); the backward runs in reverse time by hand, rebuilding
spikes, the post-reset potential and the surrogate from H, fuses the SEW function g, and reduces the
learnable parameter's gradient. Each (charge, surrogate, g, reset, detach, dtype) combination is
generated as C source from the C expressions that charges, surrogates and element-wise functions
carry (``c_charge``, ``c_derivative``, ``c_fn``, ...), compiled once with the system C compiler
(``cc -O3 -march=native``, no floating-point contraction, so the charge rounds exactly as the
PyTorch reference does) and cached on disk. The loop is blocked: a block of neurons keeps its state
in a small local array across the time loop while the compiler vectorises over the block; blocks
are shared among ``torch.get_num_threads()`` threads (ctypes releases the GIL).

Where no C form exists (a plugin neuron that gives only a PyTorch charge) or no compiler works,
:func:`torch_forward` / :func:`torch_backward` run the same algorithm in plain PyTorch, still
linear in T (the first compiler failure prints a one-line warning). ``SEWFORGE_CPU_KERNEL=torch``
selects that path on purpose; ``SEWFORGE_KERNEL_CACHE`` moves the cache (default
``~/.cache/sewforge/kernels``).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .layout import new_output
from .reference import compute_dtype
from .spec import KernelSpec

__all__ = ["cpu_forward", "cpu_backward", "torch_forward", "torch_backward", "c_available", "cpu_impl",
           "generate_source", "compiled_library"]

_IO = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}
_BLOCK = 512  # neurons per block: the state of a block stays in L1 across the time loop


# ---- source generation ------------------------------------------------------------------------
_PRELUDE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
typedef {real} real;
#define EXP {exp}
#define LOG {log}
#define SQRT {sqrt}
#define FABS {fabs}
#define TANH {tanh}
#define ATAN {atan}
#define POW {pow}
#define BLOCK {block}
"""

_IO_TYPES = {
    "f32": "typedef float io_t;\nstatic inline real LD(io_t v) { return (real)v; }\n"
           "static inline io_t ST(real v) { return (io_t)v; }\n",
    "f64": "typedef double io_t;\nstatic inline real LD(io_t v) { return (real)v; }\n"
           "static inline io_t ST(real v) { return (io_t)v; }\n",
    "f16": "typedef _Float16 io_t;\nstatic inline real LD(io_t v) { return (real)v; }\n"
           "static inline io_t ST(real v) { return (io_t)v; }\n",
    # bf16: the upper half of an fp32; stores round to nearest even (NaN kept quiet), as torch does
    "bf16": "typedef uint16_t io_t;\n"
            "static inline real LD(io_t v) { uint32_t u = ((uint32_t)v) << 16; float f; "
            "memcpy(&f, &u, 4); return (real)f; }\n"
            "static inline io_t ST(real r) { float f = (float)r; uint32_t u; memcpy(&u, &f, 4); "
            "if ((u & 0x7fffffffu) > 0x7f800000u) return (io_t)((u >> 16) | 0x40); "
            "u += 0x7fffu + ((u >> 16) & 1u); return (io_t)(u >> 16); }\n",
}

_FORWARD = r"""
/* forward, SAVE_H={save_h} COUNT={count} */
void {name}(const io_t* restrict X, const io_t* restrict SC, io_t* restrict OUT, real* restrict H,
            const real* restrict P, const real* restrict V0, real* restrict VT, int64_t start, int64_t stop,
            int64_t N, int64_t T, double v_th_, double v_rest_, double* restrict count_out) {{
  const real v_th = (real)v_th_, v_rest = (real)v_rest_;
  {params}
  real vb[BLOCK];
  int64_t count = 0;
  for (int64_t b0 = start; b0 < stop; b0 += BLOCK) {{
    const int64_t n = (stop - b0) < BLOCK ? (stop - b0) : BLOCK;
    if (V0) {{ for (int64_t j = 0; j < n; j++) vb[j] = V0[b0 + j]; }}
    else {{ for (int64_t j = 0; j < n; j++) vb[j] = v_rest; }}
    for (int64_t t = 0; t < T; t++) {{
      const int64_t o = t * N + b0;
      const io_t* restrict xt = X + o;
      io_t* restrict ot = OUT + o;
      {h_row}
      {sc_row}
      int32_t c = 0;
      for (int64_t j = 0; j < n; j++) {{
        const real v = vb[j];
        const real x = LD(xt[j]);
        const real h = (real)({charge});
        const real s = h >= v_th ? (real)1 : (real)0;
        {store_h}
        {count_stmt}
        {out_stmt}
        vb[j] = {reset};
      }}
      count += c;
    }}
    if (VT) {{ for (int64_t j = 0; j < n; j++) VT[b0 + j] = vb[j]; }}
  }}
  if (count_out) *count_out = (double)count;
}}
"""

_BACKWARD = r"""
/* backward, NEED_GX={need_gx} NEED_GSC={need_gsc} NEED_GP={need_gp} */
void {name}(const io_t* restrict GO, const io_t* restrict X, const real* restrict H, const io_t* restrict SC,
            const real* restrict P, const real* restrict V0, io_t* restrict GX, io_t* restrict GSC,
            int64_t start, int64_t stop, int64_t N, int64_t T, double v_th_, double v_rest_, double alpha_,
            double* restrict gp_out) {{
  const real v_th = (real)v_th_, v_rest = (real)v_rest_, alpha = (real)alpha_;
  {params}
  real gv[BLOCK], vi[BLOCK];
  {dp_decl}
  for (int64_t b0 = start; b0 < stop; b0 += BLOCK) {{
    const int64_t n = (stop - b0) < BLOCK ? (stop - b0) : BLOCK;
    for (int64_t j = 0; j < n; j++) {{ gv[j] = 0; {dp_zero} vi[j] = V0 ? V0[b0 + j] : v_rest; }}
    for (int64_t t = T - 1; t >= 0; t--) {{
      const int64_t o = t * N + b0;
      const io_t* restrict got = GO + o;
      const real* restrict ht = H + o;
      const real* restrict hpt = H + (t > 0 ? o - N : o);
      {x_row}
      {sc_row}
      {gx_row}
      {gsc_row}
      if (t > 0) {{
        for (int64_t j = 0; j < n; j++) {{
          const real h_prev = hpt[j];
          const real s_prev = h_prev >= v_th ? (real)1 : (real)0;
          const real v = {reset_prev};
          {body}
        }}
      }} else {{
        for (int64_t j = 0; j < n; j++) {{
          const real v = vi[j];
          {body}
        }}
      }}
    }}
    {gp_reduce}
  }}
  {gp_store}
}}
"""

_BACKWARD_BODY = """const real h = ht[j];
          const real s = h >= v_th ? (real)1 : (real)0;
          const real sg = (real)({sg});
          const real go = LD(got[j]);
          {g_stmt}
          const real dv_dh = {dv_dh};
          const real grad_h = ga * sg + gv[j] * dv_dh;
          {x_stmt}
          {gx_stmt}
          {gp_stmt}
          gv[j] = grad_h * (real)({dh_dv});"""


def _params_decl(spec: KernelSpec) -> str:
    k = max(spec.charge.num_params, 1)
    return " ".join(f"const real p{i} = P[{i}]; (void)p{i};" for i in range(k))


def generate_source(spec: KernelSpec, dtype: torch.dtype) -> str:
    """The C source of every forward/backward variant of one specialisation and input dtype."""
    ch, g = spec.charge, spec.g
    cd = compute_dtype(dtype)
    double = cd == torch.float64
    fn = (lambda name: name) if double else (lambda name: name + "f")
    src = [_PRELUDE.format(real="double" if double else "float", exp=fn("exp"), log=fn("log"), sqrt=fn("sqrt"),
                           fabs=fn("fabs"), tanh=fn("tanh"), atan=fn("atan"), pow=fn("pow"), block=_BLOCK),
           _IO_TYPES[_IO[dtype]]]
    params = _params_decl(spec)
    has_g = g is not None
    reset = "(s > 0 ? v_rest : h)" if spec.hard_reset else "(h - s * v_th)"
    reset_prev = "(s_prev > 0 ? v_rest : h_prev)" if spec.hard_reset else "(h_prev - s_prev * v_th)"
    for save_h in (0, 1):
        for count in (0, 1):
            src.append(_FORWARD.format(
                name=f"fwd_{save_h}{count}", save_h=save_h, count=count, params=params, charge=ch.c_charge,
                h_row="real* restrict ht = H + o;" if save_h else "",
                sc_row="const io_t* restrict sct = SC + o;" if has_g else "",
                store_h="ht[j] = h;" if save_h else "",
                count_stmt="c += (int32_t)(h >= v_th);" if count else "",
                out_stmt=(f"{{ const real a = s; const real s_ = LD(sct[j]); ot[j] = ST({_sub_s(g.c_fn)}); }}"
                          if has_g else "ot[j] = ST(s);"),
                reset=reset))
    if spec.hard_reset:
        dv_dh = "1 - s" if spec.detach_reset else "1 - s + (v_rest - h) * sg"
    else:
        dv_dh = "(real)1" if spec.detach_reset else "1 - v_th * sg"
    reads_s = has_g and g.backward_reads_s
    dps = ch.c_dh_dps
    has_dp = bool(dps)
    for need_gx in (0, 1):
        for need_gsc in ((0, 1) if has_g else (0,)):
            for need_gp in ((0, 1) if has_dp else (0,)):
                if has_g:
                    g_stmt = "const real a = s; " + (
                        "const real s_ = LD(sct[j]); " if reads_s else "const real s_ = 0; (void)s_; ")
                    g_stmt += f"const real ga = go * (real)({_sub_s(g.c_dg_da)}); "
                    if need_gsc:
                        g_stmt += f"gsct[j] = ST(go * (real)({_sub_s(g.c_dg_ds)}));"
                else:
                    g_stmt = "const real ga = go;"
                body = _BACKWARD_BODY.format(
                    sg=_sub_x(spec.surrogate.c_derivative, "(h - v_th)"), g_stmt=g_stmt, dv_dh=dv_dh,
                    x_stmt="const real x = LD(xt[j]);" if ch.needs_input_in_backward else "const real x = h; (void)x;",
                    gx_stmt=f"gxt[j] = ST(grad_h * (real)({ch.c_dh_dx}));" if need_gx else "",
                    gp_stmt=(" ".join(f"dp{i}[j] += grad_h * (real)({e});" for i, e in enumerate(dps))
                             if need_gp else ""),
                    dh_dv=ch.c_dh_dv)
                src.append(_BACKWARD.format(
                    name=f"bwd_{need_gx}{need_gsc}{need_gp}", need_gx=need_gx, need_gsc=need_gsc, need_gp=need_gp,
                    params=params,
                    x_row="const io_t* restrict xt = X + o;" if ch.needs_input_in_backward else "",
                    sc_row="const io_t* restrict sct = SC + o;" if reads_s else "",
                    gx_row="io_t* restrict gxt = GX + o;" if need_gx else "",
                    gsc_row="io_t* restrict gsct = GSC + o;" if need_gsc else "",
                    reset_prev=reset_prev, body=body,
                    dp_decl=" ".join(f"real dp{i}[BLOCK]; double gp{i} = 0.0;" for i in range(len(dps))),
                    dp_zero=" ".join(f"dp{i}[j] = 0;" for i in range(len(dps))),
                    gp_reduce=" ".join(f"for (int64_t j = 0; j < n; j++) gp{i} += (double)dp{i}[j];"
                                       for i in range(len(dps))) if need_gp else "",
                    gp_store=" ".join(f"if (gp_out) gp_out[{i}] = gp{i};" for i in range(len(dps)))))
    return "\n".join(src)


def _sub_s(expr: str) -> str:
    """g's expressions name the shortcut ``s``; inside the kernel that is ``s_`` (``s`` is the spike)."""
    import re

    return re.sub(r"\bs\b", "s_", expr)


def _sub_x(expr: str, arg: str) -> str:
    import re

    return "(" + re.sub(r"\bx\b", arg, expr) + ")"


# ---- compilation and the on-disk cache ----------------------------------------------------------
_LIBS: Dict[Tuple[KernelSpec, torch.dtype], ctypes.CDLL] = {}
_LOCK = threading.Lock()
_WARNED: List[str] = []
_BROKEN: Dict[str, str] = {}  # compiler command -> why it failed


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC", "cc")
    return shutil.which(cc) or shutil.which("gcc") or shutil.which("clang")


def _cpu_signature() -> str:
    """What -march=native depends on: a cache shared between machines must not mix their code."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line
                    break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def _cache_dir() -> Path:
    root = os.environ.get("SEWFORGE_KERNEL_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "sewforge" / "kernels"


def _flags() -> List[str]:
    flags = ["-O3", "-std=gnu11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    if sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64"):
        flags.append("-march=native")
    return flags


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def compiled_library(spec: KernelSpec, dtype: torch.dtype) -> Optional[ctypes.CDLL]:
    """The compiled C kernels of one specialisation and dtype (compiled on first use, cached on
    disk), or None where the C path cannot be used (then the PyTorch path runs)."""
    key = (spec, dtype)
    lib = _LIBS.get(key)
    if lib is not None:
        return lib
    with _LOCK:
        lib = _LIBS.get(key)
        if lib is None:
            lib = _build(spec, dtype)
            if lib is not None:
                _LIBS[key] = lib
    return lib


def _build(spec: KernelSpec, dtype: torch.dtype) -> Optional[ctypes.CDLL]:
    return build_library(generate_source(spec, dtype), "sf", dtype, "the CPU neuron kernel",
                         "neurons run the slower plain-PyTorch CPU path", compiler_at_fault=True)


def build_library(source: str, prefix: str, dtype: torch.dtype, what: str, fallback: str, *,
                  compiler_at_fault: bool) -> Optional[ctypes.CDLL]:
    """Compile C ``source`` into a shared library and load it: cached on disk under a name made of
    ``prefix`` and a digest of the source, compiler, flags and CPU, written atomically (a concurrent
    build of the same kernel is harmless). None, after a one-line warning naming ``what`` and the
    ``fallback`` that runs instead, when there is no compiler or the build fails; a failure marks
    the compiler broken when ``compiler_at_fault`` (the source is known to compile elsewhere).
    Without a compiler the warning says so, once per ``fallback``."""
    cc = _compiler()
    if cc is None:
        _warn_once(f"sewforge: no C compiler found (set CC or install gcc); {fallback}")
        return None
    if cc in _BROKEN:
        return None
    flags = _flags()
    digest = hashlib.sha256("\0".join([source, cc, " ".join(flags), _cpu_signature(), sys.platform]).encode())
    folder = _cache_dir()
    path = folder / f"{prefix}_{digest.hexdigest()[:24]}.so"
    if not path.exists():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                c_file = Path(tmp) / "kernel.c"
                c_file.write_text(source)
                so_tmp = Path(tmp) / "kernel.so"
                proc = subprocess.run([cc, *flags, str(c_file), "-o", str(so_tmp), "-lm"], capture_output=True,
                                      text=True, timeout=120)
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
                    if dtype == torch.float16 and "_Float16" in proc.stderr:
                        _warn_once(f"sewforge: {cc} has no _Float16; float16 neurons run the plain-PyTorch CPU path")
                        return None
                    if compiler_at_fault:
                        _BROKEN[cc] = first
                    _warn_once(f"sewforge: compiling {what} with {cc} failed ({first}); {fallback}")
                    return None
                os.replace(so_tmp, path)  # atomic: a concurrent build of the same kernel is harmless
        except (OSError, subprocess.SubprocessError) as exc:
            _BROKEN[cc] = str(exc)
            _warn_once(f"sewforge: could not build {what} in {folder} ({exc}); {fallback} (set "
                       "SEWFORGE_KERNEL_CACHE to a writable folder)")
            return None
    try:
        return ctypes.CDLL(str(path))
    except OSError as exc:
        _warn_once(f"sewforge: could not load {what} {path} ({exc}); {fallback}")
        return None


#: the C type of each dtype the compiled kernels take as ``real``
C_REAL = {torch.float32: "float", torch.float64: "double"}
_CACHED: Dict[Any, Optional[ctypes.CDLL]] = {}


def cached_library(key: Any, source: Callable[[], str], prefix: str, dtype: torch.dtype, what: str, fallback: str, *,
                   compiler_at_fault: bool, functions: Dict[str, Sequence[Any]]) -> Optional[ctypes.CDLL]:
    """:func:`build_library` of ``source()`` once per ``key`` in this process (None too: the warning
    is not repeated), with the argument types of ``functions`` (name -> ctypes types, no result)
    declared; the one cache of the kernels specialised by a key of their own (spike convolution,
    max pooling, multi-state neurons)."""
    if key in _CACHED:
        return _CACHED[key]
    with _LOCK:
        if key not in _CACHED:
            lib = build_library(source(), prefix, dtype, what, fallback, compiler_at_fault=compiler_at_fault)
            if lib is not None:
                for name, argtypes in functions.items():
                    fn = getattr(lib, name)
                    fn.argtypes, fn.restype = list(argtypes), None
            _CACHED[key] = lib
    return _CACHED[key]


def c_available(spec: KernelSpec) -> bool:
    """Whether this specialisation has every C form the generated kernel needs."""
    return (spec.charge.has_c and spec.surrogate.c_derivative is not None
            and (spec.g is None or spec.g.has_c))


_IMPL: Dict[Tuple[KernelSpec, torch.dtype], str] = {}


def cpu_impl(spec: KernelSpec, dtype: torch.dtype) -> str:
    """``"c"`` when the compiled kernel will run for this call, else ``"torch"``."""
    if os.environ.get("SEWFORGE_CPU_KERNEL", "auto").strip().lower() == "torch":
        return "torch"
    impl = _IMPL.get((spec, dtype))
    if impl is None:
        impl = "c" if c_available(spec) and compiled_library(spec, dtype) is not None else "torch"
        _IMPL[(spec, dtype)] = impl
    return impl


# ---- threading -------------------------------------------------------------------------------
_POOL: Optional[ThreadPoolExecutor] = None
_POOL_SIZE = 0
_POOL_PID = 0  # a forked child has the pool object but not its threads: it makes its own


def run_parallel(fn, bounds: List[Tuple[int, int]], make_args) -> None:
    """Call ``fn(*make_args(start, stop, i))`` for each ``(start, stop)`` of ``bounds`` (the i-th),
    on the kernels' thread pool when there are several (ctypes releases the GIL)."""
    global _POOL, _POOL_SIZE, _POOL_PID
    if len(bounds) == 1:
        fn(*make_args(*bounds[0], 0))
        return
    if _POOL is None or _POOL_SIZE < len(bounds) or _POOL_PID != os.getpid():
        _POOL = ThreadPoolExecutor(max_workers=len(bounds), thread_name_prefix="sewforge-cpu")
        _POOL_SIZE, _POOL_PID = len(bounds), os.getpid()
    futures = [_POOL.submit(fn, *make_args(a, b, i)) for i, (a, b) in enumerate(bounds)]
    for f in futures:
        f.result()


def split(n: int, chunks: int, align: int = 1) -> List[Tuple[int, int]]:
    """``[0, n)`` as at most ``chunks`` contiguous ranges, each a multiple of ``align`` but the last."""
    chunks = max(1, min(chunks, n))
    per = -(-n // chunks)
    per = -(-per // align) * align
    return [(i * per, min(n, (i + 1) * per)) for i in range(chunks) if i * per < n] or [(0, n)]


def _run_chunks(fn, n: int, threads: int, make_args, width: int = 1) -> List[List[float]]:
    """Call ``fn(*make_args(start, stop, slot))`` over ``[0, n)`` split among ``threads``; each
    call's ``slot`` points at ``width`` doubles of its own, returned per chunk."""
    # chunks of whole blocks, at least ~64K neurons each: hand-offs cost more than they save below that
    bounds = split(n, max(1, min(threads, n // (1 << 16))), _BLOCK)
    results = (ctypes.c_double * (len(bounds) * width))()
    run_parallel(fn, bounds, lambda a, b, i: make_args(a, b, ctypes.byref(results, 8 * width * i)))
    return [list(results[width * i:width * (i + 1)]) for i in range(len(bounds))]


def _ptr(t: Optional[torch.Tensor]) -> Optional[int]:
    return None if t is None else t.data_ptr()


_ARGTYPES_FWD = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 4 + [ctypes.c_double] * 2 + [ctypes.c_void_p]
_ARGTYPES_BWD = [ctypes.c_void_p] * 8 + [ctypes.c_int64] * 4 + [ctypes.c_double] * 3 + [ctypes.c_void_p]


def _function(lib: ctypes.CDLL, name: str, argtypes) -> ctypes._CFuncPtr:
    fn = getattr(lib, name)
    if fn.argtypes is None:
        fn.argtypes = argtypes
        fn.restype = None
    return fn


# ---- the launchers (same contract as the Triton ones) ---------------------------------------------
def _library_for(spec: KernelSpec, *dtypes: torch.dtype) -> ctypes.CDLL:
    if len(set(dtypes)) != 1:
        raise ValueError(f"the fused CPU kernel takes one dtype for X, the shortcut and the gradient, got "
                         f"{', '.join(map(str, dtypes))}")
    lib = compiled_library(spec, dtypes[0]) if c_available(spec) else None
    if lib is None:
        raise RuntimeError(f"no compiled CPU kernel for {spec.describe()} in {dtypes[0]}; the plain-PyTorch path "
                           "(torch_forward / torch_backward) runs it")
    return lib


_alloc = new_output


def cpu_forward(x, shortcut, params, v0, spec: KernelSpec, v_threshold: float, v_reset: Optional[float], *,
                save_h: bool, need_vt: bool, count: bool):
    """``(out, h, vt, spike_count)`` of the fused forward on the CPU (C kernel or plain PyTorch).

    Tensors follow the launcher contract of :mod:`sewforge.kernels.ops`: ``x`` dense with time
    outermost, ``shortcut`` of the same layout and dtype, ``params`` 1-D in the compute dtype.
    """
    lib = _library_for(spec, x.dtype, shortcut.dtype if shortcut is not None else x.dtype)
    cd = compute_dtype(x.dtype)
    T = x.shape[0]
    n = x[0].numel() if T > 0 else 0
    v_rest = 0.0 if v_reset is None else float(v_reset)
    out = _alloc(x, x.dtype)
    h = _alloc(x, cd) if save_h else None
    vt = _alloc(x[0], cd) if need_vt and T > 0 else None
    v0c = v0.to(cd) if v0 is not None else None
    p = params.to(cd).contiguous()
    if T == 0 or n == 0:
        if need_vt:
            vt = v0c.clone() if v0c is not None else torch.full(x.shape[1:], v_rest, dtype=cd)
        total = 0.0
    else:
        fn = _function(lib, f"fwd_{int(save_h)}{int(count)}", _ARGTYPES_FWD)
        parts = _run_chunks(fn, n, torch.get_num_threads(), lambda a, b, slot: (
            _ptr(x), _ptr(shortcut), _ptr(out), _ptr(h), _ptr(p), _ptr(v0c), _ptr(vt), a, b, n, T,
            float(v_threshold), v_rest, slot if count else None))
        total = sum(part[0] for part in parts)
    counted = torch.tensor([total], dtype=torch.float64) if count else None
    return out, h, vt, counted


def cpu_backward(grad_out, x, h, shortcut, params, v0, spec: KernelSpec, v_threshold: float,
                 v_reset: Optional[float], alpha: float, *, need_gx: bool, need_gsc: bool, need_gp: bool,
                 x_dtype: torch.dtype, sc_dtype: Optional[torch.dtype]):
    """``(grad_x, grad_shortcut, grad_params)`` of the fused backward on the CPU."""
    lib = _library_for(spec, x_dtype, sc_dtype or x_dtype, grad_out.dtype)
    cd = h.dtype
    T = h.shape[0]
    n = h[0].numel() if T > 0 else 0
    v_rest = 0.0 if v_reset is None else float(v_reset)
    has_g = spec.g is not None
    need_gsc = need_gsc and has_g
    ch = spec.charge
    want_gp, need_gp = need_gp, need_gp and bool(ch.c_dh_dps)
    gx = _alloc(h, x_dtype) if need_gx else None
    gsc = _alloc(h, sc_dtype) if need_gsc else None
    totals = [0.0] * len(ch.c_dh_dps)
    if T > 0 and n > 0:
        fn = _function(lib, f"bwd_{int(need_gx)}{int(need_gsc)}{int(need_gp)}", _ARGTYPES_BWD)
        v0c = v0.to(cd) if v0 is not None else None
        p = params.to(cd).contiguous()
        parts = _run_chunks(fn, n, torch.get_num_threads(), lambda a, b, slot: (
            _ptr(grad_out), _ptr(x), _ptr(h), _ptr(shortcut), _ptr(p), _ptr(v0c), _ptr(gx), _ptr(gsc), a, b, n, T,
            float(v_threshold), v_rest, float(alpha), slot if need_gp else None), width=max(1, len(totals)))
        totals = [sum(part[i] for part in parts) for i in range(len(totals))]
    else:
        for t in (gx, gsc):
            if t is not None:
                t.zero_()
    gp = None
    if want_gp:
        gp = torch.zeros_like(params)
        if need_gp:
            gp[list(ch.learnable)] = torch.tensor(totals, dtype=gp.dtype)
    return gx, gsc, gp


# ---- the same algorithm in plain PyTorch (plugins without C forms, no compiler) --------------------
def torch_forward(x, shortcut, params, v0, spec: KernelSpec, v_threshold: float, v_reset: Optional[float], *,
                  save_h: bool, need_vt: bool, count: bool):
    """The fused forward in plain PyTorch: no autograd graph, H kept, linear in T."""
    ch, g = spec.charge, spec.g
    cd = compute_dtype(x.dtype)
    v_rest = 0.0 if v_reset is None else float(v_reset)
    out_dtype = x.dtype if g is None else torch.promote_types(x.dtype, shortcut.dtype)
    T = x.shape[0]
    out = _alloc(x, out_dtype)
    h_all = _alloc(x, cd) if save_h else None
    p = params.to(cd)
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    with torch.no_grad():
        v = torch.full(x.shape[1:], v_rest, dtype=cd, device=x.device) if v0 is None else v0.to(cd)
        for t in range(T):
            h = ch.torch_charge(v, x[t].to(cd), p, v_rest).to(cd)
            s = (h >= v_threshold).to(cd)
            if save_h:
                h_all[t].copy_(h)
            if count:
                total += s.sum(dtype=torch.float64)
            out[t].copy_(s if g is None else g.torch_fn(s, shortcut[t].to(cd)))
            v = torch.where(s > 0, torch.full_like(h, v_rest), h) if spec.hard_reset else h - s * v_threshold
    vt = v.clone() if need_vt else None
    return out, h_all, vt, (total.reshape(1) if count else None)


def torch_backward(grad_out, x, h, shortcut, params, v0, spec: KernelSpec, v_threshold: float,
                   v_reset: Optional[float], alpha: float, *, need_gx: bool, need_gsc: bool, need_gp: bool,
                   x_dtype: torch.dtype, sc_dtype: Optional[torch.dtype]):
    """The fused backward in plain PyTorch: reverse time, one small autograd graph per step for
    the charge's and g's partial derivatives (so a charge given only in PyTorch works). Needs the
    input ``x`` (the caller keeps it for this path)."""
    ch, g = spec.charge, spec.g
    cd = h.dtype
    v_rest = 0.0 if v_reset is None else float(v_reset)
    sg_fn = spec.surrogate  # the class; the instance's alpha is passed separately
    T = h.shape[0]
    gx = _alloc(h, x_dtype) if need_gx else None
    gsc = _alloc(h, sc_dtype) if (need_gsc and g is not None) else None
    p = params.detach().to(cd)
    gp_total = torch.zeros_like(p)
    surrogate = _surrogate_instance(sg_fn, alpha)
    grad_v = torch.zeros(h.shape[1:], dtype=cd, device=h.device)

    def v_before(t: int) -> torch.Tensor:
        if t == 0:
            return (torch.full(h.shape[1:], v_rest, dtype=cd, device=h.device) if v0 is None else v0.to(cd))
        hp = h[t - 1]
        sp = (hp >= v_threshold).to(cd)
        return torch.where(sp > 0, torch.full_like(hp, v_rest), hp) if spec.hard_reset else hp - sp * v_threshold

    for t in range(T - 1, -1, -1):
        ht = h[t]
        s = (ht >= v_threshold).to(cd)
        sg = surrogate.derivative(ht - v_threshold).to(cd)
        go = grad_out[t].to(cd)
        if g is not None:
            with torch.enable_grad():
                a_ = s.clone().requires_grad_(True)
                sc_ = (shortcut[t].to(cd) if shortcut is not None else torch.zeros_like(s)).requires_grad_(True)
                ga, gs = torch.autograd.grad(g.torch_fn(a_, sc_), (a_, sc_), go, allow_unused=True)
            ga = torch.zeros_like(s) if ga is None else ga
            if gsc is not None:
                gsc[t].copy_(torch.zeros_like(s) if gs is None else gs)
        else:
            ga = go
        if spec.hard_reset:
            dv_dh = (1 - s) if spec.detach_reset else (1 - s + (v_rest - ht) * sg)
        else:
            dv_dh = torch.ones_like(s) if spec.detach_reset else (1 - v_threshold * sg)
        grad_h = ga * sg + grad_v * dv_dh
        v_prev = v_before(t)
        with torch.enable_grad():
            v_ = v_prev.clone().requires_grad_(True)
            x_ = x[t].to(cd).clone().requires_grad_(True)
            p_ = p.clone().requires_grad_(need_gp and p.numel() > 0)
            inputs = (v_, x_) + ((p_,) if p_.requires_grad else ())
            out = ch.torch_charge(v_, x_, p_, v_rest).to(cd)
            grads = torch.autograd.grad(out, inputs, grad_h, allow_unused=True)
        gv, gxt = grads[0], grads[1]
        grad_v = torch.zeros_like(grad_h) if gv is None else gv
        if gx is not None:
            gx[t].copy_(torch.zeros_like(grad_h) if gxt is None else gxt)
        if p_.requires_grad and grads[2] is not None:
            gp_total += grads[2]
    gp = None
    if need_gp:
        gp = torch.zeros_like(params)
        if gp_total.numel():
            idx = list(ch.learnable)
            gp[idx] = gp_total[idx]
    return gx, gsc, gp


def _surrogate_instance(cls, alpha: float):
    obj = cls.__new__(cls)
    obj.alpha = alpha
    return obj
