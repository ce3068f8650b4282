"""The model, data sets, optimizer and learning-rate schedule a recipe describes, as the trainer and
the analyses build them."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from .recipe import Recipe

__all__ = ["build_datasets", "build_model", "build_optimizer", "build_scheduler"]


def build_datasets(recipe: Recipe, splits: Sequence[str] = ("train", "test")) -> Dict[str, Dataset]:
    """The recipe's datasets by role ("train", "test") through ``sewforge.data.create_dataset``."""
    from ..data import create_dataset

    d = recipe.data
    names = {"train": d.train_split, "test": d.test_split}
    out = {}
    for role in splits:
        out[role] = create_dataset(d.name, root=d.root, split=names[role], T=d.T, **d.kwargs)
    return out


def build_model(recipe: Recipe, dataset: Dataset) -> nn.Module:
    """The recipe's network through ``sewforge.models.create_model``, sized for ``dataset``."""
    from ..models import create_model
    from ..registry import MODELS

    m = recipe.model
    kwargs: Dict[str, Any] = {"T": recipe.data.T, "input_shape": tuple(dataset.input_shape), "g": m.g,
                              "neuron": m.neuron, "surrogate": m.surrogate, "zero_init": m.zero_init,
                              "v_threshold": m.v_threshold}
    if m.name in MODELS:  # a zoo model is sized for the data; a spec string says its classes (FC10)
        kwargs["num_classes"] = getattr(dataset, "num_classes", None)
    # given only where they differ from the networks' defaults, so plugin factories without them still work
    if m.memory != "compact":
        kwargs["memory"] = m.memory
    if m.channels_last:
        kwargs["channels_last"] = True
    kwargs.update(m.kwargs)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = create_model(m.name, **kwargs)
    classes = getattr(dataset, "num_classes", None)
    got = getattr(model, "num_classes", None)
    if classes is not None and got is not None and got != classes:
        raise ValueError(f"model {m.name!r} has {got} outputs but dataset {recipe.data.name!r} has {classes} "
                         "classes; make the model's last layer match (e.g. FC{classes} in a spec string)")
    return model


def build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    """The recipe's optimizer through timm's ``create_optimizer_v2``."""
    from timm.optim import create_optimizer_v2

    o = recipe.optimizer
    kwargs = dict(o.kwargs)
    if o.name.lower() == "sgd":
        kwargs.setdefault("nesterov", o.nesterov)  # timm's 'sgd' would otherwise mean Nesterov
    return create_optimizer_v2(model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               **kwargs)


def build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> Any:
    """The recipe's per-epoch learning-rate schedule through timm's ``create_scheduler_v2``."""
    from timm.scheduler import create_scheduler_v2

    s = recipe.scheduler
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=s.name, num_epochs=s.T_max or recipe.epochs, decay_epochs=s.step_size,
        decay_milestones=list(s.milestones), decay_rate=s.gamma, min_lr=s.min_lr, warmup_lr=s.warmup_lr,
        warmup_epochs=s.warmup_epochs, step_on_epochs=True)
    return scheduler
