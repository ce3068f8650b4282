"""Export a sewforge network to NIR, the Neuromorphic Intermediate Representation, and run NIR graphs.

The graph is one time step of the network; a host feeds it step by step (``dt = 1``) and averages
its output over T, which is where sewforge's readout (the mean over T before the last linear layer)
goes: the mean of the per-step ``Affine`` outputs equals ``Affine`` of the mean.

=====================  ==========================================================================
sewforge               NIR
=====================  ==========================================================================
conv + BN (eval)       ``Conv2d`` with the BN folded into weight and bias
IF                     ``IF(r=1, v_reset=0)``
LIF / PLIF             ``LIF(tau, r=1, v_leak=0, v_reset=0)``, ``tau = 1/sigmoid(w)`` for PLIF
                       (``r = tau`` for ``decay_input=False``)
LTLIF / ChannelLIF     ``LIF(tau=1/k, r=1/theta, v_leak=0, v_reset=0)``; ChannelLIF's per-channel k and
                       theta become per-neuron arrays, each channel's value over its H x W positions
CUBALIF                ``LI(tau=1/(1-syn), r=tau, v_leak=0)`` (the synaptic current) feeding
                       ``LIF(tau=1/k, r=1, v_leak=0, v_reset=0)`` (the membrane)
ADD                    no node: A and S both have an edge into every consumer (NIR sums inputs)
AND                    ``Threshold(1.5)`` of A + S
IAND                   ``Threshold(0.5)`` of S - A (A through ``Scale(-1)``)
RIAND                  ``Threshold(0.5)`` of A - S
MaxPool on spikes      ``SumPool2d`` then ``Threshold(0.5)``; on integers in [0, n] (after ADD
                       blocks), the sum over k = 1..n of ``Threshold(0.5)(SumPool(Threshold(k - 0.5)))``
AvgPool / GAP          ``AvgPool2d``
FC                     ``Flatten`` + ``Affine``
=====================  ==========================================================================

Thresholds: NIR neurons and ``Threshold`` fire on ``v > theta``, sewforge's on ``H >= V_th``. The
exporter writes each neuron's ``v_threshold`` as the largest number below V_th in the export dtype
(``numpy.nextafter``), so ``v > theta`` holds exactly when ``v >= V_th`` for every value of that dtype;
run the graph in that dtype (float32 by default) for the same spikes. The ``Threshold`` nodes of g and
pooling compare integers with half-integers and need no adjustment.

Neurons: ``v_leak`` and ``v_reset`` are the neuron's ``v_reset`` (0 by default). The graph runs with
``dt = 1``, each node on its inputs of the same step: NIR's ``LIF`` is ``v += (v_leak - v + r * I) / tau``,
which is sewforge's LIF charge ``v + (x - (v - v_rest)) * k`` for ``tau = 1/k``.

LTLIF and ChannelLIF measure the potential in units of their threshold theta: ``v + (x / theta - (v -
v_rest)) * k``, fired at ``v >= V_th``. The exporter keeps that potential and writes the 1/theta as the
input resistance ``r``, so ``v_threshold`` and ``v_reset`` stay the neuron's own and the ``>=`` to ``>``
adjustment above stays exact; folding theta into the threshold instead (a potential in input units,
threshold ``theta * V_th``) would round the threshold, and folding it into the weights needs a
convolution in front of every neuron.

CUBALIF (``i' = syn * i + x``, ``v' = v + (i' - (v - v_rest)) * k``, i starting at 0) uses the current of
the same step in its membrane. NIR's ``CubaLIF`` node leaves the order of its two updates to the
simulator, and NIR's own forward-Euler reference advances both from the previous step's values (the
membrane sees the previous current), which would run the membrane one step late. The exporter writes
the two equations as two nodes instead, an ``LI`` (``i += (v_leak - i + r * I) / tau`` with ``tau = 1/(1 -
syn)``, ``r = tau``, ``v_leak = 0``: ``i' = syn * i + x``) with an edge into a ``LIF`` (``tau = 1/k``, ``r = 1``),
so the order is the graph's: every simulator that runs a node on its inputs of the same step runs the
network exactly.

Time constants and ``r = 1/theta`` are written as reciprocals: the graph equals the network up to the
rounding of ``1/k``, ``1/theta`` and ``1/(1 - syn)`` (as for PLIF's ``tau``); in float64 the tests see no
spike move.

Refused, with one line saying why: soft reset (NIR neurons reset to ``v_reset``), a neuron other
than the above (ALIF: its threshold adapts with the previous spike; Izhikevich: a quadratic potential
and a recovery variable driven by the previous spike; NIR has neither), a decay ``k <= 0`` or
``syn >= 1`` (no positive finite time constant), max pooling over values that are not spike counts,
AND / IAND with a shortcut that is not binary, BN in training mode or without a convolution before it,
and any other layer.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NIRExportError", "to_nir", "write_nir", "run_nir"]


class NIRExportError(ValueError):
    """The network has something NIR cannot express; the message names it and what would work."""


def _nir():
    try:
        import nir
    except ImportError:
        raise NIRExportError("NIR export needs the nir package: pip install 'sewforge[nir]'") from None
    return nir


@dataclass
class _Val:
    """A value in the graph: the sum of the outputs of ``sources``; ``bound`` is n when it holds
    integers in [0, n] (1: spikes), None for real values; ``shape`` per sample and step."""

    sources: List[str]
    bound: Optional[int]
    shape: Tuple[int, ...]


class _Builder:
    def __init__(self, dtype: Any):
        self.nir = _nir()
        self.dtype = np.dtype(dtype)
        self.nodes: Dict[str, Any] = {}
        self.edges: List[Tuple[str, str]] = []

    def arr(self, t: Any) -> np.ndarray:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().double().numpy()
        return np.asarray(t, dtype=np.float64).astype(self.dtype)

    def add(self, name: str, node: Any, inputs: Sequence[str]) -> str:
        if name in self.nodes:
            raise AssertionError(f"duplicate NIR node {name}")
        self.nodes[name] = node
        self.edges += [(i, name) for i in inputs]
        return name

    # -- layers -------------------------------------------------------------------------------
    def conv(self, name: str, conv: nn.Conv2d, bn: Optional[nn.Module], x: _Val) -> _Val:
        if len(x.shape) != 3:
            raise NIRExportError(f"{name}: a convolution needs a feature map, got shape {x.shape}")
        if not isinstance(conv.padding, tuple) or conv.padding_mode != "zeros":
            raise NIRExportError(f"{name}: padding {conv.padding!r} ({conv.padding_mode}) has no NIR form; use "
                                 "numeric zero padding")
        w = conv.weight.detach().double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        if bn is not None:
            if bn.training or not bn.track_running_stats or bn.running_var is None:
                raise NIRExportError(f"{name}: batch norm must use running statistics; call model.eval() first")
            scale = bn.running_var.detach().double().add(bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.detach().double()
            shift = -bn.running_mean.detach().double() * scale
            if bn.bias is not None:
                shift = shift + bn.bias.detach().double()
            w = w * scale.reshape(-1, 1, 1, 1)
            b = b * scale + shift
        node = self.nir.Conv2d(input_shape=tuple(x.shape[1:]), weight=self.arr(w), stride=tuple(conv.stride),
                               padding=tuple(conv.padding), dilation=tuple(conv.dilation), groups=conv.groups,
                               bias=self.arr(b))
        self.add(name, node, x.sources)
        c, h, wd = x.shape
        oh = (h + 2 * conv.padding[0] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1
        ow = (wd + 2 * conv.padding[1] - conv.dilation[1] * (conv.kernel_size[1] - 1) - 1) // conv.stride[1] + 1
        return _Val([name], None, (conv.out_channels, oh, ow))

    def per_neuron(self, value: Any, shape: Tuple[int, ...]) -> np.ndarray:
        """A parameter as one value per neuron of a layer of ``shape``: a scalar is repeated, a
        per-channel vector ``[C]`` is broadcast over the positions of each channel (dim 0)."""
        a = np.asarray(value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else value,
                       dtype=np.float64)
        if a.ndim == 1:
            a = a.reshape((-1,) + (1,) * (len(shape) - 1))
        return np.broadcast_to(a, shape).astype(self.dtype)

    def neuron(self, name: str, sn: nn.Module, inputs: Sequence[str], shape: Tuple[int, ...]) -> _Val:
        from ..neurons import CUBALIFNode, ChannelLIFNode, IFNode, LIFNode, LTLIFNode, PLIFNode

        kind = type(sn)
        if kind not in (IFNode, LIFNode, PLIFNode, LTLIFNode, ChannelLIFNode, CUBALIFNode):
            raise NIRExportError(f"{name}: neuron {kind.__name__} has no NIR form: {_why_not(sn)}; exportable: "
                                 f"{_EXPORTABLE}")
        if sn.v_reset is None:
            raise NIRExportError(f"{name}: soft reset (v_reset=None) has no NIR form (NIR neurons reset to "
                                 "v_reset); use a hard reset, v_reset=0")
        theta = np.nextafter(self.dtype.type(sn.v_threshold), self.dtype.type(-np.inf))
        full = lambda v: np.full(shape, v, dtype=np.float64).astype(self.dtype)  # noqa: E731
        thr = np.full(shape, theta, dtype=self.dtype)
        if kind is IFNode:
            node = self.nir.IF(r=full(1.0), v_threshold=thr, v_reset=full(sn.v_reset))
        elif kind in (LIFNode, PLIFNode):
            k = float(sn.charge_params().detach().double()[0])
            tau = 1.0 / k
            node = self.nir.LIF(tau=full(tau), r=full(1.0 if sn.decay_input else tau), v_leak=full(sn.v_reset),
                                v_threshold=thr, v_reset=full(sn.v_reset))
        else:
            p = {n: v.detach().cpu().double() for n, v in sn.param_values(torch.float64).items()}
            if kind is ChannelLIFNode and p["k"].numel() != shape[0]:
                raise NIRExportError(f"{name}: {kind.__name__} has {p['k'].numel()} channels but its input has "
                                     f"{shape[0]} (shape {shape})")
            if not bool((p["k"] > 0).all()):
                raise NIRExportError(f"{name}: {kind.__name__} has a decay k <= 0, which has no NIR time constant "
                                     "(tau = 1/k must be positive)")
            tau = self.per_neuron(1.0 / p["k"], shape)
            if kind is CUBALIFNode:
                syn = float(p["syn"])
                if not syn < 1.0:
                    raise NIRExportError(f"{name}: {kind.__name__} has syn={syn:g} >= 1, which has no NIR synaptic "
                                         "time constant (tau_syn = 1/(1 - syn) must be positive and finite)")
                tau_syn = full(1.0 / (1.0 - syn))  # the current, then the membrane on it, in one step
                current = self.add(f"{name}.current", self.nir.LI(tau=tau_syn, r=tau_syn.copy(), v_leak=full(0.0)),
                                   inputs)
                inputs = [current]
                node = self.nir.LIF(tau=tau, r=full(1.0), v_leak=full(sn.v_reset), v_threshold=thr,
                                    v_reset=full(sn.v_reset))
            else:  # LTLIF, ChannelLIF: the potential in units of theta, so the input is scaled by 1/theta
                if not bool((p["theta"] != 0).all()):
                    raise NIRExportError(f"{name}: {kind.__name__} has a threshold theta = 0 (its input x / theta "
                                         "is not finite)")
                node = self.nir.LIF(tau=tau, r=self.per_neuron(1.0 / p["theta"], shape), v_leak=full(sn.v_reset),
                                    v_threshold=thr, v_reset=full(sn.v_reset))
        self.add(name, node, inputs)
        return _Val([name], 1, shape)

    def threshold(self, name: str, level: float, inputs: Sequence[str], shape: Tuple[int, ...]) -> str:
        return self.add(name, self.nir.Threshold(threshold=np.full(shape, level, dtype=self.dtype)), inputs)

    def negate(self, name: str, x: _Val) -> str:
        return self.add(name, self.nir.Scale(scale=-np.ones(x.shape, dtype=self.dtype)), x.sources)

    def maxpool(self, name: str, pool: nn.MaxPool2d, x: _Val) -> _Val:
        k, s, p = (_pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size),
                   _pair(pool.padding))
        if _pair(pool.dilation) != (1, 1) or pool.ceil_mode:
            raise NIRExportError(f"{name}: max pooling with dilation or ceil_mode has no NIR form")
        if x.bound is None:
            raise NIRExportError(f"{name}: max pooling over values that are not spike counts has no NIR form; "
                                 "pool spikes (after a neuron or a SEW block), or use average pooling (AP) "
                                 "or SumPool2d instead")
        c, h, w = x.shape
        out_shape = (c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1)
        outs = []
        for level in range(1, x.bound + 1):  # max = sum over k of [max >= k] = sum of [any >= k]
            tag = "" if x.bound == 1 else f".ge{level}"
            src = x.sources if x.bound == 1 else [self.threshold(f"{name}.level{level}", level - 0.5, x.sources,
                                                                 x.shape)]
            pooled = self.add(f"{name}.sum{tag}", self.nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s),
                                                                     padding=np.array(p)), src)
            outs.append(self.threshold(f"{name}{tag}", 0.5, [pooled], out_shape))
        return _Val(outs, x.bound, out_shape)

    def avgpool(self, name: str, k: Tuple[int, int], s: Tuple[int, int], p: Tuple[int, int], x: _Val) -> _Val:
        c, h, w = x.shape
        self.add(name, self.nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p)),
                 x.sources)
        return _Val([name], None, (c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1))

    def linear(self, name: str, fc: nn.Linear, x: _Val) -> _Val:
        sources = x.sources
        if len(x.shape) > 1:
            sources = [self.add(f"{name}.flatten", self.nir.Flatten(input_type={"input": np.array(x.shape)},
                                                                    start_dim=0), x.sources)]
        bias = fc.bias if fc.bias is not None else torch.zeros(fc.out_features)
        self.add(name, self.nir.Affine(weight=self.arr(fc.weight), bias=self.arr(bias)), sources)
        return _Val([name], None, (fc.out_features,))

    # -- blocks -------------------------------------------------------------------------------
    def block(self, name: str, b: nn.Module, x: _Val) -> _Val:
        from ..blocks import ResidualBlock

        if not isinstance(b, ResidualBlock) or b.join not in ("sew", "add_before_sn", "none"):
            raise NIRExportError(f"{name}: block {type(b).__name__} has no NIR export; sewforge exports SEW, "
                                 "SpikingResNet, Plain and the bottlenecks")
        i, val = 1, x
        while hasattr(b, f"conv{i + 1}"):
            val = self.conv(f"{name}.conv{i}", getattr(b, f"conv{i}"), getattr(b, f"bn{i}"), val)
            val = self.neuron(f"{name}.sn{i}", getattr(b, f"sn{i}"), val.sources, val.shape)
            i += 1
        last = self.conv(f"{name}.conv{i}", getattr(b, f"conv{i}"), getattr(b, f"bn{i}"), val)
        sn_name = f"{name}.{b._sn_last_name}"
        if b.join == "none":
            return self.neuron(sn_name, b.sn_last, last.sources, last.shape)
        s = x
        if b.downsample is not None:
            s = self.conv(f"{name}.downsample", b.downsample[0], b.downsample[1], x)
        if b.join == "add_before_sn":
            return self.neuron(sn_name, b.sn_last, last.sources + s.sources, last.shape)
        if b.downsample_sn is not None:
            s = self.neuron(f"{name}.downsample_sn", b.downsample_sn, s.sources, s.shape)
        a = self.neuron(sn_name, b.sn_last, last.sources, last.shape)
        g = b.g.name
        if g == "ADD":
            return _Val(a.sources + s.sources, None if s.bound is None else s.bound + 1, a.shape)
        if g in ("AND", "IAND", "RIAND"):
            if s.bound != 1:
                raise NIRExportError(f"{name}: g={g} with a shortcut that is not binary spikes (it follows an ADD "
                                     "block) has no exact NIR form; use g=ADD throughout or binary shortcuts")
            if g == "AND":
                out = self.threshold(f"{name}.and", 1.5, a.sources + s.sources, a.shape)
            elif g == "IAND":
                out = self.threshold(f"{name}.iand", 0.5, s.sources + [self.negate(f"{name}.not_a", a)], a.shape)
            else:
                out = self.threshold(f"{name}.riand", 0.5, a.sources + [self.negate(f"{name}.not_s", s)], a.shape)
            return _Val([out], 1, a.shape)
        raise NIRExportError(f"{name}: element-wise function g={g} has no NIR export (ADD, AND, IAND, RIAND do)")


_EXPORTABLE = "IF (NIR IF), LIF, PLIF, LTLIF, ChannelLIF (NIR LIF), CUBALIF (NIR LI + LIF), with a hard reset"


def _why_not(sn: nn.Module) -> str:
    """Why the state of ``sn`` has no NIR neuron (one clause)."""
    from ..neurons import ALIFNode, BaseNeuron, IzhikevichNode, StepNeuron

    if isinstance(sn, ALIFNode):
        return "its threshold adapts with the previous spike (it fires on v - beta * a); NIR has no adaptive neuron"
    if isinstance(sn, IzhikevichNode):
        return ("its potential is quadratic and its recovery variable jumps with the previous spike; NIR has no "
                "Izhikevich neuron")
    if not isinstance(sn, BaseNeuron):
        return f"it is not a sewforge neuron (from {type(sn).__module__.split('.')[0]})"
    eq = getattr(sn, "_multistate", None)
    if eq is not None and eq.uses_s:
        return "its states use the previous spike; NIR neurons have no such input"
    if eq is not None and eq.fire is not None:
        return "it fires on a function of its states, not on v; NIR neurons compare v with a threshold"
    if isinstance(sn, StepNeuron):
        return "its step function is not one NIR writes (NIR has IF, LIF and CubaLIF updates)"
    return "its charge equation is not one NIR writes (NIR has IF, LIF and CubaLIF updates)"


def _pair(v: Any) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _spec_layers(bld: _Builder, model: nn.Module, x: _Val) -> _Val:
    from ..blocks import ResidualBlock
    from ..neurons import BaseNeuron
    from ..layers import FeaturePool, SharedDropout

    layers = list(model.layers)
    names = model.layer_names()
    i = 0
    while i < len(layers):
        layer, name = layers[i], names[i]
        inner = getattr(layer, "module", None)
        if isinstance(layer, ResidualBlock):
            x = bld.block(name, layer, x)
        elif isinstance(layer, BaseNeuron) or (isinstance(layer, nn.Module) and hasattr(layer, "v_threshold")):
            x = bld.neuron(name, layer, x.sources, x.shape)
        elif isinstance(layer, SharedDropout):
            pass  # identity in eval mode
        elif isinstance(inner, nn.Conv2d):
            nxt = getattr(layers[i + 1], "module", None) if i + 1 < len(layers) else None
            bn = nxt if isinstance(nxt, nn.BatchNorm2d) else None
            x = bld.conv(name, inner, bn, x)
            i += 1 if bn is not None else 0
        elif isinstance(inner, nn.MaxPool2d):
            x = bld.maxpool(name, inner, x)
        elif isinstance(inner, nn.AvgPool2d):
            if inner.ceil_mode or not inner.count_include_pad and _pair(inner.padding) != (0, 0):
                raise NIRExportError(f"{name}: this average pooling (ceil_mode / count_include_pad=False) has no "
                                     "NIR form")
            x = bld.avgpool(name, _pair(inner.kernel_size), _pair(inner.stride), _pair(inner.padding), x)
        elif isinstance(inner, nn.AdaptiveAvgPool2d):
            x = bld.avgpool(name, x.shape[1:], x.shape[1:], (0, 0), x)
        elif isinstance(inner, nn.Linear) or (isinstance(inner, nn.Sequential) and isinstance(inner[-1], nn.Linear)):
            x = bld.linear(name, inner if isinstance(inner, nn.Linear) else inner[-1], x)
        elif isinstance(inner, nn.BatchNorm2d):
            raise NIRExportError(f"{name}: batch norm without a convolution before it has no NIR form here; put BN "
                                 "after a convolution")
        else:
            what = type(inner if inner is not None else layer).__name__
            if isinstance(inner, FeaturePool):
                what = "1-D pooling over features"
            raise NIRExportError(f"{name}: {what} has no NIR export (conv, BN, the neurons IF, LIF, PLIF, LTLIF, "
                                 "ChannelLIF, CUBALIF, MP, AP, GAP, FC and the residual blocks do)")
        i += 1
    return x


def to_nir(model: nn.Module, input_shape: Optional[Sequence[int]] = None, *, dtype: Any = np.float32) -> Any:
    """The NIR graph (``nir.NIRGraph``) of one time step of ``model``, in eval mode.

    ``input_shape`` (C, H, W) defaults to the model's own; ``dtype`` is the precision of the
    parameters and the one in which thresholds are adjusted from ``>=`` to ``>`` (see the module
    docstring). Raises :class:`NIRExportError` naming the first layer NIR cannot express.
    """
    from ..spec import SpecNet

    nir = _nir()
    shape = tuple(int(v) for v in (input_shape or getattr(model, "input_shape", ())))
    if len(shape) != 3:
        raise NIRExportError(f"give input_shape=(C, H, W) for {type(model).__name__}, got {shape or None}")
    if model.training:
        raise NIRExportError("the model is in training mode (BN would use batch statistics); call model.eval()")
    bld = _Builder(dtype)
    bld.add("input", nir.Input(input_type={"input": np.array(shape)}), [])
    x = _Val(["input"], None, shape)
    if isinstance(model, SpecNet):
        if getattr(model, "readout", "mean") != "mean":
            raise NIRExportError(f"readout={model.readout!r}: only the mean over T is exported (the host averages "
                                 "the per-step output)")
        x = _spec_layers(bld, model, x)
    else:
        raise NIRExportError(f"{type(model).__name__} has no NIR export; sewforge exports spec networks (the DVS "
                             "zoo, spec strings) and the SEW / Spiking ResNets")
    bld.add("output", nir.Output(output_type={"output": np.array(x.shape)}), x.sources)
    meta = {"producer": "sewforge", "dt": 1.0, "time_steps": int(getattr(model, "T", 0) or 0),
            "readout": "logits = mean over time steps of the output (done by the host)",
            "threshold": "sewforge fires on v >= V_th; v_threshold is nextafter(V_th, -inf) in the export dtype"}
    return nir.NIRGraph(nodes=bld.nodes, edges=bld.edges, metadata=meta, type_check=False)


def write_nir(graph: Any, path: Union[str, os.PathLike]) -> Path:
    """Write ``graph`` with ``nir.write`` to a temporary file beside ``path``, then rename it."""
    nir = _nir()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        nir.write(str(tmp), graph)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# a small reference interpreter of the NIR nodes used above (step by step, dt = 1)
# ---------------------------------------------------------------------------------------------
def _order(graph: Any) -> List[str]:
    preds: Dict[str, List[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    done: List[str] = []
    seen = set()

    def visit(n: str) -> None:
        stack = [(n, False)]
        while stack:
            node, ready = stack.pop()
            if ready:
                if node not in seen:
                    seen.add(node)
                    done.append(node)
                continue
            if node in seen:
                continue
            stack.append((node, True))
            stack += [(p, False) for p in preds[node] if p not in seen]

    for n in graph.nodes:
        visit(n)
    return done


@torch.no_grad()
def run_nir(graph: Any, x: torch.Tensor, *, record: bool = False) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Run ``graph`` on ``x = [T, B, ...]`` one step at a time: ``(outputs [T, B, ...], records)``,
    where ``records`` maps every node to its outputs ``[T, B, ...]`` when ``record=True``.

    Inputs of a node are summed; IF: ``v += r * I``, LIF: ``v += (v_leak - v + r * I) / tau``; LI: the same
    without firing, its output is ``v``; CubaLIF as NIR's forward-Euler reference: ``i`` and ``v`` both
    advance from the previous step's values, ``i += (w_in * I - i) / tau_syn`` (i starts at 0) and ``v +=
    (v_leak - v + r * i_previous) / tau_mem``; a neuron fires where ``v > v_threshold`` and resets ``v`` to
    ``v_reset``; computed in ``x``'s dtype.
    """
    dt = x.dtype
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    preds: Dict[str, List[str]] = {n: [] for n in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    order = _order(graph)
    params: Dict[str, Dict[str, torch.Tensor]] = {}
    for name in order:
        node = graph.nodes[name]
        kind = type(node).__name__
        if kind in ("LIF", "LI"):
            tau = np.asarray(node.tau, dtype=np.float64)
            if kind == "LI":
                params[name] = {"k": t(1.0 / tau), "r": t(node.r), "v_leak": t(node.v_leak)}
                continue
            params[name] = {"k": t(1.0 / tau), "r": t(node.r), "v_leak": t(node.v_leak),
                            "thr": t(node.v_threshold), "v_reset": t(node.v_reset)}
        elif kind == "IF":
            params[name] = {"r": t(node.r), "thr": t(node.v_threshold), "v_reset": t(node.v_reset)}
        elif kind == "CubaLIF":
            params[name] = {"k": t(1.0 / np.asarray(node.tau_mem, dtype=np.float64)), "r": t(node.r),
                            "k_syn": t(1.0 / np.asarray(node.tau_syn, dtype=np.float64)), "w_in": t(node.w_in),
                            "v_leak": t(node.v_leak), "thr": t(node.v_threshold), "v_reset": t(node.v_reset)}
    state: Dict[str, torch.Tensor] = {}
    outputs, records = [], {n: [] for n in order} if record else {}
    for step in range(x.shape[0]):
        out: Dict[str, torch.Tensor] = {}
        for name in order:
            node = graph.nodes[name]
            kind = type(node).__name__
            if kind == "Input":
                out[name] = x[step]
                continue
            inp = out[preds[name][0]]
            for p in preds[name][1:]:
                inp = inp + out[p]
            if kind == "Conv2d":
                y = F.conv2d(inp, t(node.weight), t(node.bias), tuple(np.atleast_1d(node.stride)),
                             tuple(np.atleast_1d(node.padding)), tuple(np.atleast_1d(node.dilation)), int(node.groups))
            elif kind == "Affine":
                y = F.linear(inp, t(node.weight), t(node.bias))
            elif kind == "Scale":
                y = inp * t(node.scale)
            elif kind == "Threshold":
                y = (inp > t(node.threshold)).to(dt)
            elif kind == "SumPool2d":
                k = tuple(int(v) for v in np.atleast_1d(node.kernel_size))
                ones = torch.ones(inp.shape[1], 1, *k, dtype=dt)
                y = F.conv2d(inp, ones, None, tuple(int(v) for v in np.atleast_1d(node.stride)),
                             tuple(int(v) for v in np.atleast_1d(node.padding)), 1, inp.shape[1])
            elif kind == "AvgPool2d":
                y = F.avg_pool2d(inp, tuple(int(v) for v in np.atleast_1d(node.kernel_size)),
                                 tuple(int(v) for v in np.atleast_1d(node.stride)),
                                 tuple(int(v) for v in np.atleast_1d(node.padding)))
            elif kind == "Flatten":
                y = inp.flatten(1)
            elif kind == "LI":
                p = params[name]
                y = state.get(name, torch.zeros_like(inp) + p["v_leak"])
                y = y + (p["v_leak"] - y + p["r"] * inp) * p["k"]
                state[name] = y
            elif kind in ("IF", "LIF", "CubaLIF"):
                p = params[name]
                v = state.get(name, torch.zeros_like(inp) + p["v_reset"])
                if kind == "IF":
                    v = v + p["r"] * inp
                elif kind == "LIF":
                    v = v + (p["v_leak"] - v + p["r"] * inp) * p["k"]
                else:  # both from the previous step's values: the membrane sees the previous current
                    cur = state.get(name + "\0i", torch.zeros_like(inp))
                    v = v + (p["v_leak"] - v + p["r"] * cur) * p["k"]
                    state[name + "\0i"] = cur + (p["w_in"] * inp - cur) * p["k_syn"]
                spike = v > p["thr"]
                state[name] = torch.where(spike, p["v_reset"], v)
                y = spike.to(dt)
            elif kind == "Output":
                y = inp
            else:
                raise NIRExportError(f"run_nir: node {name} of type {kind} is not supported by this interpreter")
            out[name] = y
            if record:
                records[name].append(y)
        outputs.append(out["output"])
    recs = {n: torch.stack(v) for n, v in records.items() if v} if record else {}
    return torch.stack(outputs), recs
