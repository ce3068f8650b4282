"""Finding NaN and infinite values before they are trained on, tested or saved: the data set index
of a bad sample, a bad loss, a bad parameter or batch-norm statistic.  Every process stops
together, naming the same culprit."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import DistContext, all_gather_objects
from .errors import NonFiniteError, NonFiniteLossError
from .recipe import Recipe

__all__ = ["check_training_step", "check_test_samples", "first_non_finite"]


def _first_bad_sample(x: torch.Tensor) -> int:
    """Position in the batch of the first sample of ``x`` (time-major events or images) that holds a
    NaN or infinite value."""
    batch_major = x.transpose(0, 1) if x.dim() == 5 else x
    ok = torch.isfinite(batch_major).reshape(batch_major.shape[0], -1).all(1)
    return int((~ok).nonzero()[0, 0])


def _dataset_index(loader: DataLoader, step: int, position: int) -> int:
    """The data set index of sample ``position`` of batch ``step`` (1-based): the sampler's order
    for this epoch is a function of (seed, epoch), so it is drawn again."""
    order = list(iter(loader.sampler)) if loader.sampler is not None else []
    k = (step - 1) * int(loader.batch_size or 1) + position
    return int(order[k]) if k < len(order) else k


def check_training_step(ctx: DistContext, loader: DataLoader, recipe: Recipe, x: torch.Tensor,
                        inputs_finite: torch.Tensor, loss: torch.Tensor, *, epoch: int, step: int) -> None:
    """Raise :class:`NonFiniteError` naming the sample (or :class:`NonFiniteLossError`, the loss)
    when batch ``x`` or its ``loss`` is not finite; one device sync, and one collective when
    distributed (every rank must stop together, or the others would wait forever)."""
    finite = torch.isfinite(loss) & inputs_finite
    if ctx.distributed:
        flag = finite.to(torch.float32)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        finite = flag > 0
    if bool(finite):
        return
    where = f"epoch {epoch + 1}, step {step}/{len(loader)}"
    found: Optional[Tuple[str, Any]] = None
    if not bool(inputs_finite):
        found = ("sample", _dataset_index(loader, step, _first_bad_sample(x)))
    elif not bool(torch.isfinite(loss)):
        found = ("loss", float(loss))
    if ctx.distributed:  # every rank names the same culprit: the lowest bad sample, else a loss
        seen = [f for f in all_gather_objects(ctx, found) if f is not None]
        samples = [f[1] for f in seen if f[0] == "sample"]
        found = ("sample", min(samples)) if samples else (seen[0] if seen else None)
    if found is not None and found[0] == "sample":
        raise NonFiniteError(f"training sample {found[1]} of data {recipe.data.name!r} (split "
                             f"{recipe.data.train_split!r}) holds NaN or infinite values ({where}); "
                             "fix or remove that sample")
    if found is not None:
        raise NonFiniteLossError(f"training loss is {found[1]} at {where}")
    raise NonFiniteError(f"a NaN or infinite sample or loss was met at {where}")


def check_test_samples(ctx: DistContext, loader: DataLoader, recipe: Recipe, first_bad: int) -> None:
    """Raise :class:`NonFiniteError` when a test sample held NaN or infinite values: ``first_bad`` is
    the first such sample by its place in this process's order (-1: none); every rank names the
    lowest bad data set index."""
    bad_index = _dataset_index(loader, 1, first_bad) if first_bad >= 0 else None
    if ctx.distributed:
        found = [i for i in all_gather_objects(ctx, bad_index) if i is not None]
        bad_index = min(found) if found else None
    if bad_index is not None:
        raise NonFiniteError(f"test sample {bad_index} of data {recipe.data.name!r} (split {recipe.data.test_split!r}) "
                             "holds NaN or infinite values")


def first_non_finite(model: nn.Module) -> Optional[str]:
    """Name of the first parameter or floating-point buffer (batch-norm statistics) of ``model``
    that holds a NaN or infinite value, or None; one device sync when all are finite."""
    tensors = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
               if t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(flags.all()):
        return None
    return tensors[int((~flags).nonzero()[0, 0])][0]
