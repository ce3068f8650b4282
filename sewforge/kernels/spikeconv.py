"""Convolutions of sparse spikes on the CPU, event-driven.

A convolution whose input is spikes does most of its work on zeros: in a SEW network at rest, 2-20%
of a neuron layer's outputs fire. This kernel visits only the inputs that are not zero: the forward
adds each active input's weight rows to the outputs it reaches, and the weight gradient adds the
output gradient rows an active input reached to that input's weight rows; the gradient of the
input is the dense transposed convolution either way (the output gradient is not sparse) and is
computed by PyTorch's own convolution backward, bit for bit what the dense path gives.

Which inputs are active is one bit per (position, channel), found in one pass over the input that
also counts them: above :func:`density_limit` (20% on one thread, less on more) the dense
convolution (oneDNN) is faster and runs instead. Binary spikes keep only those bits for the
backward pass (1 bit per element, rounded up to 32 channels per position); other values (the
integers of a SEW ``ADD``) keep the input too, 1 byte per element. Where rebuilding it is cheap
(:data:`REBUILD_LIMIT`), the output itself need not be kept by anyone: it is marked
(:func:`sewforge.memory.mark_recomputable`) so that the networks' compact memory keeps how to build
it again from those bits instead of a batch norm's fp32 input, and rebuilds it bit for bit in the
backward pass (the forward kernel sums each image in a fixed order).

Each (output channels, kernel size, stride, padding, dilation, binary, dtype) is compiled once
from C (as the neuron kernels, :func:`sewforge.kernels.cpu.build_library`), so the inner loops run
over a fixed number of output channels. Small weights are visited position by position; large
ones (SEW ResNet's 256- and 512-channel layers) channel by channel over blocks of images, so that
a channel's weight rows stay in the L1 cache (:data:`CHANNEL_MAJOR_BYTES`). The weight is
transposed for the kernels (and its gradient back) by a tiled transpose in the same library.
Results equal the dense convolution's up to the order of the floating-point sums.
``SEWFORGE_SPIKE_CONV=dense`` turns the event-driven path off.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import NamedTuple, Optional, Sequence, Tuple

import torch

from ..memory import mark_recomputable, pack_saved, stash, unpack_saved, unstash
from .cpu import C_REAL, cached_library, run_parallel, split
from .ops import first_order

__all__ = ["spike_conv2d", "event_driven", "ran_event_driven", "available", "DENSITY_LIMIT", "density_limit",
           "MIN_WORK", "ConvGeometry"]

#: fraction of non-zero inputs above which the dense convolution runs, with one torch thread
#: (:func:`density_limit`: divided by the number of threads). Measured on one core (forward +
#: backward of SEW ResNet-18's and 7B-Net's 3x3 convolutions, the input gradient dense in both): at
#: 5% the event-driven path takes 0.5-0.6x oneDNN's time, at 16% 0.65-0.8x, at 25% 0.75-1.0x, at
#: 35% 0.85-1.2x. With two threads oneDNN runs 1.9-2x faster and the event-driven kernels, bound
#: by memory, 1.3x: at 3% 0.6-0.8x, at 10% 0.75-1.0x, at 13% 0.8-1.1x, at 16% 1.15-1.25x.
DENSITY_LIMIT = 0.2
#: least work worth it, in the dense convolution's multiply-adds (N x OH x OW x C_out x C x KH x
#: KW): the mask, the weight's two transposes and the calls cost about what 10 million take
#: (a 32-channel 3x3 layer on 4 x 16 x 16 outputs, 9.4 million, took 0.9-1.0x oneDNN's time)
MIN_WORK = 1 << 24
#: most multiply-adds per output element (active inputs x KH x KW / output positions) for which
#: the output is rebuilt in the backward pass instead of kept (:func:`sewforge.memory.mark_recomputable`).
#: Measured on one core: 7B-Net's layers take 7-22 (the rebuilds cost 0.5% of its step for 23%
#: less memory); SEW ResNet-18's 64- and 128-channel layers ~90 and ~180 (+5% step time, -10%
#: memory), its 256- and 512-channel layers ~370 and ~740 (+6% time for -2% memory: kept)
REBUILD_LIMIT = 256
#: weights larger than this (bytes) run channel-major: one input channel's rows at a time, over a
#: block of images whose outputs take at most :data:`OUTPUT_BLOCK_BYTES` (the L2 cache)
CHANNEL_MAJOR_BYTES = 1 << 20
OUTPUT_BLOCK_BYTES = 512 << 10

_CHOICES = ("auto", "dense")

_HEADER = """#include <stdint.h>
#include <string.h>
typedef {real} real;
#define CO {co}
#define KH {kh}
#define KW {kw}
#define SH {sh}
#define SW {sw}
#define PH {ph}
#define PW {pw}
#define DH {dh}
#define DW {dw}
#define BINARY {binary}
"""

_SOURCE = r"""
/* b[i][c][r] = a[i][r][c] for i < batch, r < rows, c < cols (the weight's layouts), in 16 x 16
   tiles; items [t0, t1) of the batch's tile rows, i * ceil(rows / 16) + row tile */
