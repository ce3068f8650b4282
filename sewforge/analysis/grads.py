"""Gradient amplitude ``||dL/dS^l||`` per residual block (Figures 6-8) and the theory behind it.

``S^l`` is the input of block l. A forward pre-hook on every block puts a tensor hook on its input
(and a forward hook one on its output ``O^l``), one backward pass fills them in. Where a run of
consecutive blocks passes its input through unchanged (``O == S`` for every element) with a
constant residual branch (last BN weight 0), as zero init gives, the paper predicts the gradients:

* SEW blocks, Eq. (11): ``dL/dS^l = dL/dO^e`` for every block l of the run ending at block e;
* Spiking ResNet, Eq. (8) and Appendix A.4 (S1-S4): each block multiplies the gradient of an
  element by ``sigma'(S - V_th)``, so over the ``k = e - l + 1`` blocks from l to e,
  ``||dL/dS^l|| = ||dL/dO^e|| * sqrt(Phi a^(2k) + (1 - Phi) b^(2k))`` with ``a = sigma'(1 - V_th)``,
  ``b = sigma'(0 - V_th)`` and Phi the firing rate of S^l, if the gradient's energy is spread
  evenly over firing and silent elements. Eq. (S4) as printed has the exponent k instead of 2k
  (and an extra factor sqrt(NT)); both versions are reported.

Neither prediction counts the path through the membrane potential from one time step to the next
(a silent IF neuron keeps its potential, so ``dH[t+1]/dH[t] = 1``), which the measurement does.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .common import AnalysisError, block_names, model_blocks
from .rates import _downsamples, block_kind, identity_fraction

__all__ = ["BlockGradient", "GRAD_COLUMNS", "LOSSES", "gradient_amplitudes", "surrogate_factors",
           "add_predictions"]

LOSSES = ("ce", "sum")


@dataclass
class BlockGradient:
    block: int
    name: str
    kind: str
    downsample: bool
    grad_s: float                 #: ||dL/dS^l||, the block input's gradient (Frobenius norm over T, B, C, H, W)
    grad_o: float                 #: ||dL/dO^l||, the block output's gradient
    rate_s: float                 #: firing rate (mean) of S^l
    identity: float               #: fraction of elements with O^l == S^l (NaN for downsample blocks)
    branch_constant: bool = False  #: the residual branch's last BN has weight 0, so no gradient flows through it
    theory: str = ""              #: "Eq11" (SEW) or "S4" (no g) where the block run is an exact identity
    predicted: float = math.nan   #: the prediction (S4 with exponent 2k for Spiking ResNet)
    predicted_as_printed: float = math.nan  #: Eq. (S4) with the printed exponent k (normalised by sqrt(NT))
    predicted_elementwise: float = math.nan  #: Eq. (8) / (S1-S3) applied element by element to dL/dO^e
    predicted_membrane: float = math.nan  #: the same plus the membrane's path from step t+1 back to t

    def as_row(self) -> Dict[str, Any]:
        return asdict(self)


GRAD_COLUMNS = ("block", "name", "kind", "downsample", "grad_s", "grad_o", "rate_s", "identity", "branch_constant",
                "theory",
                "predicted", "predicted_as_printed", "predicted_elementwise", "predicted_membrane")


def surrogate_factors(neuron: nn.Module) -> Tuple[float, float]:
    """``(a, b) = (sigma'(1 - V_th), sigma'(0 - V_th))``: what one identity Spiking ResNet block
    multiplies the gradient of a firing / silent element by (Eq. 8)."""
    v_th = float(neuron.v_threshold)
    x = torch.tensor([1.0 - v_th, 0.0 - v_th], dtype=torch.float64)
    a, b = neuron.surrogate.derivative(x).tolist()
    return float(a), float(b)


def _norm(t: torch.Tensor) -> float:
    return float(t.detach().double().norm())


def gradient_amplitudes(model: nn.Module, x: torch.Tensor, target: Optional[torch.Tensor] = None,
                        loss: str = "ce") -> List[BlockGradient]:
    """One forward and backward pass; ``||dL/dS^l||`` and ``||dL/dO^l||`` of every block.

    ``loss="ce"``: cross-entropy of the logits against ``target`` (the first training step's loss);
    ``loss="sum"``: the sum of the logits (no labels needed). The model's mode is left as it is.
    Parameter gradients are left in ``.grad`` as the backward pass puts them there.
    """
    if loss not in LOSSES:
        raise AnalysisError(f"loss={loss!r}: choose one of {', '.join(LOSSES)}")
    if loss == "ce" and target is None:
        raise AnalysisError("loss='ce' needs target labels; pass target=... or use loss='sum'")
    blocks = model_blocks(model)
    names = block_names(model)
    got: Dict[int, Dict[str, Any]] = {i: {} for i in range(len(blocks))}
    handles = []

    def pre_hook(index: int):
        def hook(module: nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
            s = args[0]
            replaced = None
            if not s.requires_grad:  # raw data: make it a leaf that collects its gradient
                s = s.detach().requires_grad_(True)
                replaced = (s,) + tuple(args[1:])
            got[index]["input"] = s.detach()
            s.register_hook(lambda grad: got[index].__setitem__("grad_s", _norm(grad)))
            return replaced
        return hook

    def post_hook(index: int):
        def hook(module: nn.Module, args: Tuple[Any, ...], out: torch.Tensor) -> None:
            r = got[index]
            s = r.pop("input")
            r["rate_s"] = float(s.double().mean())
            r["identity"] = identity_fraction(s, out.detach()) if not _downsamples(module) else math.nan
            r["branch_constant"] = _branch_constant(module)
            keep = r["identity"] == 1.0  # an identity block: keep what the element-wise theory needs
            if keep:
                r["spikes"] = s
            if out.requires_grad:
                def on_grad(grad: torch.Tensor) -> None:
                    r["grad_o"] = _norm(grad)
                    if keep:
                        r["grad_o_tensor"] = grad.detach()
                out.register_hook(on_grad)
        return hook

    try:
        for i, b in enumerate(blocks):
            handles.append(b.register_forward_pre_hook(pre_hook(i)))
            handles.append(b.register_forward_hook(post_hook(i)))
        logits = model(x)
        if loss == "ce":
            value = F.cross_entropy(logits.float(), target.to(logits.device))
        else:
            value = logits.float().sum()
        model.zero_grad(set_to_none=True)
        value.backward()
    finally:
        for h in handles:
            h.remove()
    rows = []
    for i, b in enumerate(blocks):
        r = got[i]
        rows.append(BlockGradient(i, names.get(id(b), f"block{i}"), block_kind(b), _downsamples(b),
                                  r.get("grad_s", 0.0), r.get("grad_o", 0.0), r.get("rate_s", math.nan),
                                  r.get("identity", math.nan), r.get("branch_constant", False)))
    add_predictions(rows, blocks, spikes={i: got[i]["spikes"] for i in got if "spikes" in got[i]},
                    grad_out={i: got[i]["grad_o_tensor"] for i in got if "grad_o_tensor" in got[i]})
    return rows


def add_predictions(rows: List[BlockGradient], blocks: List[nn.Module],
                    spikes: Optional[Dict[int, torch.Tensor]] = None,
                    grad_out: Optional[Dict[int, torch.Tensor]] = None) -> None:
    """Fill ``theory`` / ``predicted*`` for every block inside a run of exact identity blocks.

    A run is a maximal sequence of consecutive blocks, none downsampling, each with ``O == S`` on
    every element; the prediction for block l is anchored on the gradient of the run's last output
    ``O^e``. ``spikes[l]`` (S^l) and ``grad_out[e]`` (dL/dO^e), when given, allow the element-wise
    form of Eq. (8).
    """
    spikes, grad_out = spikes or {}, grad_out or {}
    n = len(rows)
    i = 0
    while i < n:
        if not _is_identity(rows[i]):
            i += 1
            continue
        end = i
        while end + 1 < n and _is_identity(rows[end + 1]):
            end += 1
        anchor = rows[end].grad_o
        for l in range(i, end + 1):
            row, block = rows[l], blocks[l]
            k = end - l + 1
            if getattr(block, "uses_g", False):
                row.theory, row.predicted, row.predicted_elementwise = "Eq11", anchor, anchor
                continue
            a, b = surrogate_factors(block.sn_last)
            phi = row.rate_s
            row.theory = "S4"
            row.predicted = anchor * math.sqrt(phi * a ** (2 * k) + (1 - phi) * b ** (2 * k))
            row.predicted_as_printed = anchor * math.sqrt(phi * a ** k + (1 - phi) * b ** k)
            if l in spikes and end in grad_out:
                s = spikes[l].double()
                factor = torch.where(s > 0, torch.full_like(s, a), torch.full_like(s, b)) ** k
                row.predicted_elementwise = float((grad_out[end].double() * factor).norm())
        if all(l in spikes for l in range(i, end + 1)) and end in grad_out and \
                not any(getattr(blocks[l], "uses_g", False) for l in range(i, end + 1)):
            grad = grad_out[end]
            for l in range(end, i - 1, -1):
                grad = _neuron_vjp(blocks[l].sn_last, spikes[l], grad)
                rows[l].predicted_membrane = _norm(grad)
        i = end + 1


def _neuron_vjp(neuron: nn.Module, s: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient that ``neuron`` alone, fed ``s`` (what an identity block's last neuron sees),
    passes back for ``grad``: Eq. (S1)-(S2) with the neuron's own backward through time."""
    with torch.enable_grad():
        x = s.detach().to(grad.dtype).requires_grad_(True)
        (out,) = torch.autograd.grad(neuron(x), x, grad)
    return out.detach()


def _is_identity(row: BlockGradient) -> bool:
    """Where Eq. (8) / (11) hold: the block passes S through (O == S) and its residual branch is a
    constant (zero init's last BN weight 0), so the gradient takes the shortcut only."""
    return not row.downsample and row.identity == 1.0 and row.branch_constant and row.rate_s > 0


def _branch_constant(block: nn.Module) -> bool:
    bn = getattr(block, "last_bn", None)
    weight = getattr(bn, "weight", None)
    return isinstance(weight, torch.Tensor) and bool((weight.detach() == 0).all())


def theory_errors(rows: Sequence[Dict[str, Any]]) -> List[str]:
    """How far the measured amplitudes are from the predictions, where the theory applies: a header
    and one line per variant (none when no block lies inside an exact identity run)."""
    by: Dict[str, List[Dict[str, Any]]] = {}
    for r in rows:
        if r.get("theory"):
            by.setdefault(r["label"], []).append(r)
    if not by:
        return []
    lines = ["theory, on blocks inside exact identity runs (largest relative error, measured vs predicted):"]
    for label, vrows in by.items():
        parts = []
        for key, name in (("predicted", "Eq. 11" if vrows[0]["theory"] == "Eq11" else "S4 (2k)"),
                          ("predicted_as_printed", "S4 as printed"), ("predicted_elementwise", "element-wise"),
                          ("predicted_membrane", "with membrane path")):
            errs = [abs(r["grad_s"] - r[key]) / r["grad_s"] for r in vrows
                    if isinstance(r.get(key), float) and math.isfinite(r[key]) and r["grad_s"] > 0]
            if errs and not (key != "predicted" and vrows[0]["theory"] == "Eq11"):
                parts.append(f"{name} {100 * max(errs):.3g}%")
        lines.append(f"  {label} ({len(vrows)} blocks): " + ", ".join(parts))
    return lines
