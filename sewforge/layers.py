"""Running stateless layers on multi-step tensors.

Spiking networks carry a time axis: activations are ``[T, B, ...]``. Layers without state across
time (convolution, batch norm, pooling, dropout, flatten, linear) are applied once to all steps by
folding T into the batch, ``[T, B, ...] -> [T*B, ...]``, which is both the fastest way to run them
and what the paper does: batch-norm statistics are taken over T*B jointly (PAPER_NOTES, "DVS
networks"). Neurons are not folded; they loop over T themselves.

Convolutions of the networks are :class:`Conv2d`: a ``torch.nn.Conv2d`` that runs event-driven on a
sparse spike input (see :mod:`sewforge.kernels.spikeconv`).

With ``channels_last=True`` a network keeps every step of ``[T, B, C, H, W]`` in channels_last
layout (:func:`steps_channels_last`); folding T*B is then still a view, so the folded layers see
a channels_last ``[T*B, C, H, W]``.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .kernels.spikeconv import spike_conv2d
from .kernels.spikepool import pool_spikes
from .memory import mark_spikes, spike_kind

__all__ = ["SeqFold", "seq_fold", "steps_channels_last", "repeat_steps", "SharedDropout", "FeaturePool", "Conv2d"]

#: layers whose output holds values of their input only (max pooling, reshaping): spikes stay spikes
_KEEPS_VALUES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                 nn.Identity, nn.Flatten)


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _keeps_values(module: object) -> bool:
    if isinstance(module, nn.Sequential):
        return len(module) > 0 and all(_keeps_values(m) for m in module)
    return isinstance(module, _KEEPS_VALUES) or bool(getattr(module, "keeps_values", False))


def seq_fold(module: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``module`` applied to ``x = [T, B, ...]`` with T and B folded into one batch axis.

    ``module`` is any callable that maps ``[N, ...]`` to ``[N, ...]`` without mixing state across
    time (a layer, an ``nn.Sequential`` of such layers, or a function).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"seq_fold: expected a tensor [T, B, ...], got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"seq_fold: expected a multi-step tensor [T, B, ...] with at least 2 dimensions, "
                         f"got shape {tuple(x.shape)}")
    steps, batch = x.shape[0], x.shape[1]
    if isinstance(module, _MAX_POOLS):
        y = pool_spikes(module, x.flatten(0, 1))  # keeps no int64 indices for spikes
    else:
        y = module(x.flatten(0, 1))
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != steps * batch:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"seq_fold: {_name(module)} must keep the folded batch axis of size T*B = "
                         f"{steps}*{batch} = {steps * batch}, but returned {got}")
    if _keeps_values(module):
        kind = spike_kind(x)
        if kind is not None:  # max pooling of spikes gives spikes: they may be stored compactly too
            mark_spikes(y, kind=kind)
    return y.unflatten(0, (steps, batch))


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` (same parameters, state dict and hooks) that runs event-driven when its
    input is marked spikes (:func:`sewforge.memory.spike_kind`) in channels_last layout on the CPU
    and sparse enough to gain by it (:func:`sewforge.kernels.spikeconv.spike_conv2d`); everything
    else runs the dense convolution. Results equal the dense ones up to the order of the sums."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
        kind = None
        if self.padding_mode == "zeros" and self.groups == 1 and not torch.compiler.is_compiling():
            kind = spike_kind(input)
        if kind is None:
            return super()._conv_forward(input, weight, bias)
        return spike_conv2d(input, weight, bias, self.stride, self.padding, self.dilation, binary=kind == "binary",
                            dense=lambda: super(Conv2d, self)._conv_forward(input, weight, bias))


def _is_steps_channels_last(x: torch.Tensor) -> bool:
    if x.shape[1] > 1 and x.shape[0] > 1 and x.stride(0) != x.shape[1] * x.stride(1):
        return False
    return x.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)


def steps_channels_last(x: torch.Tensor, option: str = "channels_last") -> torch.Tensor:
    """``x = [T, B, C, H, W]`` with every step in channels_last layout (one copy, or none when it
    already is); ``option`` names the setting in the error for inputs that are not 4-D per step."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{option}=True needs image steps [T, B, C, H, W] (4-D per step), got shape {got}; "
                         f"set {option}=False for this input")
    if _is_steps_channels_last(x):
        return x
    steps, batch = x.shape[0], x.shape[1]
    out = torch.empty((steps * batch, *x.shape[2:]), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last).unflatten(0, (steps, batch))
    return out.copy_(x)


def repeat_steps(x: torch.Tensor, steps: int, channels_last: bool = False) -> torch.Tensor:
    """A static ``x = [B, ...]`` repeated over ``steps``: ``[steps, B, ...]``, every step in
    channels_last layout when asked (``x`` must then be ``[B, C, H, W]``). Its gradient is the sum
    over the steps (one reduction, no full-size copy of the incoming gradient)."""
    if channels_last and x.dim() != 4:
        raise ValueError(f"channels_last=True needs image steps [B, C, H, W] (4-D per step), got shape "
                         f"{tuple(x.shape)}; set channels_last=False for this input")
    return _RepeatSteps.apply(x, steps, channels_last)


class _RepeatSteps(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: int, channels_last: bool) -> torch.Tensor:  # type: ignore[override]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            out = torch.empty((steps * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=x.device,
                              memory_format=fmt).unflatten(0, (steps, x.shape[0]))
        else:
            out = torch.empty((steps, *x.shape), dtype=x.dtype, device=x.device)
        src = x.contiguous(memory_format=fmt)
        for t in range(steps):  # each step a copy between equal layouts
            out[t].copy_(src)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad.sum(0), None, None


def _name(module: object) -> str:
    return type(module).__name__ if isinstance(module, nn.Module) else getattr(module, "__name__", repr(module))


class SeqFold(nn.Module):
    """Wraps stateless layers so they take ``[T, B, ...]``: ``SeqFold(conv, bn)(x)``.

    Several layers are run in one fold (an ``nn.Sequential``), which saves a reshape per layer.
    """

    def __init__(self, *modules: nn.Module):
        super().__init__()
        if not modules:
            raise ValueError("SeqFold needs at least one module to wrap")
        for m in modules:
            if not isinstance(m, nn.Module):
                raise TypeError(f"SeqFold wraps nn.Module layers, got {type(m).__name__}")
        self.module = modules[0] if len(modules) == 1 else nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return seq_fold(self.module, x)


class SharedDropout(nn.Module):
    """Dropout on ``[T, B, ...]`` with one mask per sample shared by all time steps, so a dropped
    unit stays silent for the whole sequence (the ``DP`` of the PLIF and SEW papers' code)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"SharedDropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class FeaturePool(nn.Module):
    """1-D pooling over the features of ``[N, F]`` (a voting layer after ``FC``)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.unsqueeze(1)).squeeze(1)
