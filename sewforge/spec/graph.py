"""From parsed nodes to a checked graph: global overrides, unrolling, neuron inheritance, shape
inference, and the construction of one module per node.

Shapes are per sample and per time step: ``(C, H, W)`` for feature maps, ``(N,)`` after ``FC``.
Every check names the token and points at it in the text. Blocks compute their own output shape
(``block.out_shape``), so a plugin block needs no change here.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..checks import positive_int
from ..layers import SeqFold
from ..neurons import create_neuron, neuron_needs_channels
from ..registry import BLOCKS, ELEMENTWISE, NEURONS, SURROGATES
from .errors import SpecError, close_matches
from .nodes import (
    BatchNorm,
    Block,
    Call,
    Conv,
    Dropout,
    GlobalPool,
    Linear,
    Neuron,
    Node,
    Pool,
    Repeat,
    Spec,
)

__all__ = ["Graph", "GraphNode", "apply_overrides", "construct", "unroll", "DEFAULT_NEURON", "MAX_LAYERS",
           "COMMON_NEURON_ARGS", "SharedDropout", "FeaturePool"]

#: the neuron of a block that has no neuron token before it and no ``neuron=`` argument
DEFAULT_NEURON = "IF"
#: more layers than this after unrolling is a typo, not a network
MAX_LAYERS = 10_000
#: neuron arguments every neuron takes; kept when ``neuron=`` replaces a neuron type
COMMON_NEURON_ARGS = ("v_threshold", "v_reset", "detach_reset", "surrogate", "stateful", "backend")

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class GraphNode:
    """One layer of the unrolled graph: what it is, where it came from, shapes and costs.

    ``out_shape`` is per sample and time step; ``macs`` are the dense multiply-accumulates of one
    time step for one sample (convolutions and linear layers, counted as if every input were
    non-zero).
    """

    index: int
    token: str
    kind: str  # conv, bn, neuron, pool, global_pool, fc, dropout, block
    in_shape: Shape
    out_shape: Shape
    params: int
    macs: int = 0
    span: Tuple[int, int] = field(default=(0, 0), compare=False)
    node: Any = field(default=None, compare=False, repr=False)

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "token": self.token, "kind": self.kind, "input_shape": list(self.in_shape),
                "output_shape": list(self.out_shape), "params": self.params, "macs": self.macs}


@dataclass(frozen=True)
class Graph:
    """The checked graph of a spec for one input shape."""

    spec: Spec
    input_shape: Shape
    nodes: Tuple[GraphNode, ...]

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape if self.nodes else self.input_shape

    @property
    def total_params(self) -> int:
        return sum(n.params for n in self.nodes)

    @property
    def total_macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    def to_spec(self) -> str:
        return self.spec.to_spec()

    def to_dict(self) -> Dict[str, Any]:
        return {"spec": self.to_spec(), "input_shape": list(self.input_shape),
                "output_shape": list(self.output_shape), "layers": [n.to_dict() for n in self.nodes],
                "total_params": self.total_params, "macs_per_step": self.total_macs}

    def __len__(self) -> int:
        return len(self.nodes)

    def __iter__(self) -> Iterator[GraphNode]:
        return iter(self.nodes)


# --------------------------------------------------------------------------------------------
# overrides
def _arg_error(msg: str, suggestions: Sequence[str] = (), hint: Optional[str] = None) -> SpecError:
    return SpecError(msg, suggestions=suggestions, hint=hint)


def _registered(registry, value: Any, what: str) -> str:
    name = getattr(value, "name", value)
    if not isinstance(name, str) or name not in registry:
        raise _arg_error(f"{what}={name!r}: unknown {registry.kind}",
                         close_matches(str(name), registry.names(), cutoff=0.5),
                         hint=f"known {registry.kind}s: {', '.join(registry.names())}")
    canonical = registry.entry(name).name
    if not isinstance(value, str) and registry.get(canonical) is not value and registry is ELEMENTWISE:
        raise _arg_error(f"{what}={value!r}: only registered element-wise functions can be written in a spec")
    return canonical


def _surrogate_value(value: Any) -> Any:
    if isinstance(value, (str, Call)):
        name = value.name if isinstance(value, Call) else value
        canonical = _registered(SURROGATES, name, "surrogate")
        return Call(canonical, value.args, value.kwargs) if isinstance(value, Call) else canonical
    name = getattr(value, "name", None)
    if name is None or name not in SURROGATES or not isinstance(value, SURROGATES.get(name)):
        raise _arg_error(f"surrogate={value!r}: pass a registered surrogate name such as 'ATan' or an instance "
                         "of a registered surrogate")
    param, alpha = getattr(value, "param_name", None), getattr(value, "alpha", None)
    canonical = SURROGATES.entry(name).name
    if param and alpha is not None and alpha != getattr(value, "default", alpha):
        return Call(canonical, (), ((param, float(alpha)),))
    return canonical


def _with_kwargs(kwargs: Tuple[Tuple[str, Any], ...], **updates: Any) -> Tuple[Tuple[str, Any], ...]:
    d = dict(kwargs)
    for k, v in updates.items():
        if v is _DROP:
            d.pop(k, None)
        else:
            d[k] = v
    return tuple(sorted(d.items()))


_DROP = object()


def apply_overrides(spec: Spec, *, neuron: Any = None, g: Any = None, surrogate: Any = None,
                    zero_init: Optional[bool] = None, v_threshold: Optional[float] = None,
                    num_classes: Optional[int] = None) -> Spec:
    """``spec`` with global settings written into its nodes (so ``to_spec`` shows them).

    ``neuron`` replaces the type of every neuron (keeping only the arguments all neurons share);
    ``surrogate`` and ``v_threshold`` are set on every neuron; ``g`` on every block that has an
    element-wise function (SEW blocks); ``zero_init`` on every block; ``num_classes`` replaces
    the size of the final ``FC``. ``None`` leaves a setting as the spec has it.
    """
    neuron_name = _registered(NEURONS, neuron, "neuron") if neuron is not None else None
    g_name = _registered(ELEMENTWISE, g, "g") if g is not None else None
    surrogate_value = _surrogate_value(surrogate) if surrogate is not None else None
    if v_threshold is not None:
        if isinstance(v_threshold, bool) or not isinstance(v_threshold, (int, float)) or not math.isfinite(v_threshold):
            raise _arg_error(f"v_threshold={v_threshold!r}: must be a finite number")
    if zero_init is not None and not isinstance(zero_init, bool):
        raise _arg_error(f"zero_init={zero_init!r}: must be True or False")
    if num_classes is not None:
        positive_int(num_classes, "num_classes", _arg_error)

    neuron_updates: Dict[str, Any] = {}
    if surrogate_value is not None:
        neuron_updates["surrogate"] = surrogate_value
    if v_threshold is not None:
        neuron_updates["v_threshold"] = v_threshold
    state = {"seen_neuron": False, "uses_g": False}

    def new_neuron(name: str, kwargs) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
        if neuron_name is not None and neuron_name != name:
            kwargs = tuple((k, v) for k, v in kwargs if k in COMMON_NEURON_ARGS)
            name = neuron_name
        return name, _with_kwargs(kwargs, **neuron_updates)

    def visit(nodes: Tuple[Node, ...]) -> Tuple[Node, ...]:
        out: List[Node] = []
        for node in nodes:
            if isinstance(node, Repeat):
                node = dataclasses.replace(node, body=visit(node.body))
            elif isinstance(node, Neuron):
                state["seen_neuron"] = True
                name, kwargs = new_neuron(node.name, node.kwargs)
                node = dataclasses.replace(node, name=name, kwargs=kwargs)
            elif isinstance(node, Block):
                updates: Dict[str, Any] = {}
                explicit = node.kwarg("neuron")
                wants_neuron = neuron_name is not None or neuron_updates
                if explicit is not None or (not state["seen_neuron"] and wants_neuron):
                    if explicit is None:
                        explicit = DEFAULT_NEURON
                    name, kwargs = (explicit.name, explicit.kwargs) if isinstance(explicit, Call) else (explicit, ())
                    name, kwargs = new_neuron(name, kwargs)
                    updates["neuron"] = Call(name, (), kwargs) if kwargs else name
                if _block_uses_g(node.name):
                    state["uses_g"] = True
                    if g_name is not None:
                        updates["g"] = g_name
                if zero_init is not None:
                    updates["zero_init"] = True if zero_init else _DROP
                node = dataclasses.replace(node, kwargs=_with_kwargs(node.kwargs, **updates))
            out.append(node)
        return tuple(out)

    nodes = visit(spec.nodes)
    if g_name is not None and not state["uses_g"]:
        raise _arg_error(f"g={g_name!r}: the element-wise function applies to SEW blocks, but this network has "
                         "none", hint="leave g unset for plain and Spiking ResNet networks")
    if num_classes is not None:
        last = nodes[-1]
        if not isinstance(last, Linear):
            raise SpecError(f"num_classes={num_classes}: the spec must end in FC{{N}} to set the number of "
                            f"classes, but it ends in {last}", spec.source or None,
                            last.span[0] if spec.source else None, last.span[1] if spec.source else None)
        nodes = nodes[:-1] + (dataclasses.replace(last, features=num_classes),)
    return Spec(nodes, spec.source)


def _block_uses_g(name: str) -> bool:
    entry = BLOCKS.entry(name)
    flag = entry.meta("uses_g")
    if flag is None:
        flag = getattr(entry.factory, "uses_g", False)
    return bool(flag)


# --------------------------------------------------------------------------------------------
# unrolling
def _count(nodes: Tuple[Node, ...]) -> int:
    return sum(_count(n.body) * n.times if isinstance(n, Repeat) else 1 for n in nodes)


def unroll(spec: Spec) -> List[Tuple[Node, Optional[Tuple[str, Tuple[Tuple[str, Any], ...]]]]]:
    """The flat layer sequence, each block paired with the neuron ``(name, kwargs)`` it uses.

    A block without a ``neuron=`` argument uses the nearest neuron token written before it in the
    text (so every copy of a repeated block uses the same neuron), or ``DEFAULT_NEURON``.
    """
    total = _count(spec.nodes)
    if total > MAX_LAYERS:
        biggest = max((n for n in spec.nodes if isinstance(n, Repeat)), key=lambda n: _count(n.body) * n.times,
                      default=spec.nodes[0])
        raise _located(spec, biggest, f"the spec expands to {total} layers, more than the limit of {MAX_LAYERS}; "
                                      "check the repetition counts")
    current: List[Optional[Tuple[str, Tuple[Tuple[str, Any], ...]]]] = [None]

    def walk(nodes: Tuple[Node, ...]) -> List[Tuple[Node, Any]]:
        out: List[Tuple[Node, Any]] = []
        for node in nodes:
            if isinstance(node, Repeat):
                body = walk(node.body)
                out.extend(body * node.times)
            elif isinstance(node, Neuron):
                current[0] = (node.name, node.kwargs)
                out.append((node, None))
            elif isinstance(node, Block):
                explicit = node.kwarg("neuron")
                if isinstance(explicit, Call):
                    resolved = (explicit.name, explicit.kwargs)
                elif isinstance(explicit, str):
                    resolved = (explicit, ())
                else:
                    resolved = current[0] or (DEFAULT_NEURON, ())
                out.append((node, resolved))
            else:
                out.append((node, None))
        return out

    return walk(spec.nodes)


# --------------------------------------------------------------------------------------------
# construction
class SharedDropout(nn.Module):
    """Dropout on ``[T, B, ...]`` with one mask per sample shared by all time steps, so a dropped
    unit stays silent for the whole sequence (the ``DP`` of the PLIF and SEW papers' code)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"SharedDropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        mask = torch.empty_like(x[0]).bernoulli_(1.0 - self.p).div_(1.0 - self.p)
        return x * mask

    def extra_repr(self) -> str:
        return f"p={self.p:g}"


class FeaturePool(nn.Module):
    """1-D pooling over the features of ``[N, F]`` (a voting layer after ``FC``)."""

    def __init__(self, pool: nn.Module):
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x.unsqueeze(1)).squeeze(1)