void transpose(const real* a, real* b, int64_t rows, int64_t cols, int64_t t0, int64_t t1) {
    const int64_t tiles = (rows + 15) / 16;
    for (int64_t t = t0; t < t1; t++) {
        const real* ai = a + t / tiles * rows * cols;
        real* bi = b + t / tiles * rows * cols;
        const int64_t r0 = t % tiles * 16, r1 = r0 + 16 < rows ? r0 + 16 : rows;
        for (int64_t c0 = 0; c0 < cols; c0 += 16) {
            const int64_t c1 = c0 + 16 < cols ? c0 + 16 : cols;
            for (int64_t c = c0; c < c1; c++)
                for (int64_t r = r0; r < r1; r++) bi[c * rows + r] = ai[r * cols + c];
        }
    }
}

/* mask[((n*H + h)*W + w)*words + c/32] bit c%32: x[n, c, h, w] != 0; counts the bits set, and
   stops after the image where the count passes budget (the dense convolution runs then) */
void build_mask(const real* x, uint32_t* mask, int64_t C, int64_t H, int64_t W, int64_t words,
                int64_t xn, int64_t xc, int64_t xh, int64_t xw, int64_t n0, int64_t n1, double budget,
                double* count) {
    int64_t total = 0;
    for (int64_t n = n0; n < n1 && (double)total <= budget; n++)
        for (int64_t h = 0; h < H; h++)
            for (int64_t w = 0; w < W; w++) {
                const real* xp = x + n * xn + h * xh + w * xw;
                uint32_t* m = mask + ((n * H + h) * W + w) * words;
                for (int64_t k = 0; k < words; k++) {
                    const int64_t c0 = k * 32, c1 = c0 + 32 < C ? c0 + 32 : C;
                    uint32_t bits = 0;
                    for (int64_t c = c0; c < c1; c++)
                        bits |= (uint32_t)(xp[c * xc] != 0) << (c - c0);
                    m[k] = bits;
                    total += __builtin_popcount(bits);
                }
            }
    *count = (double)total;
}

/* The outputs an input row/column reaches: o with o*S - P + k*D == i for some tap k. */
#define FOR_TAPS(body)                                                                         \
    for (int64_t kh = 0; kh < KH; kh++) {                                                      \
        const int64_t th = ih + PH - kh * DH;                                                  \
        if (th < 0 || th % SH) continue;                                                       \
        const int64_t oh = th / SH;                                                            \
        if (oh >= OH) continue;                                                                \
        for (int64_t kw = 0; kw < KW; kw++) {                                                  \
            const int64_t tw = iw + PW - kw * DW;                                              \
            if (tw < 0 || tw % SW) continue;                                                   \
            const int64_t ow = tw / SW;                                                        \
            if (ow >= OW) continue;                                                            \
            body                                                                               \
        }                                                                                      \
    }

/* The active inputs (n, c, ih, iw) of images [n0, n1) with their value v, in one of two orders.
   Position-major (nb == 0): each position's active channels; the whole weight is read per image.
   Channel-major (nb > 0): per block of nb images, per channel c, its active positions: channel
   c's weight rows stay in the L1 cache and the block's outputs in L2 (for large weights). */
#define VISIT(body)                                                                            \
    {                                                                                          \
        const real v = BINARY ? (real)1 : x[n * xn + c * xc + ih * xh + iw * xw];             \
        (void)v;                                                                               \
        body                                                                                   \
    }
