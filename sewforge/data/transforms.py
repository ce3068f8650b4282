"""Transforms of batches on their way into a network: layout (``time_major``) and the random
temporal delete of the paper's training (section 4.2)."""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["time_major", "temporal_delete"]


def time_major(x: torch.Tensor) -> torch.Tensor:
    """A batch of event samples ``[B, T, ...]`` as the ``[T, B, ...]`` the networks take; static
    images ``[B, C, H, W]`` pass unchanged (the model repeats them over its T steps)."""
    return x.transpose(0, 1) if x.dim() == 5 else x


def temporal_delete(x: torch.Tensor, keep: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random temporal delete: ``keep`` of the T frames of ``x = [T, B, ...]``, drawn without
    replacement, in their original order, the same frames for the whole batch."""
    steps = x.shape[0]
    if keep >= steps:
        return x
    index = torch.randperm(steps, generator=generator)[:keep].sort().values
    return x.index_select(0, index.to(x.device))
