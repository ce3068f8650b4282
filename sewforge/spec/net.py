"""Lowering a spec to a multi-step network: :class:`SpecNet`, :func:`build` and :func:`infer`."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..checks import positive_int
from ..layers import SeqFold, repeat_steps, steps_channels_last
from ..memory import MEMORY_MODES, check_memory_mode, memory_context, recompute, recompute_chain, segments
from .errors import SpecError
from .graph import Graph, GraphNode
from .lower import construct
from .rewrite import apply_overrides
from .nodes import Linear, Pool, Spec
from .parser import parse
from .profile import LayerRow, format_table, profile_model, table_dict

__all__ = ["SpecNet", "build", "infer", "READOUTS", "NAMINGS", "INITS"]

#: how logits are formed from the per-step outputs of the last layer
READOUTS = ("mean", "sum")
_STATELESS = ("conv", "bn", "pool", "global_pool", "fc")
#: how the layers are named in ``state_dict``: ``layers.3.module.weight`` ("spec"), or torchvision's
#: ResNet names ``conv1``, ``bn1``, ``sn1``, ``maxpool``, ``layer1.0``, ``avgpool``, ``fc`` ("torchvision")
NAMINGS = ("spec", "torchvision")
#: initialisations: "default" (each layer's own, PyTorch's), "torchvision" (its ResNet's: Kaiming
#: fan-out normal convolutions, BN weight 1 and bias 0, then each block's zero-init)
INITS = ("default", "torchvision")


def _check_input_shape(input_shape: Any) -> Tuple[int, ...]:
    if input_shape is None:
        raise SpecError("input_shape is required to build a spec: pass input_shape=(C, H, W), e.g. (2, 128, 128)")
    if isinstance(input_shape, str):
        raise SpecError(f"input_shape={input_shape!r}: pass a tuple (C, H, W) such as (2, 128, 128)")
    try:
        shape = tuple(input_shape)
    except TypeError:
        raise SpecError(f"input_shape={input_shape!r}: must be a tuple (C, H, W)") from None
    if len(shape) not in (1, 3) or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise SpecError(f"input_shape={input_shape!r}: must be (C, H, W) (or (N,) for flat inputs) with positive "
                        "integers, e.g. (2, 128, 128)")
    return shape


def _check_T(T: Any) -> Optional[int]:
    if T is None:
        return None
    return positive_int(T, f"T={T!r}: the number of time steps", SpecError)


class SpecNet(nn.Module):
    """A network compiled from a spec string.

    Takes ``[T, B, *input_shape]`` or a static ``[B, *input_shape]`` (repeated over ``T`` steps;
    the convolution/BN/pooling layers before the first neuron then run once, which gives the same
    result as running them on T identical copies) and returns logits ``[B, num_classes]``: the
    last layer's output reduced over T (``readout="mean"``, as the paper, or ``"sum"``). When the
    last layer is ``FC``, it is applied to the mean of its inputs over T, which equals the mean of
    its outputs and costs one matrix product instead of T.

    ``memory`` (settable, see :mod:`sewforge.memory`): "compact" keeps the spikes saved for
    backward in 1 bit (1 byte for SEW block outputs), "lean" also reruns every batch norm ->
    neuron chain in backward instead of keeping the neuron's fp32 potential (see
    :func:`sewforge.memory.segments`), "recompute" reruns each residual block in backward instead
    of keeping its activations, "dense" leaves autograd as usual.
    ``channels_last=True`` keeps the weights and every step of the activations in channels_last
    layout (the input is converted in ``forward``).
    """

    def __init__(self, spec: Spec, graph_nodes: Sequence[GraphNode], layers: Sequence[nn.Module],
                 input_shape: Tuple[int, ...], T: Optional[int] = None, readout: str = "mean",
                 memory: str = "compact", channels_last: bool = False, naming: str = "spec"):
        super().__init__()
        if readout not in READOUTS:
            raise SpecError(f"readout={readout!r}: choose one of {', '.join(READOUTS)}")
        if naming not in NAMINGS:
            raise SpecError(f"naming={naming!r}: choose one of {', '.join(NAMINGS)}")
        _check_layout(memory, channels_last, input_shape)
        self.spec = spec
        self.naming = naming
        if naming == "spec":
            self.layers = nn.ModuleList(layers)
            self._names = [f"layers.{i}" for i in range(len(layers))]
        else:
            self._names = _torchvision_names(graph_nodes)
            self.layers = list(layers)  # a plain list: the modules are registered under their names
            for name, layer in zip(self._names, layers):
                self._register(name, layer)
        self.input_shape = tuple(input_shape)
        self.T = _check_T(T)
        self.readout = readout
        self._kinds = [n.kind for n in graph_nodes]
        self._nodes = tuple(graph_nodes)
        self._graph: Optional[Graph] = None
        self.num_classes = math.prod(self._nodes[-1].out_shape)
        self._linear_readout = bool(self._kinds) and self._kinds[-1] == "fc"
        prefix = 0
        limit = len(self._kinds) - (1 if self._linear_readout else 0)
        while prefix < limit and self._kinds[prefix] in _STATELESS:
            prefix += 1
        self._static_prefix = prefix
        head = len(self._kinds) - (1 if self._linear_readout else 0)
        if self._linear_readout and head > 0 and self._kinds[head - 1] == "global_pool":
            head -= 1
        self._head_start = max(head, prefix if prefix < len(self._kinds) else 0)
        # after a global pool only the channels are fixed: any H, W the convolutions accept runs
        self._any_size = "global_pool" in self._kinds and len(self.input_shape) == 3
        self.memory = memory
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def memory(self) -> str:
        """How activations are kept for backward: "compact", "dense", "recompute" or "lean" (settable)."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_memory_mode(value)

    # -- API ------------------------------------------------------------------------------
    @property
    def graph(self) -> Graph:
        """The checked graph: per-layer shapes, parameters and dense MACs per step (measured on
        first use by a shapes-only pass on the meta device, which also checks every layer's
        inferred shape against what its module really produces)."""
        if self._graph is None:
            self._graph = _profiled_graph(self)
        return self._graph

    def to_spec(self) -> str:
        """The canonical spec of this network (global overrides included): ``build`` of it gives
        the same architecture."""
        return self.spec.to_spec()

    def _register(self, name: str, layer: nn.Module) -> None:
        """Register ``layer`` under a dotted name, unwrapping the T*B fold (``SeqFold``) so that
        the parameters carry the plain layer's names (``conv1.weight``, ``fc.bias``)."""
        owner: nn.Module = self
        *path, leaf = name.split(".")
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, nn.Sequential())
            owner = owner._modules[part]
        inner = getattr(layer, "module", None) if isinstance(layer, SeqFold) else None
        if isinstance(inner, nn.Sequential) and len(inner) == 2 and isinstance(inner[0], nn.Flatten):
            inner = inner[1]
        owner.add_module(leaf, inner if inner is not None else layer)

    def layer_names(self) -> List[str]:
        """The name of each layer (one per spec token, in forward order) as ``state_dict`` and
        ``get_submodule`` know it: ``layers.0`` ... or torchvision's (``conv1``, ``layer1.0``)."""
        return list(self._names)

    def blocks(self) -> List[nn.Module]:
        """The residual blocks in forward order (for firing-rate and gradient analyses)."""
        return [m for m, k in zip(self.layers, self._kinds) if k == "block"]

    def layer_table(self) -> List[LayerRow]:
        """One row per spec token: index, token, output shape, parameters, dense MACs per step."""
        return [LayerRow(n.index, n.token, n.out_shape, n.params, n.macs) for n in self.graph.nodes]

    def format_table(self) -> str:
        return format_table(self.layer_table(), self.num_parameters(), self.graph.total_macs,
                            title=f"{self.to_spec()}  input {'x'.join(map(str, self.input_shape))}"
                                  + (f"  T={self.T}" if self.T else ""))

    def table_dict(self) -> dict:
        return table_dict(self.layer_table(), self.num_parameters(), self.graph.total_macs, spec=self.to_spec(),
                          input_shape=list(self.input_shape), T=self.T, num_classes=self.num_classes)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def fuse(self) -> bool:
        """Whether the blocks run their last neuron and g as one fused kernel (settable)."""
        return all(getattr(b, "fuse", True) for b in self.blocks())

    @fuse.setter
    def fuse(self, value: bool) -> None:
        for b in self.blocks():
            b.fuse = bool(value)

    def get_classifier(self) -> nn.Module:
        """The final linear layer (the one ``reset_classifier`` replaces)."""
        if not self._linear_readout:
            raise SpecError(f"{self.to_spec()!r} does not end in FC: it has no classifier to get")
        layer = self.layers[-1]
        return layer.module[-1] if isinstance(layer.module, nn.Sequential) else layer.module

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final ``FC`` by a new, freshly initialised one with ``num_classes`` outputs
        (same device and dtype), as timm's ``reset_classifier``: for fine-tuning on a new data set."""
        positive_int(num_classes, "num_classes", SpecError)
        old = self.get_classifier()
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        wrapper = self.layers[-1]
        if isinstance(wrapper.module, nn.Sequential):
            wrapper.module[-1] = new
        else:
            wrapper.module = new
        if self.naming == "spec":
            pass  # the ModuleList holds the wrapper, which now holds the new layer
        else:
            self._register(self._names[-1], wrapper)
        node = self._nodes[-1]
        self._nodes = self._nodes[:-1] + (GraphNode(node.index, f"FC{num_classes}", node.kind, node.in_shape,
                                                    (num_classes,), sum(p.numel() for p in new.parameters()), 0,
                                                    node.span, dataclasses.replace(node.node, features=num_classes)),)
        self.spec = Spec(self.spec.nodes[:-1] + (self._nodes[-1].node,), None) \
            if isinstance(self.spec.nodes[-1], Linear) else self.spec
        self.num_classes = num_classes
        self._graph = None

    # -- forward --------------------------------------------------------------------------
    def _check_input(self, x: Any) -> int:
        nd = len(self.input_shape)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"SpecNet expects a tensor, got {type(x).__name__}")
        fits = tuple(x.shape[-nd:]) == self.input_shape
        if self._any_size and x.dim() in (nd + 1, nd + 2):
            fits = x.shape[-3] == self.input_shape[0]
        if not fits or x.dim() not in (nd + 1, nd + 2):
            dims = ", ".join(map(str, self.input_shape))
            if self._any_size:
                dims = f"{self.input_shape[0]}, H, W"
            raise ValueError(f"SpecNet({self.to_spec()!r}) was built for inputs [T, B, {dims}] or [B, {dims}], "
                             f"got {list(x.shape)}; rebuild with input_shape matching your data")
        return nd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nd = self._check_input(x)
        with memory_context(self.memory):
            return self._head(self._features(x, nd))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The input through every layer before the head: ``[T, B, ...]`` (the last feature map
        before global pooling and ``FC``). A static input ``[B, ...]`` is repeated over ``T``."""
        nd = self._check_input(x)
        with memory_context(self.memory):
            return self._features(x, nd)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features``' output to logits ``[B, num_classes]`` (global pool, ``FC`` and the
        reduction over T)."""
        with memory_context(self.memory):
            return self._head(x)

    def _features(self, x: torch.Tensor, nd: int) -> torch.Tensor:
        start = 0
        if x.dim() == nd + 1:  # static input: repeat over T after the stateless stem
            if self.T is None:
                raise ValueError("a static input [B, ...] needs the number of time steps: build with T=... or "
                                 "pass a sequence [T, B, ...]")
            x = x.unsqueeze(0)
            if self.channels_last:
                x = steps_channels_last(x)
            for layer in self.layers[:self._static_prefix]:
                x = layer(x)
            start = self._static_prefix
            x = repeat_steps(x[0], self.T, channels_last=self.channels_last and x.dim() == 5)
        else:
            if self.channels_last:
                x = steps_channels_last(x)
        end = self._head_start
        again = self.memory == "recompute"
        runs = dict(segments(self._kinds, self.layers, self.memory, start, end)) if torch.is_grad_enabled() else {}
        i = start
        while i < end:
            layer, kind = self.layers[i], self._kinds[i]
            stop = runs.get(i)
            if stop is not None:  # the memory policy: keep this run's input, run it again in backward
                run = list(self.layers[i:stop])
                x = recompute_chain(nn.Sequential(*run), x, modules=run)
                i = stop
                continue
            x = recompute(layer, x) if again and kind == "block" else layer(x)
            i += 1
        return x

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        steps = x.shape[0]
        end = len(self.layers) - (1 if self._linear_readout else 0)
        for layer in self.layers[self._head_start:end]:
            x = layer(x)
        if self._linear_readout:
            logits = self.layers[-1](x.mean(0, keepdim=True))[0]
            return logits * steps if self.readout == "sum" else logits
        x = x.flatten(2)
        return x.sum(0) if self.readout == "sum" else x.mean(0)

    def extra_repr(self) -> str:
        extra = f", memory={self.memory!r}" + (", channels_last=True" if self.channels_last else "")
        return (f"spec={self.to_spec()!r}, input_shape={self.input_shape}, T={self.T}, readout={self.readout!r}"
                + extra)


