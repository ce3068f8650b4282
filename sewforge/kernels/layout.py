"""Memory layout shared by every kernel: what the launchers accept and how they allocate.

The fused ops treat a sequence ``[T, ...]`` as T rows of N = ``x[0].numel()`` elements: they need
time outermost and each step dense, but not a particular order inside a step, so a sequence whose
steps are channels_last is used as it is (no copy), and every output is allocated like the input
(:func:`new_output`), keeping its layout.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import Iterator, Optional

import torch

__all__ = ["time_dense", "as_time_dense", "same_layout", "new_output", "fill_outputs_with", "advise_huge_pages", "tune_cpu_allocator"]

_OUTPUT_FILL: Optional[float] = None


@contextlib.contextmanager
def fill_outputs_with(value: float = float("nan")) -> Iterator[None]:
    """Pre-fill every tensor the kernels write (instead of leaving it uninitialised), so a test
    sees any element a kernel forgot to write."""
    global _OUTPUT_FILL
    old, _OUTPUT_FILL = _OUTPUT_FILL, value
    try:
        yield
    finally:
        _OUTPUT_FILL = old


def new_output(like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s shape, device and layout (strides) in ``dtype``.

    Large CPU tensors are advised to use transparent huge pages before their first touch (see
    :func:`advise_huge_pages`)."""
    out = torch.empty_like(like, dtype=dtype)
    if out.device.type == "cpu":
        advise_huge_pages(out)
    if _OUTPUT_FILL is not None:
        out.fill_(_OUTPUT_FILL)
    return out


_HUGE = 1 << 21
_MADV_HUGEPAGE = 14
_libc = None


def advise_huge_pages(t: torch.Tensor) -> None:
    """Ask Linux for transparent huge pages on a fresh, large CPU tensor (no-op elsewhere).

    A fresh tensor of more than 32 MB is new memory from the kernel: touching it costs one page
    fault per 4 KB, which for a neuron's outputs took longer than the neuron itself. With huge
    pages it is one fault per 2 MB. Nothing changes where THP is off or the call fails."""
    global _libc
    nbytes = t.numel() * t.element_size()
    if nbytes < 8 * _HUGE or _libc is False or not sys.platform.startswith("linux"):
        return
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
            _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        start = (t.data_ptr() + _HUGE - 1) & ~(_HUGE - 1)
        end = (t.data_ptr() + nbytes) & ~(_HUGE - 1)
        if end > start:
            _libc.madvise(start, end - start, _MADV_HUGEPAGE)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        _libc = False


def time_dense(x: torch.Tensor) -> bool:
    """Whether ``x`` can be used as T rows of ``x[0].numel()`` dense elements in memory order
    (contiguous, or channels_last per step with time outermost) and ``empty_like`` keeps that."""
    if x.dim() == 0:
        return False
    if x.numel() == 0 or x.is_contiguous():
        return True
    n = x.numel() // x.shape[0]
    if x.shape[0] > 1 and x.stride(0) != n:
        return False
    # dense and non-overlapping within a step: the strides are a permutation of a contiguous layout
    expected = 1
    for st, sz in sorted((st, sz) for st, sz in zip(x.stride()[1:], x.shape[1:]) if sz != 1):
        if st != expected:
            return False
        expected *= sz
    return True


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and equal strides wherever a dimension has more than one element."""
    return a.shape == b.shape and all(sa == sb for sa, sb, sz in zip(a.stride(), b.stride(), a.shape) if sz != 1)


def as_time_dense(x: torch.Tensor, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` itself when it is time-dense (and laid out like ``like``, if given), else a copy that is."""
    if like is None:
        return x if time_dense(x) else x.contiguous()
    if same_layout(x, like) or x.numel() <= 1:
        return x
    out = torch.empty_like(like, dtype=x.dtype)
    out.copy_(x)
    return out


_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keep freed CPU memory in the process for reuse (glibc): no ``mmap`` per large tensor and no
    trimming, so a training step's activations reuse the previous step's pages instead of
    faulting in fresh ones (measured: a PLIF layer's forward+backward ran 1.5-2x faster).

    Process-wide and never undone: memory freed by a step is kept for the next one, so the resident
    size stays at its peak. The trainer and the benchmarks call it (for every framework they run);
    ``SEWFORGE_TUNE_MALLOC=0`` turns it off. Returns whether the allocator was tuned."""
    global _TUNED
    if _TUNED:
        return True
    if os.environ.get("SEWFORGE_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))
    _TUNED = ok
    return ok