#define FOR_ACTIVE(body)                                                                       \
    if (nb == 0) {                                                                             \
        for (int64_t n = n0; n < n1; n++)                                                      \
            for (int64_t ih = 0; ih < H; ih++)                                                 \
                for (int64_t iw = 0; iw < W; iw++) {                                           \
                    const uint32_t* m = mask + ((n * H + ih) * W + iw) * words;                \
                    for (int64_t k = 0; k < words; k++) {                                      \
                        uint32_t bits = m[k];                                                  \
                        while (bits) {                                                         \
                            const int64_t c = k * 32 + __builtin_ctz(bits);                    \
                            bits &= bits - 1;                                                  \
                            VISIT(body)                                                        \
                        }                                                                      \
                    }                                                                          \
                }                                                                              \
    } else {                                                                                   \
        for (int64_t b0 = n0; b0 < n1; b0 += nb)                                               \
            for (int64_t c = 0; c < C; c++) {                                                  \
                const uint32_t* mc = mask + (c >> 5);                                          \
                const uint32_t bit = 1u << (c & 31);                                           \
                for (int64_t n = b0; n < (b0 + nb < n1 ? b0 + nb : n1); n++)                   \
                    for (int64_t ih = 0; ih < H; ih++)                                         \
                        for (int64_t iw = 0; iw < W; iw++)                                     \
                            if (mc[((n * H + ih) * W + iw) * words] & bit) VISIT(body)         \
            }                                                                                  \
    }

/* channel c's weight row for tap (kh, kw): the weight's memory [CO, C*KH*KW] transposed, rows of CO;
   cs, ks: the row strides of a channel and a tap (KH*KW and 1 for a contiguous weight, 1 and C for
   a channels_last one) */
#define WROW(c) ((c) * cs + (kh * KW + kw) * ks)

/* y[n, oh, ow, :] (channels last) = bias + sum over active inputs of v * wt[WROW(c)][:] */
void forward(const real* x, const uint32_t* mask, const real* wt, const real* bias, real* y,
             int64_t C, int64_t H, int64_t W, int64_t words, int64_t OH, int64_t OW,
             int64_t xn, int64_t xc, int64_t xh, int64_t xw, int64_t n0, int64_t n1, int64_t nb,
             int64_t cs, int64_t ks) {
    for (int64_t n = n0; n < n1; n++) {
        real* yb = y + n * OH * OW * CO;
        if (bias) {
            for (int64_t p = 0; p < OH * OW; p++)
                for (int o = 0; o < CO; o++) yb[p * CO + o] = bias[o];
        } else {
            memset(yb, 0, sizeof(real) * OH * OW * CO);
        }
    }
    FOR_ACTIVE(FOR_TAPS({
        const real* wr = wt + WROW(c) * CO;
        real* yr = y + ((n * OH + oh) * OW + ow) * CO;
        if (BINARY) { for (int o = 0; o < CO; o++) yr[o] += wr[o]; }
        else { for (int o = 0; o < CO; o++) yr[o] += v * wr[o]; }
    }))
}

/* gw[WROW(c)][:] += sum over active inputs of v * gy[n, oh, ow, :] (gy channels last) */
void weight_grad(const real* x, const uint32_t* mask, const real* gy, real* gw,
                 int64_t C, int64_t H, int64_t W, int64_t words, int64_t OH, int64_t OW,
                 int64_t xn, int64_t xc, int64_t xh, int64_t xw, int64_t n0, int64_t n1, int64_t nb,
                 int64_t cs, int64_t ks) {
    FOR_ACTIVE(FOR_TAPS({
        real* ar = gw + WROW(c) * CO;
        const real* gr = gy + ((n * OH + oh) * OW + ow) * CO;
        if (BINARY) { for (int o = 0; o < CO; o++) ar[o] += gr[o]; }
        else { for (int o = 0; o < CO; o++) ar[o] += v * gr[o]; }
    }))
}
"""


class ConvGeometry(NamedTuple):
    """What a compiled kernel is specialised for (the input's channels and size stay arguments)."""
    out_channels: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    dilation: Tuple[int, int]
    binary: bool
    dtype: torch.dtype

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in zip(
            (h, w), self.padding, self.dilation, self.kernel, self.stride))  # type: ignore[return-value]


_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_FUNCTIONS = {"build_mask": [_PTR, _PTR] + [_I64] * 10 + [ctypes.c_double, _PTR], "forward": [_PTR] * 5 + [_I64] * 15,
              "weight_grad": [_PTR] * 4 + [_I64] * 15, "transpose": [_PTR, _PTR] + [_I64] * 4}