def _located(spec: Spec, node: Any, msg: str, hint: Optional[str] = None, suggestions=()) -> SpecError:
    span = getattr(node, "span", (0, 0))
    if spec.source and span[1] > span[0]:
        return SpecError(msg, spec.source, span[0], span[1], suggestions, hint)
    return SpecError(msg, suggestions=suggestions, hint=hint)


def _shape_text(shape: Shape) -> str:
    return "x".join(str(s) for s in shape)


def _instantiate(value: Any) -> Any:
    """Spec values to Python objects: a surrogate written as a call becomes a Surrogate."""
    if isinstance(value, Call):
        return SURROGATES.get(value.name)(*value.args, **dict(value.kwargs))
    return value


def _neuron_factory(name: str, kwargs) -> Any:
    kw = {k: _instantiate(v) for k, v in kwargs}
    return functools.partial(create_neuron, name, **kw)


def _accepted_args(factory: Any) -> List[str]:
    import inspect

    names: List[str] = []
    for obj in (factory, getattr(factory, "__init__", None)):
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):
            continue
        names += [p for p, v in params.items() if v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL) and p != "self"]
    if isinstance(factory, type) and issubclass(factory, nn.Module) and any(
            getattr(c, "__name__", "") == "BaseNeuron" for c in factory.__mro__):
        names += list(COMMON_NEURON_ARGS)
    return list(dict.fromkeys(names))


