"""Each analysis end to end, as ``sewforge analyze`` runs it: build the networks (from model names or
trained checkpoints), run the instrument, write its CSV and PNG into ``out``, and return a
:class:`Report` with the rows, the files and the lines that sum up what was found.

    from sewforge.analysis import StudyOptions, analyze_rates
    report = analyze_rates(StudyOptions(models=["sew_resnet18"], input_shape=(3, 64, 64)), out="runs/rates")
    print("\\n".join(report.lines))
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from torch import nn

from .common import AnalysisError, Variant, make_surrogate, model_blocks, write_csv
from .energy import E_AC_PJ, E_MAC_PJ
from .study import ModelOptions, expand_variants, load_trained, make_batch, measure, run_study, summarize

__all__ = ["StudyOptions", "Report", "analyze_rates", "analyze_grads", "analyze_energy", "analyze_degradation"]

Log = Callable[[str], None]


@dataclass
class StudyOptions:
    """The networks a rates or grads analysis compares and the batch they see; None means the
    model's own (for checkpoints: the run's own T, data, split and batch-norm mode "eval")."""

    models: Sequence[str] = ()  # zoo names or spec strings, or:
    checkpoints: Sequence[str] = ()  # trained networks (best.pt, last.pt, run folders): model and data from the recipe
    input_shape: Optional[Tuple[int, int, int]] = None
    T: Optional[int] = None  # 4 for models
    batch: int = 4
    data: Optional[str] = None  # 'random' (Bernoulli(p) spikes; the default for models) or a dataset name
    p: float = 0.5
    split: Optional[str] = None  # train for models, the test split for checkpoints
    root: Optional[str] = None
    dataset_kwargs: Dict[str, Any] = field(default_factory=dict)
    gs: Optional[Sequence[str]] = None  # element-wise functions to compare (models with SEW blocks)
    zero_init: Optional[str] = None  # off, on or both
    zero_init_default: str = "off"
    neuron: Optional[str] = None
    surrogate: Optional[str] = None
    alpha: Optional[float] = None
    v_threshold: Optional[float] = None
    num_classes: Optional[int] = None
    bn: Optional[str] = None  # train (batch statistics; the default for models) or eval
    seed: int = 0

    def setting(self) -> str:
        """The neuron settings given, for a figure's title (``IF, V_th=0.5, ATan alpha=2``)."""
        parts = []
        if self.neuron:
            parts.append(self.neuron)
        if self.v_threshold is not None:
            parts.append(f"V_th={self.v_threshold:g}")
        if self.surrogate or self.alpha is not None:
            parts.append(f"{self.surrogate or 'ATan'}" + (f" alpha={self.alpha:g}" if self.alpha is not None else ""))
        return ", ".join(parts)


@dataclass
class Report:
    """What an analysis found and wrote."""

    rows: List[Dict[str, Any]]
    csv: Path
    png: Path
    lines: List[str]  # the summary, one line each
    seconds: float


def _run_name(path: str) -> str:
    """``runs/gesture-and/best.pt`` -> ``gesture-and/best.pt``; a run folder -> its name."""
    p = Path(path)
    return p.name if p.is_dir() or not p.parent.name else f"{p.parent.name}/{p.name}"


def _study_checkpoints(kind: str, o: StudyOptions, loss: str, log: Log) -> Tuple[List[Dict[str, Any]], str]:
    if o.models:
        raise AnalysisError("pass either MODEL names or --checkpoint (whose recipe names the model), not both")
    ignored = [flag for flag, value in (("--g", o.gs), ("--zero-init", o.zero_init), ("--neuron", o.neuron),
                                        ("--surrogate", o.surrogate), ("--alpha", o.alpha),
                                        ("--v-threshold", o.v_threshold), ("--num-classes", o.num_classes))
               if value is not None]
    if ignored:
        raise AnalysisError(f"{', '.join(ignored)}: a checkpoint's model is fixed by its recipe and weights; "
                            "drop these options")
    rows: List[Dict[str, Any]] = []
    described: List[str] = []
    for path in o.checkpoints:
        model, recipe, test_set = load_trained(path)
        data = o.data or recipe.data.name
        kwargs = dict(recipe.data.kwargs) if data == recipe.data.name and not o.dataset_kwargs else o.dataset_kwargs
        batch = make_batch(data, T=o.T or recipe.data.T, batch=o.batch,
                           input_shape=o.input_shape or tuple(test_set.input_shape),
                           num_classes=getattr(model, "num_classes", None), p=o.p, seed=o.seed,
                           split=o.split or recipe.data.test_split, root=o.root or recipe.data.root,
                           dataset_kwargs=kwargs)
        model.train((o.bn or "eval") == "train")
        blocks = model_blocks(model)
        g = next((b.g.name for b in blocks if getattr(b, "uses_g", False)), None)
        variant = Variant(_run_name(path), g, bool(recipe.model.zero_init))
        t0 = time.perf_counter()
        rows += measure(kind, model, variant, batch, loss)
        log(f"  {variant.label}: {recipe.model.name}, {len(blocks)} blocks, measured in "
            f"{time.perf_counter() - t0:.1f}s on {batch.description}")
        if batch.description not in described:
            described.append(batch.description)
    return rows, f"trained networks on {'; '.join(described)}; BN {o.bn or 'eval'}"


