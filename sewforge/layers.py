"""Running stateless layers on multi-step tensors.

Spiking networks carry a time axis: activations are ``[T, B, ...]``. Layers without state across
time (convolution, batch norm, pooling, dropout, flatten, linear) are applied once to all steps by
folding T into the batch, ``[T, B, ...] -> [T*B, ...]``, which is both the fastest way to run them
and what the paper does: batch-norm statistics are taken over T*B jointly (PAPER_NOTES, "DVS
networks"). Neurons are not folded; they loop over T themselves.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["SeqFold", "seq_fold"]


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
    y = module(x.flatten(0, 1))
    if not isinstance(y, torch.Tensor) or y.dim() < 1 or y.shape[0] != steps * batch:
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"seq_fold: {_name(module)} must keep the folded batch axis of size T*B = "
                         f"{steps}*{batch} = {steps * batch}, but returned {got}")
    return y.unflatten(0, (steps, batch))


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