def _library(geo: ConvGeometry) -> Optional[ctypes.CDLL]:
    def source() -> str:
        return _HEADER.format(real=C_REAL[geo.dtype], co=geo.out_channels, kh=geo.kernel[0], kw=geo.kernel[1],
                              sh=geo.stride[0], sw=geo.stride[1], ph=geo.padding[0], pw=geo.padding[1],
                              dh=geo.dilation[0], dw=geo.dilation[1], binary=int(geo.binary)) + _SOURCE
    return cached_library(("spike conv", geo), source, "sc", geo.dtype, "the event-driven spike convolution",
                          "convolutions of spikes run dense (slower)", compiler_at_fault=False, functions=_FUNCTIONS)


def available() -> bool:
    """Whether the event-driven kernel can be built here (a working C compiler)."""
    geo = ConvGeometry(1, (1, 1), (1, 1), (0, 0), (1, 1), True, torch.float32)
    return _library(geo) is not None


def _pair(v: Sequence[int] | int) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def event_driven(x: torch.Tensor, weight: torch.Tensor, padding) -> bool:
    """Whether :func:`spike_conv2d` may run ``x`` event-driven: a float32/float64 CPU input
    ``[N, C, H, W]`` in channels_last layout, the weight ``[C_out, C, KH, KW]`` in the same dtype
    (one group), numeric padding, outside ``torch.compile``, and not turned off (``SEWFORGE_SPIKE_CONV=dense``)."""
    choice = os.environ.get("SEWFORGE_SPIKE_CONV", "auto").strip().lower()
    if choice not in _CHOICES:
        raise ValueError(f"SEWFORGE_SPIKE_CONV={choice!r} is not a choice; use one of {', '.join(_CHOICES)} "
                         "(auto: event-driven where it is faster, dense: never)")
    if choice == "dense":
        return False
    if (x.device.type != "cpu" or x.dim() != 4 or x.dtype not in C_REAL or weight.dtype != x.dtype
            or isinstance(padding, str) or x.numel() == 0 or weight.dim() != 4 or weight.shape[1] != x.shape[1]):
        return False
    if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return False  # (a tensor with C == 1 or H == W == 1 is both: its layout is not known)
    try:
        if torch.compiler.is_compiling():
            return False
    except AttributeError:  # pragma: no cover - old torch
        pass
    return True


