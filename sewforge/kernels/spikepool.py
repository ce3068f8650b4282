"""Max pooling of spikes: no int64 indices kept, and on the CPU a backward pass from the packed spikes.

PyTorch's max pooling keeps an int64 index per output element for its backward pass (8 bytes:
twice a 2x2 pool's fp32 input, 64 times its 1-bit packed form). :func:`pool_spikes` keeps only the
input instead, compactly when it is marked spikes (1 bit per element, or 1 byte for a SEW
``ADD``'s integers, :func:`sewforge.memory.pack_saved`), and finds each window's maximum again in
the backward pass.

On the CPU that backward pass is one compiled C loop (:func:`sewforge.kernels.cpu.build_library`)
that reads the packed values directly: per output, the first maximum of its window in row-major
order (PyTorch's own choice among ties, NaN included) receives the output's gradient, the outputs
visited in PyTorch's order, so the input gradient equals PyTorch's bit for bit. Elsewhere (CUDA,
no C compiler, 1-D/3-D pooling, a layout without images outermost) the input is unpacked and
PyTorch's pooling runs again with indices. The forward pass is the module's own call: its hooks
fire as usual.
"""
from __future__ import annotations

import ctypes
from typing import Any, Optional, Tuple

import torch
from torch import nn

from ..memory import PackedSpikes, _compiling, pack_saved, spike_kind, stash, unpack_saved, unstash
from .cpu import C_REAL, cached_library, run_parallel, split

__all__ = ["pool_spikes", "available"]

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

#define CHUNK 64

/* the value at element offset o: kind 0 reals, 1 one byte each, 2 one bit each (bit o % 8) */
static inline __attribute__((always_inline)) real load(const void* src, const int kind, int64_t o) {
    if (kind == 0) return ((const real*)src)[o];
    if (kind == 1) return (real)((const uint8_t*)src)[o];
    return (real)((((const uint8_t*)src)[o >> 3] >> (o & 7)) & 1);
}

/* gx rows [r0, r1) of image n set to zero */
static void zero_rows(real* gx, int64_t n, int64_t r0, int64_t r1, int64_t C, int64_t W,
                      int64_t xn, int64_t xc, int64_t xh, int64_t xw) {
    for (int64_t h = r0; h < r1; h++) {
        if (xc == 1 && xw == C) { memset(gx + n * xn + h * xh, 0, sizeof(real) * W * C); continue; }
        for (int64_t c = 0; c < C; c++)
            for (int64_t w = 0; w < W; w++) gx[n * xn + c * xc + h * xh + w * xw] = 0;
    }
}

/* bits b of each byte as reals, for decoding 8 packed spikes at a time */
static real BITS[256][8];

__attribute__((constructor)) static void fill_bits(void) {
    for (int b = 0; b < 256; b++)
        for (int i = 0; i < 8; i++) BITS[b][i] = (real)((b >> i) & 1);
}

/* One image: gx = gy at each window's first maximum in row-major order (ties and NaN as PyTorch
   decides them), summed in PyTorch's order, zero elsewhere (rows zeroed just before the windows
   first reach them, so that they are still in cache). Channels in chunks, each window position
   for a whole chunk at once (contiguous in channels_last: vectorised; byte-aligned bits decoded
   8 at a time). */
