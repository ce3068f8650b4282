"""Forward+backward time, memory and traffic of the multi-step neuron implementations.

Compares the fused Triton kernel (CUDA only), the PyTorch reference and, when installed,
SpikingJelly's multi-step PLIF (``pip install sewforge[bench]``) on the shapes of the issue:
``[T, 64, 65536]`` for T = 4, 8, 16, 32 and 7B-Net's first layer ``[16, 16, 32, 128, 128]``.

Reported per implementation: median milliseconds of forward+backward, bytes kept for backward
per element and step (exact, from autograd's saved-tensor hooks), peak CUDA memory, and on CUDA
the ratio of the fused kernel's time to the memory-bandwidth floor (the bytes the op must move at
the device's measured copy bandwidth).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable, Dict, List, Tuple

import torch

from .. import create_neuron
from ..kernels import HAS_TRITON

SHAPES: List[Tuple[int, ...]] = [(4, 64, 65536), (8, 64, 65536), (16, 64, 65536), (32, 64, 65536),
                                 (16, 16, 32, 128, 128)]
QUICK_SHAPES: List[Tuple[int, ...]] = [(4, 8, 4096), (16, 8, 4096), (16, 2, 8, 32, 32)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--neuron", default="PLIF", help="registered neuron name (default PLIF, the paper's)")
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke run, not for the record)")
    p.add_argument("--repeat", type=int, default=10, help="timed repetitions per case (median reported)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes of the distinct tensors autograd keeps for backward (inputs that need grad excluded)."""
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.data_ptr() != x.data_ptr():
            seen[t.data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sum(seen.values())


def _time(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, repeat: int) -> float:
    device = x.device
    grad = torch.ones_like(x)
    for _ in range(2):  # warm-up (compilation, allocator)
        x.grad = None
        fn(x).backward(grad)
    times = []
    for _ in range(repeat):
        x.grad = None
        _sync(device)
        t0 = time.perf_counter()
        fn(x).backward(grad)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _copy_bandwidth(device: torch.device) -> float:
    """Measured device-to-device copy bandwidth in bytes/s (read + write)."""
    buf = torch.empty(1 << 28, dtype=torch.uint8, device=device)
    out = torch.empty_like(buf)
    for _ in range(3):
        out.copy_(buf)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        out.copy_(buf)
    _sync(device)
    return 2 * buf.numel() * 10 / (time.perf_counter() - t0)


def implementations(neuron: str, device: torch.device) -> Dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    impls: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    if device.type == "cuda" and HAS_TRITON:
        impls["sewforge fused (triton)"] = create_neuron(neuron, backend="triton").to(device)
    impls["sewforge reference (torch)"] = create_neuron(neuron, backend="torch").to(device)
    try:  # optional comparison
        from spikingjelly.activation_based import neuron as sj_neuron, surrogate as sj_surrogate

        kw = dict(surrogate_function=sj_surrogate.ATan(), detach_reset=True, step_mode="m")
        if neuron.upper() == "PLIF":
            sj = sj_neuron.ParametricLIFNode(init_tau=2.0, **kw)
        elif neuron.upper() == "LIF":
            sj = sj_neuron.LIFNode(tau=2.0, **kw)
        else:
            sj = sj_neuron.IFNode(**kw)
        if device.type == "cuda":
            for backend in ("cupy", "triton", "torch"):
                if backend in getattr(sj, "supported_backends", ()):
                    sj.backend = backend
                    break
        sj = sj.to(device)

        def run_sj(x: torch.Tensor, m=sj) -> torch.Tensor:
            from spikingjelly.activation_based import functional

            functional.reset_net(m)
            return m(x)

        impls[f"spikingjelly ({sj.backend})"] = run_sj
    except ImportError:
        pass
    return impls


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    bandwidth = _copy_bandwidth(device) if device.type == "cuda" else None
    print(f"device: {name}; dtype {args.dtype}; neuron {args.neuron}; torch {torch.__version__}")
    if bandwidth:
        print(f"measured copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    rows = []
    impls = implementations(args.neuron, device)
    header = f"{'shape':<24} {'implementation':<30} {'fwd+bwd ms':>11} {'saved B/elem':>12} {'peak MiB':>9} {'x floor':>8}"
    print(header)
    print("-" * len(header))
    b = torch.tensor([], dtype=dtype).element_size()
    for shape in shapes:
        numel = 1
        for s in shape:
            numel *= s
        # minimum traffic of the op: read X, write S (forward); read dS, read the fp32 state
        # the recurrence needs, write dX (backward)
        floor_bytes = numel * (b + b + b + 4 + b)
        for label, fn in impls.items():
            x = (torch.randn(shape, device=device) * 1.5).to(dtype).requires_grad_(True)
            try:
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                ms = _time(fn, x, args.repeat)
                peak = torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else float("nan")
                saved = _saved_bytes(fn, x) / numel
            except (RuntimeError, MemoryError) as exc:  # e.g. out of memory on a small device
                print(f"{str(shape):<24} {label:<30} failed: {str(exc).splitlines()[0]}")
                continue
            ratio = (ms / 1e3) / (floor_bytes / bandwidth) if bandwidth else float("nan")
            rows.append(dict(shape=list(shape), implementation=label, ms=ms, saved_bytes_per_element=saved,
                             peak_mib=peak, floor_ratio=ratio, device=name, dtype=args.dtype))
            print(f"{str(shape):<24} {label:<30} {ms:>11.2f} {saved:>12.2f} {peak:>9.0f} {ratio:>8.2f}")
            del x
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0