def _order(geo: ConvGeometry, channels: int, oh: int, ow: int) -> int:
    """The kernels' loop order: 0 for position-major, else channel-major over blocks of this many
    images (weights over :data:`CHANNEL_MAJOR_BYTES`, whose rows would otherwise be read from
    memory again for every image)."""
    item = torch.finfo(geo.dtype).bits // 8
    if channels * geo.kernel[0] * geo.kernel[1] * geo.out_channels * item <= CHANNEL_MAJOR_BYTES:
        return 0
    return max(1, OUTPUT_BLOCK_BYTES // (oh * ow * geo.out_channels * item))


def _transpose(lib: ctypes.CDLL, a: torch.Tensor, batch: int, rows: int, cols: int, out: torch.Tensor) -> torch.Tensor:
    """``out`` viewed as ``[batch, cols, rows]`` := ``a`` viewed as ``[batch, rows, cols]`` transposed, both
    contiguous (a strided copy by PyTorch takes 2-3x as long on a 9 MB weight)."""
    assert a.is_contiguous() and out.is_contiguous() and a.numel() == out.numel() == batch * rows * cols
    run_parallel(lib.transpose, _threads_over(batch * -(-rows // 16)), lambda t0, t1, i: (
        a.data_ptr(), out.data_ptr(), rows, cols, t0, t1))
    return out


def _weight_memory(weight: torch.Tensor) -> Tuple[torch.Tensor, int, int]:
    """The weight ``[CO, C, KH, KW]`` as its memory, a contiguous ``[CO, ...]`` view (a copy for
    other layouts), and the strides of a channel and of a tap in it (:c:macro:`WROW`)."""
    _, c, kh, kw = weight.shape
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return weight.permute(0, 2, 3, 1), 1, c
    return weight.contiguous(), kh * kw, 1


def density_limit() -> float:
    """The fraction of non-zero inputs up to which a convolution runs event-driven now:
    :data:`DENSITY_LIMIT` over the number of torch threads (oneDNN's dense convolution gains from
    every thread; the event-driven kernels, bound by memory, less: measured for 1 and 2 threads,
    below that for more)."""
    return DENSITY_LIMIT / max(1, torch.get_num_threads())


def _threads_over(n: int) -> list:
    return split(n, torch.get_num_threads())


def _words(channels: int) -> int:
    """32-bit mask words per position."""
    return (channels + 31) // 32


def _mask(lib: ctypes.CDLL, x: torch.Tensor, budget: float) -> Tuple[torch.Tensor, int]:
    """The bit mask of ``x``'s non-zero values and how many there are; once more than ``budget``
    are found the pass stops (the count then exceeds ``budget``, the mask is incomplete)."""
    N, C, H, W = x.shape
    words = _words(C)
    mask = torch.empty(N * H * W * words, dtype=torch.int32)
    bounds = _threads_over(N)
    counts = (ctypes.c_double * len(bounds))()
    run_parallel(lib.build_mask, bounds, lambda a, b, i: (
        x.data_ptr(), mask.data_ptr(), C, H, W, words, *x.stride(), a, b, budget, ctypes.byref(counts, 8 * i)))
    return mask, int(sum(counts))


def spike_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride, padding,
                 dilation, *, binary: bool, dense=None) -> torch.Tensor:
    """``conv2d(x, weight, bias, stride, padding, dilation)`` of a sparse input, event-driven
    where :func:`event_driven` allows it, the dense convolution would take at least
    :data:`MIN_WORK` multiply-adds, the kernel reaches at least two outputs per input (not 1x1) and at most
    :func:`density_limit` of ``x`` is not zero; else ``dense()`` (default
    :func:`torch.nn.functional.conv2d`). ``binary``: ``x`` holds only 0 and 1 (then only where it
    is 1 is kept for the backward pass)."""
    if dense is None:
        def dense() -> torch.Tensor:
            return torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation)
    if not event_driven(x, weight, padding):
        return dense()
    geo = ConvGeometry(int(weight.shape[0]), _pair(weight.shape[2:]), _pair(stride), _pair(padding),
                       _pair(dilation), bool(binary), x.dtype)
    oh, ow = geo.output_size(*x.shape[2:])
    if oh <= 0 or ow <= 0:
        return dense()  # its error names the sizes
    work = x.shape[0] * oh * ow * weight.numel()
    if (work < MIN_WORK or (bias is not None and bias.dtype != x.dtype)
            or geo.kernel[0] * geo.kernel[1] < 2 * geo.stride[0] * geo.stride[1]):
        return dense()  # (a 1x1 convolution is one matrix product: too little to skip to pay for the mask)
    lib = _library(geo)
    if lib is None:
        return dense()
    budget = density_limit() * x.numel()
    mask, active = _mask(lib, x, budget)
    if active > budget:
        return dense()  # (the mask pass stopped early)
    recording = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                             or (bias is not None and bias.requires_grad))
    # the values of a non-binary input, kept compactly (1 byte per SEW ADD integer) by this op itself
    kept = pack_saved(x) if recording and not binary else None
    if isinstance(kept, torch.Tensor):
        kept = kept.detach()  # (not a small integer after all: kept as it is)
    y = _SpikeConv2d.apply(x, weight, bias, mask, geo, lib, kept)
    # a batch norm keeping y keeps how to build it again from the mask instead, where that is cheap
    if recording and active * geo.kernel[0] * geo.kernel[1] <= REBUILD_LIMIT * x.shape[0] * oh * ow:
        mark_recomputable(y, functools.partial(_rebuild, geo, lib, mask, kept, x.shape, weight, weight._version,
                                               bias, bias._version if bias is not None else 0))
    return y


