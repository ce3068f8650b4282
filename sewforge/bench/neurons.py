"""Forward+backward of one multi-step neuron layer: sewforge (default and reference) vs SpikingJelly 2.0.

Shapes ``[T, 64, 16384]`` for T = 4, 8, 16, 32 and 7B-Net's first neuron layer (the stem PLIF,
``[16, 4, 32, 128, 128]`` at the step benchmark's batch of 4). Implementations: sewforge's default
path (``backend=None``: whatever ``SEWFORGE_BACKEND`` / the device selects), sewforge's PyTorch
reference (``backend="torch"``) and, when installed, SpikingJelly 2.0's multi-step neuron on the
implementation it binds for the device. All implementations get the same input tensor, and their
timed runs alternate (A1 B1 C1 A2 B2 C2 ...) so that drift of a shared machine hits all alike.

Columns: median ms of forward+backward; ms per time step; ratio to SpikingJelly; ratio to the
bandwidth floor (the bytes the op moves at the copy bandwidth measured in the same run); bytes
autograd keeps for backward per element (exact, saved-tensor hooks); peak memory a step adds
(CUDA: max_memory_allocated; CPU: peak RSS in a fresh subprocess per implementation); and the
number of spikes that differ from sewforge's reference on the same input (0 = identical).
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..neurons import create_neuron
from . import common, sj

SHAPES: List[Tuple[int, ...]] = [(4, 64, 16384), (8, 64, 16384), (16, 64, 16384), (32, 64, 16384),
                                 (16, 4, 32, 128, 128)]
QUICK_SHAPES: List[Tuple[int, ...]] = [(4, 4, 1024), (8, 4, 1024), (16, 1, 4, 16, 16)]
IMPLS = ("sewforge", "sewforge-ref", "spikingjelly")

COLUMNS = [("shape", "shape", ""), ("implementation", "implementation", ""), ("dtype", "dtype", ""),
           ("ms", "ms", ".3f"), ("ms_per_step", "ms/step", ".3f"), ("vs_sj", "vs SJ", ".2f"),
           ("floor_x", "x floor", ".2f"), ("saved_b_per_elem", "saved B/elem", ".2f"),
           ("peak_mib", "peak+ MiB", ".1f"), ("spike_diff", "spikes != ref", "")]


def _bench_neurons() -> List[str]:
    """Registered neurons this benchmark can build on any shape (per-channel ones need channels=)."""
    from ..neurons import neuron_needs_channels
    from ..registry import NEURONS

    return [n for n in NEURONS.names() if not neuron_needs_channels(n)]


def _traffic_modelled(neuron: str) -> bool:
    """Whether :func:`traffic_bytes` describes ``neuron``'s kernels (one state, no previous spike)."""
    from ..registry import NEURONS

    return getattr(NEURONS.get(neuron), "_multistate", None) is None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32",
                   help="float32, float16, bfloat16, or a comma-separated list (default float32)")
    p.add_argument("--neuron", default="PLIF", choices=_bench_neurons(),
                   help="a registered neuron without per-channel parameters (default PLIF, the paper's); "
                        "SpikingJelly rows exist for PLIF, LIF and IF")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not for the record)")
    p.add_argument("--shape", action="append", default=None, metavar="T,N,...",
                   help="a shape to run instead of the defaults (repeatable), e.g. 16,64,16384")
    p.add_argument("--repeat", type=int, default=10, help="timed repetitions per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs per implementation first")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on CPU, torch's on CUDA)")
    p.add_argument("--impl", action="append", choices=IMPLS, default=None,
                   help="implementations to run (repeatable; default all available)")
    p.add_argument("--sj-backend", default="auto", choices=["auto", "cuda", "triton", "torch"],
                   help="SpikingJelly's CUDA implementation (default: its own choice)")
    p.add_argument("--no-rss", action="store_true", help="CPU: skip the peak-RSS subprocesses")
    p.add_argument("--budget", type=float, default=None, metavar="S",
                   help="skip the remaining shapes once this many seconds have passed")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


# ---------------------------------------------------------------------------------------------
def traffic_bytes(dtype: torch.dtype, g: Optional[str] = None, training: bool = True) -> Tuple[int, str]:
    """Bytes the fused op moves per element and step, and where the number comes from."""
    try:
        from ..kernels.multistep import traffic_bytes as kernel_traffic  # type: ignore[attr-defined]

        return int(kernel_traffic(dtype, g, training)), "sewforge.kernels.multistep.traffic_bytes"
    except Exception:  # noqa: BLE001 - absent (or Triton-less import failure): the documented formula
        b = torch.empty((), dtype=dtype).element_size()
        fwd = b + b + 4  # read X, write S, write H (fp32)
        bwd = b + 4 + b  # read dS, read H, write dX
        return fwd + (bwd if training else 0), "fwd X+S+H(4), bwd dS+H(4)+dX"