def _check_layout(memory: Any, channels_last: Any, input_shape: Sequence[int]) -> None:
    if not isinstance(memory, str) or memory not in MEMORY_MODES:
        raise SpecError(f"memory={memory!r} is not a memory mode; use one of "
                        f"{', '.join(repr(m) for m in MEMORY_MODES)}")
    if not isinstance(channels_last, bool):
        raise SpecError(f"channels_last={channels_last!r}: must be True or False")
    if channels_last and len(tuple(input_shape)) != 3:
        raise SpecError(f"channels_last=True needs image inputs (C, H, W), but input_shape={tuple(input_shape)}; "
                        "use channels_last=False for flat inputs")


def _torchvision_names(nodes: Sequence[GraphNode]) -> List[str]:
    """torchvision's ResNet names for the layers of a network shaped like one: stem ``conv1``,
    ``bn1``, ``sn1``, ``maxpool``; blocks ``layer{stage}.{i}``, a new stage at each strided block;
    then ``avgpool`` and ``fc``. Other layers are named by kind and count (``dropout1``)."""
    names: List[str] = []
    counts: dict = {}
    stage, index = 0, 0
    prefixes = {"conv": "conv", "bn": "bn", "neuron": "sn", "global_pool": "avgpool", "fc": "fc",
                "dropout": "dropout", "pool": "pool"}
    for node in nodes:
        if node.kind == "block":
            stride = getattr(node.node, "stride", 1) or 1
            if stage == 0 or stride != 1:
                stage, index = stage + 1, 0
            names.append(f"layer{stage}.{index}")
            index += 1
            continue
        prefix = prefixes.get(node.kind, node.kind)
        if node.kind == "pool" and isinstance(node.node, Pool) and node.node.kind == "MP":
            prefix = "maxpool"
        counts[prefix] = counts.get(prefix, 0) + 1
        numbered = prefix in ("conv", "bn", "sn")
        names.append(f"{prefix}{counts[prefix]}" if numbered or counts[prefix] > 1 else prefix)
    if len(set(names)) != len(names):
        raise SpecError("naming='torchvision' needs one stem, the blocks, one global pool and one FC "
                        f"(got layers named {', '.join(names)}); use naming='spec'")
    return names