def _bad_arguments(spec: Spec, node: Any, what: str, factory: Any, given: Sequence[str], exc: Exception) -> SpecError:
    accepted = _accepted_args(factory)
    unknown = [k for k in given if accepted and k not in accepted]
    if unknown:
        return _located(spec, node, f"{node}: {what} has no argument {unknown[0]!r}",
                        suggestions=close_matches(unknown[0], accepted, cutoff=0.5),
                        hint=f"{what} accepts: {', '.join(accepted)}")
    return _located(spec, node, f"{node}: {exc}")


def construct(spec: Spec, input_shape: Shape, *, fuse: bool = True, meta: bool = False
              ) -> Tuple[List[GraphNode], List[nn.Module]]:
    """Build one module per unrolled node, inferring shapes; every error is a :class:`SpecError`.

    With ``meta=True`` the modules are built on the meta device (no memory, for shape and
    parameter inference only); zero-init is skipped there since it does not change shapes.
    """
    layers = unroll(spec)
    if not layers:
        raise SpecError("empty spec: expected at least one layer")
    shape: Shape = tuple(input_shape)
    nodes: List[GraphNode] = []
    modules: List[nn.Module] = []
    for index, (node, neuron) in enumerate(layers):
        nxt = layers[index + 1][0] if index + 1 < len(layers) else None
        try:
            kind, module, out = _lower_one(spec, node, neuron, shape, nxt, fuse=fuse, meta=meta)
        except SpecError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            raise _located(spec, node, f"{node}: {msg}") from None
        params = sum(p.numel() for p in module.parameters())
        nodes.append(GraphNode(index, str(node), kind, shape, out, params, 0, getattr(node, "span", (0, 0)), node))
        modules.append(module)
        shape = out
    return nodes, modules