def _forward(geo: ConvGeometry, lib: ctypes.CDLL, x: Optional[torch.Tensor], mask: torch.Tensor, shape,
             weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    N, C, H, W = shape
    OH, OW = geo.output_size(H, W)
    co, k = geo.out_channels, C * geo.kernel[0] * geo.kernel[1]
    memory, cs, ks = _weight_memory(weight.detach())
    wt = _transpose(lib, memory, 1, co, k, weight.new_empty((k, co)))  # rows of CO
    y = torch.empty((N, geo.out_channels, OH, OW), dtype=geo.dtype, memory_format=torch.channels_last)
    b = bias.detach().contiguous() if bias is not None else None
    strides = x.stride() if x is not None else (0, 0, 0, 0)
    nb = _order(geo, C, OH, OW)
    run_parallel(lib.forward, _threads_over(N), lambda a, e, i: (
        x.data_ptr() if x is not None else None, mask.data_ptr(), wt.data_ptr(),
        b.data_ptr() if b is not None else None, y.data_ptr(), C, H, W, _words(C), OH, OW, *strides, a, e, nb, cs, ks))
    return y


def _rebuild(geo, lib, mask, kept, shape, weight, weight_version, bias, bias_version) -> torch.Tensor:
    """The output of a forward again, bit for bit (each image is summed in the same order)."""
    if weight._version != weight_version or (bias is not None and bias._version != bias_version):
        raise RuntimeError("a convolution's weight or bias was modified in place between the forward and the "
                           "backward pass; its output, needed by the backward pass, cannot be rebuilt (modify "
                           "parameters after backward(), as optimizers do)")
    x = unpack_saved(kept) if kept is not None else None
    return _forward(geo, lib, x, mask, shape, weight, bias)


def ran_event_driven(y: torch.Tensor) -> bool:
    """Whether ``y`` (recorded by autograd) is the output of the event-driven path."""
    return type(y.grad_fn) is _SpikeConv2d._backward_cls


_TWICE = ("sewforge's event-driven spike convolution cannot differentiate twice through its own backward "
          "(create_graph=True, e.g. a gradient penalty); set SEWFORGE_SPIKE_CONV=dense for higher-order gradients")


class _SpikeConv2d(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, bias, mask, geo: ConvGeometry, lib, kept):  # type: ignore[override]
        y = _forward(geo, lib, x, mask, x.shape, weight, bias)
        ctx.geo, ctx.lib, ctx.shape = geo, lib, x.shape
        ctx.has_bias = bias is not None
        # binary spikes are their mask: only a SEW output's values are kept as well
        values, ctx.rest = stash(kept)
        ctx.save_for_backward(mask, weight, values)
        return y

    @staticmethod
    def backward(ctx, gy):  # type: ignore[override]
        mask, weight, values = ctx.saved_tensors
        kept = unstash(values, ctx.rest)
        x = unpack_saved(kept) if kept is not None else None
        geo, lib = ctx.geo, ctx.lib
        N, C, H, W = ctx.shape
        gy = gy.detach().contiguous(memory_format=torch.channels_last)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            # the input's values do not matter to its gradient: a stand-in of its shape holding one
            # element, and the weight in channels_last, as the dense path does for a channels_last input
            kh, kw = geo.kernel
            wcl = weight if weight.is_contiguous(memory_format=torch.channels_last) else _transpose(
                lib, weight.contiguous(), geo.out_channels, C, kh * kw, weight.new_empty((geo.out_channels, kh, kw, C))
            ).permute(0, 3, 1, 2)  # the weight in channels_last, as the dense path makes it for a channels_last input
            gx = torch.ops.aten.convolution_backward(
                gy, gy.new_empty(1).expand(ctx.shape), wcl, None,
                list(geo.stride), list(geo.padding), list(geo.dilation), False, [0, 0], 1, [True, False, False])[0]
            gx = gx.contiguous(memory_format=torch.channels_last)  # (no copy when oneDNN chose it)
        if ctx.needs_input_grad[1]:
            OH, OW = gy.shape[2:]
            bounds = _threads_over(N)
            nb = _order(geo, C, OH, OW)
            acc = torch.zeros((len(bounds), C * geo.kernel[0] * geo.kernel[1], geo.out_channels), dtype=geo.dtype)
            # accumulated in the weight's own layout (rows as in the forward), so that adding it to
            # .grad copies nothing more
            gw = torch.empty_like(weight, memory_format=torch.preserve_format)
            memory, cs, ks = _weight_memory(gw)
            run_parallel(lib.weight_grad, bounds, lambda a, e, i: (
                x.data_ptr() if x is not None else None, mask.data_ptr(), gy.data_ptr(), acc[i].data_ptr(),
                C, H, W, _words(C), OH, OW, *(x.stride() if x is not None else (0, 0, 0, 0)), a, e, nb, cs, ks))
            summed = acc[0] if len(bounds) == 1 else acc.sum(0)
            if memory.data_ptr() == gw.data_ptr():
                _transpose(lib, summed, 1, summed.shape[0], geo.out_channels, memory)
            else:  # (neither layout: a copy was made)
                gw.copy_(summed.t().reshape(memory.shape))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        gx, gw, gb = first_order(gx, gw, gb, device=gy.device, message=_TWICE)
        return gx, gw, gb, None, None, None, None

