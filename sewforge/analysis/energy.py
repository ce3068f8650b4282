"""Synaptic operations and energy per layer, against the same network run as an ANN.

For every convolution and linear layer, on one measured forward pass:

* ``dense_macs``: multiply-accumulates of one time step for one sample, as if every input were
  non-zero (what the same network costs as an ANN, run once);
* ``input_rate``: the fraction of the layer's inputs that are non-zero (its firing rate when the
  inputs are spikes);
* ``steps``: how many times per sample the layer ran (T, or 1 for a stem that runs once on a static
  image, or for the readout that runs on the mean over T);
* ``sops``: synaptic operations per sample, ``dense_macs * input_rate * steps``: one accumulate per
  non-zero input and outgoing synapse;
* ``energy_pj``: ``sops * E_AC`` when every input is an integer (spikes, or the spike counts of SEW
  ADD blocks), else ``dense_macs * steps * E_MAC`` (real-valued inputs need multiplications: the
  encoding layer on images or frames, and the readout on the mean over T); ``ann_energy_pj``:
  ``dense_macs * E_MAC``.

The energy figures default to 45 nm CMOS (Horowitz, ISSCC 2014: 32-bit float MAC 4.6 pJ, add
0.9 pJ), as most SNN papers use. Spiking neurons, BN (folded into the convolutions at inference)
and memory traffic are not counted, as in those papers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List

import torch
from torch import nn

__all__ = ["LayerEnergy", "ENERGY_COLUMNS", "E_MAC_PJ", "E_AC_PJ", "energy_report", "totals", "plot_energy"]

#: 45 nm energy per 32-bit floating-point multiply-accumulate and accumulate, in picojoules
E_MAC_PJ = 4.6
E_AC_PJ = 0.9


@dataclass
class LayerEnergy:
    index: int
    name: str
    kind: str
    dense_macs: int
    steps: float
    input_rate: float
    integer_input: bool
    sops: float
    energy_pj: float
    ann_energy_pj: float

    def as_row(self) -> Dict[str, Any]:
        return asdict(self)


ENERGY_COLUMNS = ("index", "name", "kind", "dense_macs", "steps", "input_rate", "integer_input", "sops", "energy_pj",
                  "ann_energy_pj")


def _macs_per_row(module: nn.Module, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_out = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
        return per_out * out[0].numel()
    return module.in_features * module.out_features


@torch.no_grad()
def energy_report(model: nn.Module, x: torch.Tensor, *, e_mac: float = E_MAC_PJ, e_ac: float = E_AC_PJ
                  ) -> List[LayerEnergy]:
    """Run ``model`` on ``x`` (``[T, B, ...]`` or a static ``[B, ...]``) once and return one row per
    convolution / linear layer in the order they ran. Per-sample figures (divided by the batch)."""
    if not (e_mac > 0 and e_ac > 0 and math.isfinite(e_mac) and math.isfinite(e_ac)):
        raise ValueError(f"energies per operation must be finite and > 0, got MAC {e_mac} pJ, AC {e_ac} pJ")
    expected = len(getattr(model, "input_shape", ())) or None
    batch = x.shape[1] if expected is not None and x.dim() == expected + 2 else x.shape[0]
    seen: Dict[int, Dict[str, Any]] = {}
    order: List[int] = []
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, args: Any, out: torch.Tensor) -> None:
        inp = args[0]
        rec = seen.get(id(module))
        if rec is None:
            rec = seen[id(module)] = {"module": module, "rows": 0, "nonzero": 0, "numel": 0, "integer": True,
                                      "macs": _macs_per_row(module, out)}
            order.append(id(module))
        rows = inp.shape[0] if isinstance(module, nn.Conv2d) else inp.numel() // module.in_features
        rec["rows"] += rows
        rec["nonzero"] += int(torch.count_nonzero(inp))
        rec["numel"] += inp.numel()
        rec["integer"] = rec["integer"] and bool(torch.equal(inp, torch.round(inp)))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i, key in enumerate(order):
        r = seen[key]
        steps = r["rows"] / batch
        rate = r["nonzero"] / max(r["numel"], 1)
        sops = r["macs"] * rate * steps
        energy = sops * e_ac if r["integer"] else r["macs"] * steps * e_mac
        rows.append(LayerEnergy(i, names.get(key, "?"), type(r["module"]).__name__, int(r["macs"]), steps, rate,
                                bool(r["integer"]), sops, energy, r["macs"] * e_mac))
    return rows


def totals(rows: List[LayerEnergy]) -> Dict[str, float]:
    """Network totals per sample: dense MACs, SOPs, SNN and ANN energy (pJ) and their ratio."""
    snn = sum(r.energy_pj for r in rows)
    ann = sum(r.ann_energy_pj for r in rows)
    return {"dense_macs": float(sum(r.dense_macs for r in rows)), "sops": sum(r.sops for r in rows),
            "energy_pj": snn, "ann_energy_pj": ann, "ratio": snn / ann if ann else math.nan}


def plot_energy(rows: List[LayerEnergy], path: Any, title: str = "") -> Any:
    """Two panels: energy per layer (SNN vs ANN, log scale) and each layer's input firing rate."""
    from .common import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    xs = [r.index for r in rows]
    axes[0].bar([v - 0.2 for v in xs], [r.ann_energy_pj * 1e-6 for r in rows], width=0.4, label="ANN (MAC)")
    axes[0].bar([v + 0.2 for v in xs], [r.energy_pj * 1e-6 for r in rows], width=0.4, label="SNN (AC, MAC where real)")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("energy per sample (uJ)")
    axes[0].set_xlabel("layer")
    axes[0].legend(fontsize=8)
    axes[0].set_title("(a) energy per layer", fontsize=10)
    axes[1].plot(xs, [r.input_rate for r in rows], marker=".")
    axes[1].set_ylabel("input firing rate (non-zero fraction)")
    axes[1].set_xlabel("layer")
    axes[1].set_title("(b) input firing rate", fontsize=10)
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
