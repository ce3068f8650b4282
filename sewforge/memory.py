"""Memory-lean activations: compact storage of spike tensors saved for backward.

Neurons mark what they return (:func:`mark_spikes`): plain spikes are exactly 0/1; the fused SEW
output ``g(A, S)`` is often a small non-negative integer (ADD) but need not be (a non-binary
shortcut), so it is checked before it is stored compactly.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["mark_spikes", "spike_kind"]

_ATTR = "_sewforge_spikes"


def mark_spikes(t: torch.Tensor, binary: bool) -> torch.Tensor:
    """Mark ``t`` as a neuron's output: ``binary`` (0/1 by construction) or possibly-integer.

    Not under ``torch.compile``, whose compiled graph decides itself what it saves."""
    if torch.compiler.is_compiling():
        return t
    try:
        setattr(t, _ATTR, "binary" if binary else "integer")
    except (AttributeError, RuntimeError):  # e.g. a tensor subclass under tracing
        pass
    return t


def spike_kind(t: torch.Tensor) -> Optional[str]:
    """``"binary"``, ``"integer"`` (values to be checked) or None, also through views
    (a convolution saves ``x.flatten(0, 1)``, whose ``_base`` is the neuron's output)."""
    kind = getattr(t, _ATTR, None)
    if kind is None and t._base is not None:
        kind = getattr(t._base, _ATTR, None)
    return kind