@torch.no_grad()
def _torchvision_init(net: nn.Module) -> None:
    """torchvision's ResNet initialisation, then each block's own zero-init again (the BN
    initialisation would otherwise undo it)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for block in net.blocks():
        if getattr(block, "zero_init", False):
            block.zero_init_()


def _compile(spec: Union[str, Spec], input_shape: Any, *, T: Optional[int], fuse: bool, readout: str, meta: bool,
             overrides: dict, memory: str = "compact", channels_last: bool = False, naming: str = "spec",
             init: str = "default") -> SpecNet:
    parsed = parse(spec) if not isinstance(spec, Spec) else spec
    shape = _check_input_shape(input_shape)
    T = _check_T(T)
    if not isinstance(fuse, bool):
        raise SpecError(f"fuse={fuse!r}: must be True or False")
    _check_layout(memory, channels_last, shape)
    if init not in INITS:
        raise SpecError(f"init={init!r}: choose one of {', '.join(INITS)}")
    parsed = apply_overrides(parsed, **overrides)
    if meta:
        with torch.device("meta"):
            nodes, modules = construct(parsed, shape, fuse=fuse, meta=True)
    else:
        nodes, modules = construct(parsed, shape, fuse=fuse, meta=False)
    net = SpecNet(parsed, nodes, modules, shape, T=T, readout=readout, memory=memory,
                  channels_last=False, naming=naming)
    if init == "torchvision" and not meta:
        _torchvision_init(net)
    if channels_last and not meta:
        net.channels_last = True
        net.to(memory_format=torch.channels_last)
    if meta:
        net.graph  # noqa: B018  (measure now: the caller only wants the graph)
    return net


def _profiled_graph(net: SpecNet) -> Graph:
    nodes = net._nodes
    rows, _ = profile_model(net, net.input_shape, [(n.token, m) for n, m in zip(nodes, net.layers)], lead_dims=2)
    source = net.spec.source
    checked = []
    for node, row in zip(nodes, rows):
        if tuple(row.out_shape) != tuple(node.out_shape):
            raise SpecError(f"{node.token}: the module produced shape {row.out_shape} but {node.out_shape} was "
                            "inferred; the block's out_shape() disagrees with its forward",
                            source or None, node.span[0] if source else None, node.span[1] if source else None)
        checked.append(GraphNode(node.index, node.token, node.kind, node.in_shape, node.out_shape, node.params,
                                 row.macs, node.span, node.node))
    return Graph(net.spec, net.input_shape, tuple(checked))


def build(spec: Union[str, Spec], input_shape: Any = None, T: Optional[int] = None, *, neuron: Any = None,
          g: Any = None, surrogate: Any = None, zero_init: Optional[bool] = None,
          v_threshold: Optional[float] = None, num_classes: Optional[int] = None, fuse: bool = True,
          readout: str = "mean", memory: str = "compact", channels_last: bool = False, naming: str = "spec",
          init: str = "default") -> SpecNet:
    """Compile a spec string into a :class:`SpecNet` for inputs of ``input_shape = (C, H, W)``.

    ``build("c32k3s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11", input_shape=(2, 128, 128), T=16)``.
    Global overrides (``None`` = as written): ``neuron`` replaces every neuron type, ``g`` the
    element-wise function of every SEW block, ``surrogate`` / ``v_threshold`` are set on every
    neuron, ``zero_init`` on every block, ``num_classes`` replaces the final ``FC``'s size.
    ``fuse`` runs each block's last neuron and g as one kernel. Blocks use the neuron of the
    nearest neuron token written before them (``IF`` if there is none) unless given
    ``neuron=...``. ``memory`` ("compact", "dense", "recompute", "lean") and ``channels_last`` are
    described in :class:`SpecNet`. ``naming`` ("spec" or "torchvision") chooses the layer names
    in ``state_dict``, ``init`` ("default" or "torchvision") the initialisation (see
    :data:`NAMINGS`, :data:`INITS`). Any problem raises :class:`SpecError` pointing at the token.
    """
    return _compile(spec, input_shape, T=T, fuse=fuse, readout=readout, meta=False, memory=memory,
                    channels_last=channels_last, naming=naming, init=init,
                    overrides=dict(neuron=neuron, g=g, surrogate=surrogate, zero_init=zero_init,
                                   v_threshold=v_threshold, num_classes=num_classes))


def infer(spec: Union[str, Spec], input_shape: Any, **overrides: Any) -> Graph:
    """The checked :class:`Graph` of a spec (shapes, parameters, MACs) without allocating the
    network: the modules are built on the meta device and thrown away."""
    T = overrides.pop("T", None)
    fuse = overrides.pop("fuse", True)
    readout = overrides.pop("readout", "mean")
    memory = overrides.pop("memory", "compact")
    channels_last = overrides.pop("channels_last", False)
    naming = overrides.pop("naming", "spec")
    overrides.pop("init", None)
    return _compile(spec, input_shape, T=T, fuse=fuse, readout=readout, meta=True, overrides=overrides,
                    memory=memory, channels_last=channels_last, naming=naming).graph
