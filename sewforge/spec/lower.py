"""The construction of one module per unrolled layer, with shape inference: every mistake is a
:class:`SpecError` pointing at its token. Blocks compute their own output shape
(``block.out_shape``), so a plugin block needs no change here."""
from __future__ import annotations

import functools
import math
from typing import Any, List, Sequence, Tuple

from torch import nn

from ..layers import Conv2d, FeaturePool, SeqFold, SharedDropout
from ..neurons import create_neuron, neuron_needs_channels
from ..registry import BLOCKS, NEURONS, SURROGATES
from .errors import SpecError, close_matches, located
from .graph import COMMON_NEURON_ARGS, GraphNode, Shape, unroll
from .nodes import BatchNorm, Block, Call, Conv, Dropout, GlobalPool, Linear, Neuron, Pool, Spec

__all__ = ["construct"]


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
        return located(spec, node, f"{node}: {what} has no argument {unknown[0]!r}",
                        suggestions=close_matches(unknown[0], accepted, cutoff=0.5),
                        hint=f"{what} accepts: {', '.join(accepted)}")
    return located(spec, node, f"{node}: {exc}")


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
            raise located(spec, node, f"{node}: {msg}") from None
        params = sum(p.numel() for p in module.parameters())
        nodes.append(GraphNode(index, str(node), kind, shape, out, params, 0, getattr(node, "span", (0, 0)), node))
        modules.append(module)
        shape = out
    return nodes, modules


def _needs_map(spec: Spec, node: Any, shape: Shape) -> Tuple[int, int, int]:
    if len(shape) != 3:
        where = f"a flat vector of {shape[0]} features" if len(shape) == 1 else f"shaped {shape}"
        raise located(spec, node, f"{node} needs a feature map (C, H, W), but its input is {where}",
                       hint="convolutions, pooling to a map and blocks must come before the first FC")
    return shape  # type: ignore[return-value]


def _conv_out(spec: Spec, node: Any, size: int, kernel: int, stride: int, pad: int, dims: str) -> int:
    out = (size + 2 * pad - kernel) // stride + 1
    if out < 1:
        raise located(spec, node, f"{node}: the input ({dims}) is smaller than the kernel {kernel} "
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
        conv = Conv2d(c, node.channels, node.kernel, node.stride, node.pad, bias=bias)
        return "conv", SeqFold(conv), (node.channels, oh, ow)
    if isinstance(node, BatchNorm):
        kw = dict(node.kwargs)
        if len(shape) == 3:
            return "bn", SeqFold(nn.BatchNorm2d(shape[0], **kw)), shape
        if len(shape) == 1:
            return "bn", SeqFold(nn.BatchNorm1d(shape[0], **kw)), shape
        raise located(spec, node, f"BN needs (C, H, W) or (N,) input, got {shape}")
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
            raise located(spec, node, f"{node} on input {_shape_text(shape)}: {exc}") from None
        if len(out) != 3 or min(out) < 1:
            raise located(spec, node, f"{node} on input {_shape_text(shape)} gives an empty output {out}",
                           hint="use a larger input or fewer strided blocks")
        return "block", block, out
    raise TypeError(f"not a spec node: {node!r}")
