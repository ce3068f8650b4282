"""Comparisons over several networks on one batch: the firing-rate and gradient studies.

A study expands models x element-wise functions x initialisations into :class:`Variant` s, builds
each with the same seed (so SEW ADD, AND and IAND share their weights, as the paper's "same
initialization parameters"), runs them all on the same batch and returns flat rows for CSV and
plots.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .common import (AnalysisError, Variant, build_model, dataset_batch, default_labels, model_blocks,
                     model_uses_g, random_spikes)
from .grads import gradient_amplitudes
from .rates import firing_rates

__all__ = ["ZERO_INIT_MODES", "BN_MODES", "Batch", "ModelOptions", "expand_variants", "make_batch", "run_study",
           "load_trained", "measure", "summarize", "VARIANT_COLUMNS"]

ZERO_INIT_MODES = {"off": (False,), "on": (True,), "both": (False, True)}
BN_MODES = ("train", "eval")
VARIANT_COLUMNS = ("label", "family", "model", "g", "zero_init")


@dataclass
class ModelOptions:
    """What every variant of a study shares (None = the model's own default)."""

    T: Optional[int] = None
    num_classes: Optional[int] = None
    input_shape: Optional[Tuple[int, int, int]] = None
    neuron: Optional[str] = None
    surrogate: Any = None
    v_threshold: Optional[float] = None
    seed: int = 0

    def build(self, variant: Variant) -> nn.Module:
        from ..models import is_model_name

        shape = self.input_shape
        if shape is None and not is_model_name(variant.model):
            raise AnalysisError(f"the spec string {variant.model!r} needs an input shape: pass --input CxHxW "
                                "(e.g. 2x32x32) or take the shape from a dataset with --data NAME")
        return build_model(variant, T=self.T, num_classes=self.num_classes, input_shape=shape, neuron=self.neuron,
                           surrogate=self.surrogate, v_threshold=self.v_threshold, seed=self.seed)


@dataclass
class Batch:
    """The input every variant sees, its labels, and a line saying where it came from."""

    x: torch.Tensor
    y: Optional[torch.Tensor]  #: None for random input: uniform random labels per model's class count
    description: str
    num_classes: Optional[int] = None
    input_shape: Optional[Tuple[int, int, int]] = None
    seed: int = 0

    def labels(self, num_classes: Optional[int]) -> torch.Tensor:
        if self.y is not None:
            return self.y
        return default_labels(self.x.shape[1], num_classes or 2, self.seed)


def make_batch(data: str, *, T: int, batch: int, input_shape: Optional[Tuple[int, int, int]],
               num_classes: Optional[int], p: float = 0.5, seed: int = 0, split: str = "train",
               root: Optional[str] = None, dataset_kwargs: Optional[Dict[str, Any]] = None) -> Batch:
    """Random Bernoulli(p) spikes (``data="random"``), or ``batch`` samples of a registered dataset."""
    if data == "random":
        if input_shape is None:
            raise AnalysisError("random input needs its shape: pass --input CxHxW (e.g. 3x64x64)")
        x = random_spikes(input_shape, T=T, batch=batch, p=p, seed=seed)
        return Batch(x, None, f"random Bernoulli({p:g}) spikes [{T}, {batch}, {'x'.join(map(str, input_shape))}]",
                     num_classes, input_shape, seed)
    kwargs = dict(dataset_kwargs or {})
    x, y, dataset = dataset_batch(data, T=T, batch=batch, split=split, seed=seed, root=root, **kwargs)
    shape = tuple(dataset.input_shape)
    if input_shape is not None and tuple(input_shape) != shape:
        raise AnalysisError(f"--input {'x'.join(map(str, input_shape))} does not match dataset {data!r}, whose "
                            f"samples are {'x'.join(map(str, shape))}; drop --input or change the dataset's size")
    return Batch(x, y, f"{len(y)} samples of {data!r} ({split}), shape {list(x.shape)}",
                 int(dataset.num_classes), shape, seed)  # type: ignore[arg-type]


def expand_variants(models: Sequence[str], gs: Sequence[Optional[str]], zero_init: str,
                    options: ModelOptions) -> List[Variant]:
    """models x g x init. ``g`` applies to models with SEW blocks only; others get one variant per
    init. A model built with its default g is labelled with the g its blocks actually use."""
    if zero_init not in ZERO_INIT_MODES:
        raise AnalysisError(f"zero-init mode {zero_init!r}: choose one of {', '.join(ZERO_INIT_MODES)}")
    out: List[Variant] = []
    for model in models:
        probe = options.build(Variant(model))
        with_g = model_uses_g(probe)
        own_g = next((b.g.name for b in model_blocks(probe) if getattr(b, "uses_g", False)), None)
        del probe
        for g in (gs or [None]) if with_g else [None]:
            for zi in ZERO_INIT_MODES[zero_init]:
                out.append(Variant(model, (g.upper() if g else own_g) if with_g else None, zi))
    return out


def run_study(kind: str, variants: Sequence[Variant], batch: Batch, options: ModelOptions, *, bn: str = "train",
              loss: str = "ce", log: Callable[[str], None] = print) -> List[Dict[str, Any]]:
    """Rates (``kind="rates"``) or gradients (``kind="grads"``) of every variant on ``batch``."""
    if bn not in BN_MODES:
        raise AnalysisError(f"batch-norm mode {bn!r}: choose train (batch statistics) or eval (running statistics)")
    rows: List[Dict[str, Any]] = []
    for v in variants:
        t0 = time.perf_counter()
        model = options.build(v)
        built = time.perf_counter() - t0
        model.train(bn == "train")
        rows += measure(kind, model, v, batch, loss)
        log(f"  {v.label}: {len(model_blocks(model))} blocks, built in {built:.1f}s, "
            f"measured in {time.perf_counter() - t0 - built:.1f}s")
    return rows


def measure(kind: str, model: nn.Module, v: Variant, batch: Batch, loss: str = "ce") -> List[Dict[str, Any]]:
    """Rates or gradients of one built model, as rows labelled with its variant."""
    head = {"label": v.label, "family": v.family, "model": v.model, "g": v.g or "", "zero_init": v.zero_init}
    if kind == "rates":
        found = firing_rates(model, batch.x)
    elif kind == "grads":
        classes = getattr(model, "num_classes", None)
        y = batch.labels(classes)
        if classes is not None and int(y.max()) >= classes:
            raise AnalysisError(f"labels go up to {int(y.max())} but {v.model!r} has {classes} outputs; "
                                "pass --num-classes or use --loss sum")
        found = gradient_amplitudes(model, batch.x, y, loss=loss)
    else:
        raise AnalysisError(f"unknown study {kind!r}")
    return [{**head, **r.as_row()} for r in found]


def load_trained(checkpoint: str) -> Tuple[nn.Module, Any, Any]:
    """A trained model, its recipe and its test split, from a training checkpoint (``best.pt``,
    ``last.pt`` or a run folder), built through the trainer's own model and data code."""
    from ..train import load_checkpoint, recipe_from_dict
    from ..train.factories import build_datasets, build_model as build_trained

    state = load_checkpoint(checkpoint)
    if not isinstance(state.get("recipe"), dict) or "model" not in state:
        raise AnalysisError(f"checkpoint {checkpoint!r} holds no recipe and model weights; pass a checkpoint "
                            "written by `sewforge train` (best.pt / last.pt)")
    recipe = recipe_from_dict(state["recipe"], source=f"{checkpoint} (recipe)")
    test_set = build_datasets(recipe, ("test",))["test"]
    model = build_trained(recipe, test_set)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise AnalysisError(f"the weights in {checkpoint!r} do not fit model {recipe.model.name!r}: {exc}") from None
    return model, recipe, test_set


def summarize(rows: Sequence[Dict[str, Any]], key: str) -> List[str]:
    """One line per variant: first, last, smallest and largest value of ``key`` over the blocks."""
    lines = []
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["label"], []).append(r)
    width = max([len(k) for k in by] + [8])
    for label, vrows in by.items():
        vals = [float(r[key]) for r in vrows]
        finite = [x for x in vals if math.isfinite(x)]
        lines.append(f"  {label:<{width}}  first {vals[0]:.4g}  last {vals[-1]:.4g}  "
                     f"min {min(finite):.4g}  max {max(finite):.4g}" if finite else f"  {label}: no values")
    return lines
