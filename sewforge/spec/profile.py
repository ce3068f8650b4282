"""Layer tables for any model: output shapes, parameters and dense MACs per time step, measured
with forward hooks during one forward pass of a single sample and a single time step.

The pass runs on the meta device (shapes only: no memory, no arithmetic), so its cost does not
grow with the model's MACs (a ResNet-152 at 224x224: about a second, against tens of seconds
for a real pass on two CPU cores); the first meta pass of a process pays a few seconds of
PyTorch start-up. A model whose forward cannot run on meta tensors is run on zeros instead.
The same code serves spec networks (one row per spec token) and zoo models written as modules
(one row per top-level layer or residual block).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = ["LayerRow", "profile_model", "default_rows", "format_table", "format_count", "table_dict"]


@dataclass(frozen=True)
class LayerRow:
    """One row of a layer table (MACs: one sample, one time step, dense)."""

    index: int
    token: str
    out_shape: Tuple[int, ...]
    params: int
    macs: int

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "token": self.token, "output_shape": list(self.out_shape),
                "params": self.params, "macs": self.macs}


def default_rows(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Rows for a model that is not a spec network: its top-level layers, with containers
    (``layer1`` of a ResNet) opened one level so that each residual block gets a row."""
    rows: List[Tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 0:
            for sub_name, sub in child.named_children():
                rows.append((f"{name}.{sub_name} {type(sub).__name__}", sub))
        else:
            rows.append((f"{name} {type(child).__name__}", child))
    return rows


def _fan_in(module: nn.Module) -> Optional[int]:
    if isinstance(module, nn.modules.conv._ConvNd):
        return (module.in_channels // module.groups) * math.prod(module.kernel_size)
    if isinstance(module, nn.Linear):
        return module.in_features
    return None


def _trailing_shape(out: Any, lead: Optional[int]) -> Tuple[int, ...]:
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        return ()
    shape = tuple(int(s) for s in out.shape)
    if lead is not None:
        return shape[lead:]
    # [T=1, B=1, ...] or a static [B=1, ...]: drop up to two leading singleton axes
    dropped = 0
    while dropped < 2 and len(shape) > 1 and shape[0] == 1:
        shape, dropped = shape[1:], dropped + 1
    return shape


def profile_model(model: nn.Module, input_shape: Sequence[int],
                  rows: Optional[Sequence[Tuple[str, nn.Module]]] = None, *, lead_dims: Optional[int] = None
                  ) -> Tuple[List[LayerRow], int]:
    """``(rows, total_macs)`` for one forward pass of an input ``[1, 1, *input_shape]``.

    ``rows`` are ``(token, module)`` pairs (default: :func:`default_rows`); each row gets the
    output shape of its module without the ``lead_dims`` leading axes (default: leading T=1 and
    B=1 axes dropped), its parameter count and the MACs of the convolutions and linear layers
    that ran inside it. ``total_macs`` also counts those outside every row.
    """
    rows = list(rows) if rows is not None else default_rows(model)
    shapes: Dict[int, Tuple[int, ...]] = {}
    macs = [0] * (len(rows) + 1)  # last slot: outside every row
    current = [len(rows)]
    handles = []

    def enter(i: int):
        def hook(module, args):
            current[0] = i
        return hook

    def leave(i: int):
        def hook(module, args, out):
            shapes[i] = _trailing_shape(out, lead_dims)
            current[0] = len(rows)
        return hook

    def count(module, args, out):
        fan = _fan_in(module)
        if fan is not None and isinstance(out, torch.Tensor):
            macs[current[0]] += out.numel() * fan

    training = {m: m.training for m in model.modules()}
    saved_state = [(m, m.v) for m in model.modules() if isinstance(getattr(m, "v", None), torch.Tensor)]
    try:
        # counting hooks first: a row that is itself a conv/linear counts before its row closes
        for m in model.modules():
            if _fan_in(m) is not None:
                handles.append(m.register_forward_hook(count))
        for i, (_, module) in enumerate(rows):
            handles.append(module.register_forward_pre_hook(enter(i)))
            handles.append(module.register_forward_hook(leave(i)))
        model.eval()
        try:
            _run_meta(model, input_shape)
        except Exception:  # a forward that needs real values: measure on zeros instead
            if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
                raise
            shapes.clear()
            macs[:] = [0] * len(macs)
            _run_real(model, input_shape)
    finally:
        for h in handles:
            h.remove()
        for m, flag in training.items():
            m.training = flag
        for m, v in saved_state:
            m.v = v
        for m in model.modules():  # a stateful neuron must not keep the meta state of the dry run
            v = getattr(m, "v", None)
            parts = v if isinstance(v, tuple) else (v,)  # several states: a tuple of tensors
            if any(isinstance(t, torch.Tensor) and t.is_meta for t in parts):
                m.v = None
    out_rows = []
    for i, (token, module) in enumerate(rows):
        params = sum(p.numel() for p in module.parameters())
        out_rows.append(LayerRow(i, token, shapes.get(i, ()), params, macs[i]))
    return out_rows, sum(macs)


def _run_meta(model: nn.Module, input_shape: Sequence[int]) -> None:
    # meta stand-ins for the parameters and buffers: the model itself is left untouched
    state = {name: torch.empty_like(t, device="meta") for name, t in itertools.chain(
        model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))}
    x = torch.empty(1, 1, *input_shape, device="meta")
    with torch.no_grad():
        torch.func.functional_call(model, state, (x,), strict=False)


def _run_real(model: nn.Module, input_shape: Sequence[int]) -> None:
    first = next((t for t in itertools.chain(model.parameters(), model.buffers()) if t.is_floating_point()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    x = torch.zeros(1, 1, *input_shape, device=device, dtype=dtype)
    with torch.no_grad():
        model(x)


# --------------------------------------------------------------------------------------------
def format_count(n: int, millions: bool = False) -> str:
    """``1234567890 -> '1,234,567,890 (1.23G)'``; with ``millions`` (parameters, as the paper
    writes them) ``130426 -> '130,426 (0.13M)'``."""
    if millions and n >= 10_000:
        return f"{n:,} ({n / 1e6:.2f}M)"
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n:,} ({n / div:.2f}{unit})"
    return f"{n:,}"


def table_dict(rows: Iterable[Any], total_params: int, total_macs: int, **info: Any) -> Dict[str, Any]:
    """The JSON form of a layer table: ``info`` first, then the rows and totals."""
    out = dict(info)
    out["layers"] = [{"index": r.index, "token": r.token, "output_shape": list(r.out_shape),
                      "params": r.params, "macs": r.macs} for r in rows]
    out["total_params"] = int(total_params)
    out["macs_per_step"] = int(total_macs)
    return out


def format_table(rows: Sequence[Any], total_params: int, total_macs: int, title: Optional[str] = None) -> str:
    """A fixed-width layer table: index, token, output shape, parameters, MACs per step."""
    header = ("#", "token", "output", "params", "MACs/step")
    body = [(str(r.index), r.token, "x".join(str(s) for s in r.out_shape) or "-", f"{r.params:,}", f"{r.macs:,}")
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    right = (True, False, False, True, True)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    lines = [title] if title else []
    lines += [line(header), line(["-" * w for w in widths])]
    lines += [line(b) for b in body]
    lines.append(f"total parameters: {format_count(int(total_params), millions=True)}")
    lines.append(f"dense MACs per time step: {format_count(int(total_macs))}")
    return "\n".join(lines)
