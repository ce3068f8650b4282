"""Firing rates of ``A^l`` and ``O^l`` per residual block (Figures 4, 5 and 11 / S2 of the paper).

``A^l`` is the output of the block's last neuron (``block.sn_last``); ``O^l`` the block output.
With g = ADD the block output is not binary and its "rate" is its mean value, as in the paper.
Neurons that count their own spikes inside their op (``count_spikes``) give A's rate while the
blocks run fused; a block whose last neuron cannot count runs with ``fuse=False`` while measuring,
so a forward hook on ``sn_last`` sees A rather than ``g(A, S)``. For Spiking ResNet and plain
blocks the last neuron produces O itself, so A = O.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import torch
from torch import nn

from ..blocks import spike_counting
from .common import block_names, model_blocks

__all__ = ["BlockRates", "RATE_COLUMNS", "firing_rates", "block_kind", "identity_fraction"]


@dataclass
class BlockRates:
    """What one block did on one batch."""

    block: int          #: index l in forward order, from 0
    name: str           #: qualified module name (``layer3.5``)
    kind: str           #: block class (``SEWBottleneck``)
    downsample: bool    #: whether the block changes shape (its shortcut is not the identity)
    rate_s: float       #: mean of the block input S^l
    rate_a: float       #: firing rate of A^l, the last neuron's spikes
    rate_o: float       #: mean of the block output O^l (a firing rate when O is binary)
    identity: float     #: fraction of elements with O^l == S^l (NaN for downsample blocks)

    def as_row(self) -> Dict[str, Any]:
        return asdict(self)


RATE_COLUMNS = ("block", "name", "kind", "downsample", "rate_s", "rate_a", "rate_o", "identity")


def block_kind(block: nn.Module) -> str:
    return type(block).__name__


def identity_fraction(s: torch.Tensor, o: torch.Tensor) -> float:
    """Share of elements where the block passed its input through unchanged (NaN if shapes differ)."""
    if s.shape != o.shape:
        return math.nan
    return float((s == o).double().mean())


@torch.no_grad()
def firing_rates(model: nn.Module, x: torch.Tensor) -> List[BlockRates]:
    """Run ``model`` on ``x`` once and return the rates of every block, in forward order.

    The model's mode is left as it is: ``model.train()`` normalises with the batch's statistics
    (the first training step at initialisation), ``model.eval()`` with the running ones (a trained
    network).
    """
    blocks = model_blocks(model)
    names = block_names(model)
    seen: Dict[int, Dict[str, Any]] = {}
    handles = []

    def on_block(index: int):
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            s = args[0]
            seen[index].update(rate_s=float(s.double().mean()), rate_o=float(out.double().mean()),
                               identity=identity_fraction(s, out) if not _downsamples(module) else math.nan)
        return hook

    def on_last_neuron(index: int, counted: bool):
        def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
            if counted:  # the neuron's own count of A (also when it returned the fused g(A, S))
                seen[index]["rate_a"] = float(module.spike_count) / max(int(module.spike_numel), 1)
            else:
                seen[index]["rate_a"] = float(out.double().mean())
        return hook

    with spike_counting(model) as counting:
        counters = {id(m) for m in counting}
        try:
            for i, b in enumerate(blocks):
                seen[i] = {}
                handles.append(b.register_forward_hook(on_block(i)))
                handles.append(b.sn_last.register_forward_hook(on_last_neuron(i, id(b.sn_last) in counters)))
            model(x)
        finally:
            for h in handles:
                h.remove()
    rows = []
    for i, b in enumerate(blocks):
        got = seen[i]
        if "rate_o" not in got or "rate_a" not in got:
            raise RuntimeError(f"block {i} ({names.get(id(b), '?')}) did not run in the forward pass; "
                               "the model's blocks() lists a block its forward does not call")
        rows.append(BlockRates(i, names.get(id(b), f"block{i}"), block_kind(b), _downsamples(b), got["rate_s"],
                               got["rate_a"], got["rate_o"], got["identity"]))
    return rows


def _downsamples(block: nn.Module) -> bool:
    flag = getattr(block, "has_downsample", None)
    if flag is not None:
        return bool(flag)
    return getattr(block, "downsample", None) is not None