static inline __attribute__((always_inline)) void image(
        const void* src, const int kind, const real* gy, real* gx, int64_t n, int64_t C, int64_t H, int64_t W,
        int64_t OH, int64_t OW, const int64_t xn, const int64_t xc, const int64_t xh, const int64_t xw,
        int64_t gn, int64_t gc, int64_t gh, int64_t gw, int64_t kH, int64_t kW, int64_t sH, int64_t sW,
        int64_t pH, int64_t pW, int64_t dH, int64_t dW) {
    real m[CHUNK], v[CHUNK];
    int64_t best[CHUNK];
    const int aligned = kind == 2 && xc == 1 && C % 8 == 0 && xn % 8 == 0 && xh % 8 == 0 && xw % 8 == 0;
    int64_t zeroed = 0;
    for (int64_t oh = 0; oh < OH; oh++) {
        int64_t h0 = oh * sH - pH;
        const int64_t h1 = h0 + (kH - 1) * dH + 1 < H ? h0 + (kH - 1) * dH + 1 : H;
        while (h0 < 0) h0 += dH;
        if (h1 > zeroed) { zero_rows(gx, n, zeroed, h1, C, W, xn, xc, xh, xw); zeroed = h1; }
        for (int64_t ow = 0; ow < OW; ow++) {
            int64_t w0 = ow * sW - pW;
            const int64_t w1 = w0 + (kW - 1) * dW + 1 < W ? w0 + (kW - 1) * dW + 1 : W;
            while (w0 < 0) w0 += dW;
            for (int64_t c0 = 0; c0 < C; c0 += CHUNK) {
                const int64_t cn = C - c0 < CHUNK ? C - c0 : CHUNK;
                const int64_t base = n * xn + c0 * xc;
                for (int64_t c = 0; c < cn; c++) {
                    m[c] = -INFINITY;
                    best[c] = base + c * xc + h0 * xh + w0 * xw;
                }
                for (int64_t h = h0; h < h1; h += dH)
                    for (int64_t w = w0; w < w1; w += dW) {
                        const int64_t o = base + h * xh + w * xw;
                        if (aligned) {
                            const uint8_t* bp = (const uint8_t*)src + (o >> 3);
                            for (int64_t c = 0; c < cn; c += 8) memcpy(v + c, BITS[bp[c >> 3]], sizeof(real) * 8);
                        } else {
                            for (int64_t c = 0; c < cn; c++) v[c] = load(src, kind, o + c * xc);
                        }
                        for (int64_t c = 0; c < cn; c++) {
                            const int take = (v[c] > m[c]) | (v[c] != v[c]);
                            m[c] = take ? v[c] : m[c];
                            best[c] = take ? o + c * xc : best[c];
                        }
                    }
                const real* g = gy + n * gn + c0 * gc + oh * gh + ow * gw;
                for (int64_t c = 0; c < cn; c++) gx[best[c]] += g[c * gc];
            }
        }
    }
    zero_rows(gx, n, zeroed, H, C, W, xn, xc, xh, xw);
}

#define VARIANT(KIND, XC) for (int64_t n = n0; n < n1; n++) \
    image(src, KIND, gy, gx, n, C, H, W, OH, OW, xn, XC, xh, xw, gn, gc, gh, gw, kH, kW, sH, sW, pH, pW, dH, dW)

/* images [n0, n1); x, gy, gx addressed by their element strides (x's into its packed memory
   order); images outermost in x and gx; a specialised loop per kind, and for channels_last */