def make_input(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * 1.5 + 0.5
    return x.to(device=device, dtype=dtype).requires_grad_(True)


def sewforge_backend(device: torch.device, dtype: torch.dtype, backend: Optional[str] = None) -> str:
    try:
        from ..kernels import resolve_backend

        return str(resolve_backend(torch.empty(1, device=device, dtype=dtype), backend))
    except Exception:  # noqa: BLE001 - the dispatch may change; the label is informative only
        return backend or "auto"


def build_impl(key: str, neuron: str, device: torch.device, dtype: torch.dtype
               ) -> Tuple[Callable[[torch.Tensor], torch.Tensor], str]:
    """``(fn, label)``: ``fn(x)`` runs the layer on ``x = [T, ...]`` from a fresh state."""
    if key == "sewforge":
        mod = create_neuron(neuron).to(device)
        return mod, f"sewforge default ({sewforge_backend(device, dtype)})"
    if key == "sewforge-ref":
        mod = create_neuron(neuron, backend="torch").to(device)
        return mod, "sewforge reference (torch)"
    if key == "spikingjelly":
        mod = sj.make_neuron(neuron).to(device)

        def run_sj(x: torch.Tensor, m=mod) -> torch.Tensor:
            sj.reset(m)
            return m(x)

        return run_sj, f"spikingjelly 2.0 ({sj.implementation(neuron, device)})"
    raise ValueError(f"unknown implementation {key!r}")


def available_impls(requested: Optional[List[str]]) -> List[str]:
    keys = list(requested or IMPLS)
    if "spikingjelly" in keys and not common.has_spikingjelly():
        keys.remove("spikingjelly")
    return keys


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (the input itself excluded)."""
    seen: Dict[Tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        if t.data_ptr() != x.data_ptr():
            seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        fn(x).backward(grad)

    return step


def probe(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Peak RSS of one fwd+bwd of one implementation (run in a fresh process by ``_probe``)."""
    device = torch.device(spec.get("device", "cpu"))
    common.set_threads(spec.get("threads"), device)
    dtype = getattr(torch, spec["dtype"])
    fn, _ = build_impl(spec["impl"], spec["neuron"], device, dtype)
    x = make_input(tuple(spec["shape"]), dtype, device)
    grad = torch.ones_like(x)
    return common.rss_peak_above_baseline(fwd_bwd(fn, x, grad), prepare=lambda: setattr(x, "grad", None))


# ---------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    sj.request_backend(args.sj_backend)
    device = common.pick_device(args.device)
    threads = common.set_threads(args.threads, device)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("float32", "float16", "bfloat16"):
            raise SystemExit(f"--dtype {d!r}: use float32, float16 or bfloat16")
    if args.shape:
        shapes = [tuple(int(s) for s in spec.replace("x", ",").split(",")) for spec in args.shape]
    else:
        shapes = QUICK_SHAPES if args.quick else SHAPES
    keys = available_impls(args.impl)
    t_start = time.perf_counter()
    bandwidth = common.copy_bandwidth(device, nbytes=(1 << 24) if args.quick else (1 << 28))
    meta: Dict[str, Any] = dict(device=common.device_name(device), device_type=device.type, threads=threads,
                                neuron=args.neuron, versions=common.versions(), copy_bandwidth_gbs=bandwidth / 1e9,
                                repeat=args.repeat, warmup=args.warmup,
                                memory_method=(common.CUDA_METHOD if device.type == "cuda" else
                                               ("not measured (--no-rss)" if args.no_rss else None)),
                                notes=[])
    if "spikingjelly" not in keys and not common.has_spikingjelly():
        meta["notes"].append("spikingjelly not installed (pip install 'sewforge[bench]'): no SpikingJelly rows")
    print(f"device: {meta['device']}; neuron {args.neuron}; torch {torch.__version__}; "
          f"spikingjelly {meta['versions'].get('spikingjelly')}")
    print(f"measured copy bandwidth (out.copy_(buf), {threads} thread{'s' if threads != 1 else ''}): "
          f"{bandwidth / 1e9:.1f} GB/s (read + write)")
    rows: List[Dict[str, Any]] = []
    order: List[List[Any]] = []
    payload = dict(meta=meta, rows=rows, order=order)
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        traffic, source = traffic_bytes(dtype)
        if not _traffic_modelled(args.neuron):
            traffic = None
            note = (f"x floor: not given for {args.neuron}, whose kernels keep one value per state and step "
                    "(the traffic model is that of one state)")
            if note not in meta["notes"]:
                meta["notes"].append(note)
        meta.setdefault("traffic_bytes", {})[dtype_name] = traffic
        meta["traffic_source"] = source
        impls = {}
        for key in keys:
            try:
                impls[key] = build_impl(key, args.neuron, device, dtype)
            except Exception as exc:  # noqa: BLE001 - report and go on without it
                meta["notes"].append(f"{key}: could not build: {exc}")
        for shape in shapes:
            if args.budget is not None and time.perf_counter() - t_start > args.budget:
                meta["notes"].append(f"skipped {list(shape)} {dtype_name}: over the {args.budget:.0f}s budget")
                continue
            rows.extend(_run_shape(shape, dtype, dtype_name, impls, device, args, bandwidth, traffic, threads, order))
            common.write_json(args.json, payload)
    print()
    print(common.table(rows, COLUMNS))
    if meta["memory_method"] is None:
        meta["memory_method"] = next((r["memory_method"] for r in rows if r.get("memory_method")), "-")
    traffic_txt = ", ".join(f"{v} B {k}" for k, v in meta.get("traffic_bytes", {}).items() if v)
    floor_txt = (f"x floor: ms / (numel x {traffic_txt} per element and step [{meta.get('traffic_source')}] / copy "
                 "bandwidth); " if traffic_txt else "")
    print(f"\nms: median of {args.repeat} alternating runs; {floor_txt}saved B/elem: saved-tensor hooks; "
          f"peak+ MiB: {meta['memory_method']}; spikes != ref: forward on the same input vs sewforge's reference.")
    for note in meta["notes"]:
        print(f"note: {note}")
    for r in rows:
        if r.get("error") or r.get("memory_error"):
            print(f"error: {r.get('model', r.get('shape'))} {r['implementation']}: {r.get('error') or r.get('memory_error')}")
    meta["seconds"] = time.perf_counter() - t_start
    common.write_json(args.json, payload)
    return 0


def _run_shape(shape, dtype, dtype_name, impls, device, args, bandwidth, traffic, threads, order):
    numel = math.prod(shape)
    x = make_input(shape, dtype, device)
    grad = torch.ones_like(x)
    rows: Dict[str, Dict[str, Any]] = {}
    cases: Dict[str, Callable[[], None]] = {}
    with torch.no_grad():
        ref = create_neuron(args.neuron, backend="torch").to(device)(x.detach())
    for key, (fn, label) in impls.items():
        row = dict(shape=list(shape), impl=key, implementation=label, dtype=dtype_name, T=shape[0], numel=numel)
        try:
            with torch.no_grad():
                row["spike_diff"] = int((fn(x.detach()) != ref).sum())
            row["saved_b_per_elem"] = saved_bytes(fn, x) / numel
            cases[key] = fwd_bwd(fn, x, grad)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory on a small device
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{list(shape)} {label}: failed: {row['error']}")
        rows[key] = row
    del ref
    rec: List[Tuple[str, int]] = []
    try:
        times = common.alternate(cases, args.repeat, args.warmup, device, rec)
    except Exception as exc:  # noqa: BLE001
        for key in cases:
            rows[key]["error"] = f"{type(exc).__name__}: {exc}"
        times = {}
    order.extend([list(shape), dtype_name, k, r] for k, r in rec)
    for key, t in times.items():
        rows[key]["ms"] = common.median_ms(t)
        rows[key]["ms_per_step"] = rows[key]["ms"] / shape[0]
        rows[key]["times_ms"] = [s * 1e3 for s in t]
        if key.startswith("sewforge") and traffic:
            floor_s = numel * traffic / bandwidth
            rows[key]["floor_ms"] = floor_s * 1e3
            rows[key]["floor_x"] = rows[key]["ms"] / 1e3 / floor_s
    sj_ms = rows.get("spikingjelly", {}).get("ms")
    for row in rows.values():
        if sj_ms and row.get("ms"):
            row["vs_sj"] = row["ms"] / sj_ms
    # memory, one implementation at a time
    for key in list(cases):
        common.measure_peak(rows[key], cases[key], device, lambda: setattr(x, "grad", None),
                            dict(kind="neuron", impl=key, neuron=args.neuron, shape=list(shape), dtype=dtype_name,
                                 threads=threads, device="cpu"), args.no_rss)
    del x, grad, cases
    return list(rows.values())