def _study_models(kind: str, o: StudyOptions, surrogate: Any, loss: str, log: Log) -> Tuple[List[Dict[str, Any]], str]:
    if not o.models:
        raise AnalysisError("name at least one MODEL (e.g. sew_resnet18, or a spec string), or pass --checkpoint")
    data = o.data or "random"
    T = o.T or 4
    batch = make_batch(data, T=T, batch=o.batch, input_shape=o.input_shape, num_classes=o.num_classes, p=o.p,
                       seed=o.seed, split=o.split or "train", root=o.root, dataset_kwargs=o.dataset_kwargs)
    options = ModelOptions(T=T, num_classes=o.num_classes or batch.num_classes,
                           input_shape=o.input_shape or batch.input_shape, neuron=o.neuron,
                           surrogate=surrogate, v_threshold=o.v_threshold, seed=o.seed)
    if data == "random" and o.input_shape is None:
        raise AnalysisError("random input needs its shape: pass --input CxHxW (e.g. 3x64x64)")
    variants = expand_variants(o.models, o.gs or [], o.zero_init or o.zero_init_default, options)
    bn = o.bn or "train"
    log(f"{kind}: {len(variants)} networks on {batch.description}; BN {bn}")
    rows = run_study(kind, variants, batch, options, bn=bn, loss=loss, log=log)
    return rows, f"{batch.description}; BN {bn}"


def _study(kind: str, o: StudyOptions, loss: str, log: Log) -> Tuple[List[Dict[str, Any]], str]:
    """(rows, description of the input) for rates or grads, from models or from checkpoints."""
    surrogate = make_surrogate(o.surrogate, o.alpha)  # a bad surrogate is an error before anything is loaded
    if o.checkpoints:
        return _study_checkpoints(kind, o, loss, log)
    return _study_models(kind, o, surrogate, loss, log)


def analyze_rates(options: StudyOptions, *, out: Union[str, Path] = "runs/analysis/rates",
                  title: Optional[str] = None, log: Log = print) -> Report:
    """Firing rates of A^l and O^l per block (Figures 4, 5, 11): rates.csv and rates.png in ``out``."""
    from .plots import plot_rates
    from .rates import RATE_COLUMNS
    from .study import VARIANT_COLUMNS

    t0 = time.perf_counter()
    rows, description = _study("rates", options, "ce", log)
    out = Path(out)
    csv_path = write_csv(out / "rates.csv", rows, VARIANT_COLUMNS + RATE_COLUMNS)
    title = title or " ".join(filter(None, ["firing rates", options.setting()])) + f"\n{description}"
    png_path = plot_rates(rows, out / "rates.png", title=title)
    lines = (["firing rate of A^l per block (rate_a):"] + summarize(rows, "rate_a")
             + ["firing rate (mean) of O^l per block (rate_o):"] + summarize(rows, "rate_o"))
    return Report(rows, csv_path, png_path, lines, time.perf_counter() - t0)


def analyze_grads(options: StudyOptions, *, out: Union[str, Path] = "runs/analysis/grads", loss: str = "ce",
                  theory: bool = False, title: Optional[str] = None, log: Log = print) -> Report:
    """Gradient amplitude ||dL/dS^l|| per block (Figures 6-8), with how far it is from the predictions
    of Eq. (11) and Appendix A.4 (drawn when ``theory``): grads.csv and grads.png in ``out``."""
    from .grads import GRAD_COLUMNS, theory_errors
    from .plots import plot_grads
    from .study import VARIANT_COLUMNS

    t0 = time.perf_counter()
    rows, description = _study("grads", options, loss, log)
    out = Path(out)
    for r in rows:
        r["v_threshold"], r["alpha"] = options.v_threshold, options.alpha
    csv_path = write_csv(out / "grads.csv", rows, VARIANT_COLUMNS + ("v_threshold", "alpha") + GRAD_COLUMNS)
    setting = options.setting()
    title = title or f"gradient amplitude ||dL/dS^l||{' (' + setting + ')' if setting else ''}, " \
                     f"loss {loss}\n{description}"
    png_path = plot_grads(rows, out / "grads.png", title=title, theory=theory)
    lines = ["||dL/dS^l|| per block (first = block 0, last = the deepest block):"] + summarize(rows, "grad_s")
    return Report(rows, csv_path, png_path, lines + theory_errors(rows), time.perf_counter() - t0)