void max_pool_backward(const void* src, int64_t kind, const real* gy, real* gx,
                       int64_t C, int64_t H, int64_t W, int64_t OH, int64_t OW,
                       int64_t xn, int64_t xc, int64_t xh, int64_t xw,
                       int64_t gn, int64_t gc, int64_t gh, int64_t gw,
                       int64_t kH, int64_t kW, int64_t sH, int64_t sW, int64_t pH, int64_t pW,
                       int64_t dH, int64_t dW, int64_t n0, int64_t n1) {
    if (xc == 1) {
        if (kind == 0) VARIANT(0, 1); else if (kind == 1) VARIANT(1, 1); else VARIANT(2, 1);
    } else {
        if (kind == 0) VARIANT(0, xc); else if (kind == 1) VARIANT(1, xc); else VARIANT(2, xc);
    }
}
"""

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_FUNCTIONS = {"max_pool_backward": [_PTR, _I64, _PTR, _PTR] + [_I64] * 23}


def _library(dtype: torch.dtype) -> Optional[ctypes.CDLL]:
    return cached_library(("max pool", dtype), lambda: f"typedef {C_REAL[dtype]} real;\n" + _SOURCE, "mp", dtype,
                          "the max-pooling backward of spikes",
                          "max pooling of spikes recomputes PyTorch's pooling in backward (slower)",
                          compiler_at_fault=False, functions=_FUNCTIONS)


def available() -> bool:
    """Whether the compiled backward can be built here (a working C compiler)."""
    return _library(torch.float32) is not None


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _geometry(pool: nn.Module) -> Optional[Tuple[int, ...]]:
    """(kH, kW, sH, sW, pH, pW, dH, dW) of a 2-D max pooling the C backward handles, else None."""
    if type(pool) is not nn.MaxPool2d or pool.return_indices:
        return None
    k = _pair(pool.kernel_size)
    return (*k, *_pair(pool.stride if pool.stride is not None else k), *_pair(pool.padding), *_pair(pool.dilation))


def _images_outermost(shape: torch.Size, stride: Tuple[int, ...]) -> bool:
    """Each image of a dense 4-D tensor a contiguous block (NCHW and channels_last)."""
    n, c, h, w = shape
    return n <= 1 or stride[0] == c * h * w


class _SpikeMaxPool(torch.autograd.Function):
    """Max pooling that keeps only its input for backward (packed when it is marked spikes) and
    finds the maxima again there, instead of keeping an int64 index per output element."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pool: nn.Module) -> torch.Tensor:  # type: ignore[override]
        ctx.pool = pool
        kept = pack_saved(x)
        if isinstance(kept, PackedSpikes):  # lossless and 8-32x smaller: kept by this op itself
            data, ctx.rest = stash(kept)
            ctx.save_for_backward(data)
        else:
            ctx.rest = None
            ctx.save_for_backward(x)  # (the memory mode's hooks decide)
        return pool(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x = unstash(ctx.saved_tensors[0], ctx.rest)
        gx = _backward_c(ctx.pool, x, grad)
        if gx is None:
            x = unpack_saved(x)
            with torch.enable_grad():
                again = x.detach().requires_grad_(True)
                y = ctx.pool(again)  # the same maxima, ties broken the same way: a deterministic kernel
            # (under create_graph=True the gradient stays differentiable with respect to ``grad``)
            (gx,) = torch.autograd.grad(y, again, grad, create_graph=torch.is_grad_enabled())
        return gx, None


def _backward_c(pool: nn.Module, x: Any, grad: torch.Tensor) -> Optional[torch.Tensor]:
    """The input gradient by the compiled loop, or None where it does not apply."""
    packed = isinstance(x, PackedSpikes)
    dtype, device, shape = x.dtype, x.device, x.shape
    stride = x.stride if packed else x.stride()
    geo = _geometry(pool)
    if (geo is None or device.type != "cpu" or dtype not in C_REAL or len(shape) != 4 or grad.dtype != dtype
            or grad.dim() != 4 or torch.is_grad_enabled() or not _images_outermost(shape, stride)):
        return None  # (under create_graph=True PyTorch's own backward keeps the graph)
    if not packed and not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return None
    lib = _library(dtype)
    if lib is None:
        return None
    src = x.data if packed else x
    kind = (2 if x.bits else 1) if packed else 0
    gx = torch.empty_strided(shape, stride, dtype=dtype, device=device)
    N, C, H, W = shape
    OH, OW = grad.shape[2:]
    run_parallel(lib.max_pool_backward, split(N, torch.get_num_threads()), lambda a, b, i: (
        src.data_ptr(), kind, grad.data_ptr(), gx.data_ptr(), C, H, W, OH, OW, *stride, *grad.stride(), *geo, a, b))
    return gx


def pool_spikes(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)`` for a max-pooling module; when autograd records and ``x`` is marked spikes, the
    backward keeps no indices (see :class:`_SpikeMaxPool`). Gradients are identical to the plain
    module's."""
    if not torch.is_grad_enabled() or not x.requires_grad or spike_kind(x) is None or _compiling():
        return pool(x)
    return _SpikeMaxPool.apply(x, pool)