def _needs_map(spec: Spec, node: Any, shape: Shape) -> Tuple[int, int, int]:
    if len(shape) != 3:
        where = f"a flat vector of {shape[0]} features" if len(shape) == 1 else f"shaped {shape}"
        raise _located(spec, node, f"{node} needs a feature map (C, H, W), but its input is {where}",
                       hint="convolutions, pooling to a map and blocks must come before the first FC")
    return shape  # type: ignore[return-value]


def _conv_out(spec: Spec, node: Any, size: int, kernel: int, stride: int, pad: int, dims: str) -> int:
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise _located(spec, node, f"{node}: the input ({dims}) is smaller than the kernel {kernel} "
                                   f"(with padding {pad}); the output would have no pixels",
                       hint="remove a pooling/strided layer before it, use a smaller kernel, or a larger input")
    return out


def _lower_one(spec: Spec, node: Any, neuron: Any, shape: Shape, nxt: Any, *, fuse: bool, meta: bool
               ) -> Tuple[str, nn.Module, Shape]:
    if isinstance(node, Conv):
        c, h, w = _needs_map(spec, node, shape)
        dims = _shape_text(shape)
        oh = _conv_out(spec, node, h, node.kernel, node.stride, node.pad, dims)
        ow = _conv_out(spec, node, w, node.kernel, node.stride, node.pad, dims)
        bias = node.bias if node.bias is not None else not isinstance(nxt, BatchNorm)
        conv = nn.Conv2d(c, node.channels, node.kernel, node.stride, node.pad, bias=bias)
        return "conv", SeqFold(conv), (node.channels, oh, ow)
    if isinstance(node, BatchNorm):
        kw = dict(node.kwargs)
        if len(shape) == 3:
            return "bn", SeqFold(nn.BatchNorm2d(shape[0], **kw)), shape
        if len(shape) == 1:
            return "bn", SeqFold(nn.BatchNorm1d(shape[0], **kw)), shape
        raise _located(spec, node, f"BN needs (C, H, W) or (N,) input, got {shape}")
    if isinstance(node, Neuron):
        factory = NEURONS.get(node.name)
        try:
            make = _neuron_factory(node.name, node.kwargs)
            module = make(**({"channels": shape[0]} if neuron_needs_channels(make) else {}))
        except (ValueError, TypeError) as exc:
            raise _bad_arguments(spec, node, f"neuron {node.name}", factory, [k for k, _ in node.kwargs], exc) from None
        return "neuron", module, shape
    if isinstance(node, Pool):
        if len(shape) == 1:
            n = _conv_out(spec, node, shape[0], node.kernel, node.stride, node.padding, f"{shape[0]} features")
            pool1d = (nn.MaxPool1d if node.kind == "MP" else nn.AvgPool1d)(node.kernel, node.stride, node.padding)
            return "pool", SeqFold(FeaturePool(pool1d)), (n,)
        c, h, w = _needs_map(spec, node, shape)
        dims = _shape_text(shape)
        oh = _conv_out(spec, node, h, node.kernel, node.stride, node.padding, dims)
        ow = _conv_out(spec, node, w, node.kernel, node.stride, node.padding, dims)
        pool = (nn.MaxPool2d if node.kind == "MP" else nn.AvgPool2d)(node.kernel, node.stride, node.padding)
        return "pool", SeqFold(pool), (c, oh, ow)
    if isinstance(node, GlobalPool):
        c, _, _ = _needs_map(spec, node, shape)
        return "global_pool", SeqFold(nn.AdaptiveAvgPool2d(1)), (c, 1, 1)
    if isinstance(node, Linear):
        features = math.prod(shape)
        linear = nn.Linear(features, node.features, bias=True if node.bias is None else node.bias)
        module = SeqFold(nn.Flatten(), linear) if len(shape) > 1 else SeqFold(linear)
        return "fc", module, (node.features,)
    if isinstance(node, Dropout):
        return "dropout", SharedDropout(node.p), shape
    if isinstance(node, Block):
        c, h, w = _needs_map(spec, node, shape)
        factory = BLOCKS.get(node.name)
        kwargs = {k: _instantiate(v) for k, v in node.kwargs if k != "neuron"}
        if meta:
            kwargs.pop("zero_init", None)
        if node.kernel is not None:
            kwargs["kernel_size"] = node.kernel
        neuron_name, neuron_kwargs = neuron
        try:
            make = _neuron_factory(neuron_name, neuron_kwargs)  # fail here with the neuron's own message
            make(**({"channels": c} if neuron_needs_channels(make) else {}))
        except (ValueError, TypeError) as exc:
            raise _bad_arguments(spec, node, f"neuron {neuron_name}", NEURONS.get(neuron_name),
                                 [k for k, _ in neuron_kwargs], exc) from None
        out_channels = node.channels if node.channels is not None else c
        try:
            block = factory(c, out_channels, node.stride, neuron=_neuron_factory(neuron_name, neuron_kwargs),
                            fuse=fuse, **kwargs)
        except TypeError as exc:
            raise _bad_arguments(spec, node, f"block {node.name}", factory, list(kwargs), exc) from None
        try:
            out = tuple(int(v) for v in block.out_shape((c, h, w)))
        except ValueError as exc:
            raise _located(spec, node, f"{node} on input {_shape_text(shape)}: {exc}") from None
        if len(out) != 3 or min(out) < 1:
            raise _located(spec, node, f"{node} on input {_shape_text(shape)} gives an empty output {out}",
                           hint="use a larger input or fewer strided blocks")
        return "block", block, out
    raise TypeError(f"not a spec node: {node!r}")
