"""Figures in the layout of the paper's: rates like Figures 4, 5 and 11, gradients like Figures 6-8,
and training loss against depth for the degradation study (Table 2 / Figure 3)."""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

from .common import pyplot, save_figure

__all__ = ["plot_rates", "plot_grads", "plot_degradation"]


def _group(rows: Sequence[Dict[str, Any]], key: str) -> "OrderedDict[str, List[Dict[str, Any]]]":
    out: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for r in rows:
        out.setdefault(str(r[key]), []).append(r)
    return out


def _mark_downsample(ax: Any, rows: Sequence[Dict[str, Any]]) -> None:
    """Dotted vertical lines at downsample blocks (Fig. 5-8): between them lie the identity areas."""
    for r in rows:
        if r["downsample"]:
            ax.axvline(r["block"], color="0.6", linestyle=":", linewidth=0.8, zorder=0)


def plot_rates(rows: Sequence[Dict[str, Any]], path: Union[str, Path], title: str = "") -> Path:
    """Two panels, (a) firing rate of O^l and (b) of A^l per block; one curve per network, with the
    downsample blocks marked by a triangle down as in Figure 4."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    variants = _group(rows, "label")
    for label, vrows in variants.items():
        xs = [r["block"] for r in vrows]
        for ax, key in zip(axes, ("rate_o", "rate_a")):
            line, = ax.plot(xs, [r[key] for r in vrows], marker=".", markersize=4, linewidth=1.2, label=label)
            down = [r for r in vrows if r["downsample"]]
            ax.plot([r["block"] for r in down], [r[key] for r in down], linestyle="none", marker="v",
                    markersize=6, color=line.get_color())
    first = next(iter(variants.values()))
    for ax, what in zip(axes, ("(a) firing rate of the output $O^l$", "(b) firing rate of $A^l$ (last neuron)")):
        _mark_downsample(ax, first)
        ax.set_xlabel("block index $l$")
        ax.set_ylabel("firing rate (mean)")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_grads(rows: Sequence[Dict[str, Any]], path: Union[str, Path], title: str = "",
               theory: bool = False) -> Path:
    """One panel per network family (as Figures 6-8), the default and the zero-init curve of
    ``||dL/dS^l||`` on a log scale. Exact zeros cannot be drawn on a log axis: they are left out and
    counted in the legend. ``theory=True`` adds the Appendix A.4 predictions where they apply."""
    plt = pyplot()
    families = _group(rows, "family")
    n = len(families)
    cols = min(n, 4)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 3.2 * nrows), squeeze=False)
    for ax, (family, frows) in zip(axes.flat, families.items()):
        for label, vrows in _group(frows, "label").items():
            xs = [r["block"] for r in vrows]
            ys = [r["grad_s"] if r["grad_s"] > 0 else math.nan for r in vrows]
            zeros = sum(1 for r in vrows if not r["grad_s"] > 0)
            name = "zero init" if vrows[0]["zero_init"] else "default init"
            if zeros:
                name += f" (0 at {zeros} blocks)"
            line, = ax.plot(xs, ys, marker=".", markersize=3, linewidth=1.2, label=name)
            if theory:
                for key, style, what in (("predicted_as_printed", "--", "Eq. S4 as printed"),
                                         ("predicted", "-.", "Eq. S4, exponent 2k"),
                                         ("predicted_membrane", ":", "S1-S3 + membrane path")):
                    # NaN between the identity runs breaks the line there
                    ys_theory = [r[key] if _finite(r.get(key)) else math.nan for r in vrows]
                    if any(not math.isnan(y) for y in ys_theory) and \
                            not any(r.get("theory") == "Eq11" for r in vrows):
                        ax.plot(xs, ys_theory, linestyle=style, linewidth=0.9, color=line.get_color(),
                                label=f"{what} ({'zero' if vrows[0]['zero_init'] else 'default'})")
        _mark_downsample(ax, frows)
        ax.set_yscale("log")
        ax.set_title(family, fontsize=9)
        ax.set_xlabel("block index $l$")
        ax.set_ylabel(r"$\|\partial L / \partial S^l\|$")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="best")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def plot_degradation(rows: Sequence[Dict[str, Any]], path: Union[str, Path], title: str = "") -> Path:
    """Final training loss and test accuracy against the number of blocks, one curve per family
    (the mean over seeds, each seed a dot): degradation shows as a loss that rises with depth."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for family, frows in _group(rows, "family").items():
        depths = sorted({r["depth"] for r in frows})
        for ax, key in zip(axes, ("train_loss", "test_acc")):
            by_depth = [[r[key] for r in frows if r["depth"] == d] for d in depths]
            mean = [sum(v) / len(v) for v in by_depth]
            line, = ax.plot(depths, mean, marker="o", label=family)
            if any(len(v) > 1 for v in by_depth):  # one seed per dot, the line through their mean
                ax.plot([d for d, v in zip(depths, by_depth) for _ in v], [x for v in by_depth for x in v],
                        linestyle="none", marker=".", alpha=0.5, color=line.get_color())
    depths = sorted({r["depth"] for r in rows})
    for ax, what in zip(axes, ("final training loss", "final test accuracy (%)")):
        if len(depths) > 2 and depths[-1] / depths[0] >= 4:  # 1 2 4 8 ...: even spacing on a log axis
            ax.set_xscale("log", base=2)
        ax.set_xticks(depths)
        ax.set_xticklabels([str(d) for d in depths])
        ax.set_xlabel("residual blocks")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