def analyze_energy(model: Union[str, nn.Module], *, out: Union[str, Path] = "runs/analysis/energy",
                   label: Optional[str] = None, T: Optional[int] = None,
                   input_shape: Optional[Tuple[int, int, int]] = None, batch: int = 2, data: str = "random",
                   p: float = 0.5, split: str = "test", root: Optional[str] = None,
                   dataset_kwargs: Optional[Dict[str, Any]] = None, e_mac: float = E_MAC_PJ,
                   e_ac: float = E_AC_PJ, seed: int = 0, title: Optional[str] = None,
                   **model_kwargs: Any) -> Report:
    """Synaptic operations and energy per layer against the same network as an ANN: energy.csv and
    energy.png in ``out``.  ``model``: a zoo name or spec string (built with ``model_kwargs``: g,
    neuron, num_classes; the weights drawn from ``seed``) or a built network (such as a converted
    checkpoint, named by ``label``)."""
    import torch

    from ..models import create_model
    from .energy import ENERGY_COLUMNS, energy_report, plot_energy, totals

    t0 = time.perf_counter()
    if isinstance(model, str):
        torch.manual_seed(seed)  # the weights
        label = label or model
        kwargs = dict(model_kwargs, T=T, **({"input_shape": input_shape} if input_shape is not None else {}))
        model = create_model(model, **kwargs)
    label = label or type(model).__name__
    model.eval()
    T = T or getattr(model, "T", None) or 4
    shape = input_shape or tuple(getattr(model, "input_shape", ()) or ()) or None
    measured = make_batch(data, T=T, batch=batch, input_shape=shape, num_classes=None, p=p, seed=seed, split=split,
                          root=root, dataset_kwargs=dict(dataset_kwargs or {}))
    layers = energy_report(model, measured.x, e_mac=e_mac, e_ac=e_ac)
    out = Path(out)
    csv_path = write_csv(out / "energy.csv", [r.as_row() for r in layers], ENERGY_COLUMNS)
    tot = totals(layers)
    title = title or (f"{label}: {tot['energy_pj'] * 1e-6:.3g} uJ as SNN vs {tot['ann_energy_pj'] * 1e-6:.3g} uJ "
                      f"as ANN per sample (MAC {e_mac:g} pJ, AC {e_ac:g} pJ)\n{measured.description}")
    png_path = plot_energy(layers, out / "energy.png", title=title)
    lines = [f"{label} on {measured.description}: {len(layers)} layers",
             f"  dense MACs per step {tot['dense_macs']:.4g}, synaptic operations {tot['sops']:.4g} per sample",
             f"  energy per sample: SNN {tot['energy_pj'] * 1e-6:.4g} uJ, ANN {tot['ann_energy_pj'] * 1e-6:.4g} uJ "
             f"(ratio {tot['ratio']:.3g})"]
    return Report([r.as_row() for r in layers], csv_path, png_path, lines, time.perf_counter() - t0)


def analyze_degradation(families: Sequence[str] = ("spiking", "sew"), depths: Sequence[int] = (1, 2, 4, 8), *,
                        out: Union[str, Path] = "runs/analysis/degradation", seeds: Sequence[int] = (2020,),
                        zero_init: str = "paper", overwrite: bool = False, epochs: int = 4, T: int = 4,
                        neuron: str = "IF", num_train: int = 256, title: Optional[str] = None, log: Log = print,
                        **recipe_kwargs: Any) -> Report:
    """Final training loss against depth (Table 2's degradation), each (family, depth, seed) trained
    for the same budget (``recipe_kwargs``: batch_size, lr, width, g, num_test, size, device):
    degradation.csv and degradation.png in ``out``, each run's folder under ``out/runs``."""
    from .degradation import DEGRADATION_COLUMNS, degradation_study, loss_by_depth
    from .plots import plot_degradation

    t0 = time.perf_counter()
    runs = degradation_study(families, depths, seeds=seeds, out=str(out), zero_init=zero_init, overwrite=overwrite,
                             log=log, epochs=epochs, T=T, neuron=neuron, num_train=num_train, **recipe_kwargs)
    rows = [r.as_row() for r in runs]
    out = Path(out)
    csv_path = write_csv(out / "degradation.csv", rows, DEGRADATION_COLUMNS)
    title = title or (f"degradation: {epochs} epochs on synthetic ({num_train} samples, T={T}), {neuron}, "
                      f"zero init: {zero_init}")
    png_path = plot_degradation(rows, out / "degradation.png", title=title)
    return Report(rows, csv_path, png_path, loss_by_depth(runs, families, depths, seeds), time.perf_counter() - t0)
