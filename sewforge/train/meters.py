"""The mean firing rate of a network, measured while it tests."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from torch import nn

__all__ = ["FiringRateMeter"]


class FiringRateMeter:
    """Mean firing rate of all neuron outputs: hooks on every ``BaseNeuron``.

    While measuring, neurons that count their own spikes inside their op (``count_spikes``) do,
    and the fused SEW blocks keep running fused (the count is of A, not ``g(A, S)``); blocks whose
    last neuron cannot count run it and ``g`` separately so that a hook sees the spikes.
    """

    def __init__(self, model: nn.Module):
        from ..neurons import BaseNeuron

        self.model = model
        self.neurons = [m for m in model.modules() if isinstance(m, BaseNeuron)]
        self.spikes: Optional[torch.Tensor] = None
        self.count = 0

    def _add(self, spikes: torch.Tensor, numel: int) -> None:
        s = spikes.detach().reshape(()).to(torch.float64)
        self.spikes = s if self.spikes is None else self.spikes + s
        self.count += int(numel)

    def _count_hook(self, module: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
        spikes = getattr(module, "spike_count", None)
        if isinstance(spikes, torch.Tensor):
            self._add(spikes, module.spike_numel)

    def _hook(self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        if kwargs.get("shortcut") is not None or len(args) > 1 or not isinstance(out, torch.Tensor):
            return  # a fused g(A, S): not spikes
        self._add(out.detach().sum(dtype=torch.float64), out.numel())

    @contextlib.contextmanager
    def measuring(self) -> Iterator["FiringRateMeter"]:
        from ..blocks import spike_counting

        self.spikes, self.count = None, 0
        handles = []
        with spike_counting(self.model) as counting:
            counters = {id(m) for m in counting}
            try:
                for n in self.neurons:
                    if id(n) in counters:
                        handles.append(n.register_forward_hook(self._count_hook))
                    else:
                        handles.append(n.register_forward_hook(self._hook, with_kwargs=True))
                yield self
            finally:
                for h in handles:
                    h.remove()

    def totals(self) -> Tuple[float, float]:
        return (0.0 if self.spikes is None else float(self.spikes)), float(self.count)
