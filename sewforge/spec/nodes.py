"""Typed nodes of a parsed spec and the canonical printer.

A spec is a sequence of nodes; ``Repeat`` nests sequences. Nodes are frozen dataclasses that
compare by meaning only (the source span is kept for error messages but excluded from equality),
so ``parse(to_spec(nodes)) == nodes`` is the round-trip invariant. Names are the registries'
canonical spelling (``PLIF``, ``SEW``), keyword arguments are sorted by key.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Tuple, Union

__all__ = ["Call", "Conv", "BatchNorm", "Neuron", "Pool", "GlobalPool", "Linear", "Dropout", "Block",
           "Repeat", "Node", "Spec", "Span", "KwArgs", "format_value", "to_spec", "DEFAULT_BLOCK_KERNEL",
           "DEFAULT_DROPOUT"]

Span = Tuple[int, int]
KwArgs = Tuple[Tuple[str, Any], ...]

#: the kernel size every registered block uses unless told otherwise (the uniform constructor)
DEFAULT_BLOCK_KERNEL = 3
DEFAULT_DROPOUT = 0.5

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_KEYWORDS = ("true", "false", "none")


def _span() -> Any:
    return field(default=(0, 0), compare=False, repr=False)


@dataclass(frozen=True)
class Call:
    """A value written as a call, ``Sigmoid(alpha=4)``: a name with arguments."""

    name: str
    args: Tuple[Any, ...] = ()
    kwargs: KwArgs = ()

    def __str__(self) -> str:
        return self.name + _format_args(self.args, self.kwargs, always=True)


@dataclass(frozen=True)
class Conv:
    """``c{C}k{K}s{S}[p{P}]``: 2-D convolution; padding ``K // 2`` unless ``p`` is given.
    ``bias=None`` means "no bias when a BN follows, else bias"."""

    channels: int
    kernel: int
    stride: int = 1
    padding: Optional[int] = None
    bias: Optional[bool] = None
    span: Span = _span()

    @property
    def pad(self) -> int:
        return self.kernel // 2 if self.padding is None else self.padding

    def __str__(self) -> str:
        text = f"c{self.channels}k{self.kernel}s{self.stride}"
        if self.padding is not None:
            text += f"p{self.padding}"
        return text + _format_args((), (("bias", self.bias),) if self.bias is not None else ())


@dataclass(frozen=True)
class BatchNorm:
    """``BN``: batch norm over channels (statistics over T*B, as the paper)."""

    kwargs: KwArgs = ()
    span: Span = _span()

    def __str__(self) -> str:
        return "BN" + _format_args((), self.kwargs)


@dataclass(frozen=True)
class Neuron:
    """A registered neuron, ``PLIF`` or ``LIF(tau=2)``."""

    name: str
    kwargs: KwArgs = ()
    span: Span = _span()

    def __str__(self) -> str:
        return format_name(self.name) + _format_args((), self.kwargs)


@dataclass(frozen=True)
class Pool:
    """``MPk{K}s{S}[p{P}]`` / ``APk{K}s{S}[p{P}]``: max or average pooling (2-D on feature maps,
    1-D over the features of a flat vector, e.g. the voting layer ``FC110-PLIF-APk10s10``)."""

    kind: str  # "MP" or "AP"
    kernel: int
    stride: int
    padding: int = 0
    span: Span = _span()

    def __str__(self) -> str:
        return f"{self.kind}k{self.kernel}s{self.stride}" + (f"p{self.padding}" if self.padding else "")


@dataclass(frozen=True)
class GlobalPool:
    """``GAP``: global average pooling to ``C x 1 x 1``."""

    span: Span = _span()

    def __str__(self) -> str:
        return "GAP"


@dataclass(frozen=True)
class Linear:
    """``FC{N}``: flatten, then a fully connected layer with N outputs."""

    features: int
    bias: Optional[bool] = None
    span: Span = _span()

    def __str__(self) -> str:
        return f"FC{self.features}" + _format_args((), (("bias", self.bias),) if self.bias is not None else ())


@dataclass(frozen=True)
class Dropout:
    """``DP`` / ``DP(p)``: dropout with one mask shared by all time steps."""

    p: float = DEFAULT_DROPOUT
    span: Span = _span()

    def __str__(self) -> str:
        return "DP" if self.p == DEFAULT_DROPOUT else f"DP({format_value(self.p)})"


@dataclass(frozen=True)
class Block:
    """A registered residual block, ``SEW(c64s2, g=IAND)``.

    ``channels=None`` keeps the incoming channel count; ``kernel=None`` is the block's default
    (3). ``kwargs`` go to the block's constructor; ``g`` and ``zero_init`` are the common ones and
    ``neuron`` (a name or a :class:`Call`) overrides the neuron the block would otherwise inherit
    from the nearest neuron token before it.
    """

    name: str
    channels: Optional[int] = None
    stride: int = 1
    kernel: Optional[int] = None
    kwargs: KwArgs = ()
    span: Span = _span()

    def kwarg(self, key: str, default: Any = None) -> Any:
        return dict(self.kwargs).get(key, default)

    def __str__(self) -> str:
        shape = ""
        if self.channels is not None:
            shape += f"c{self.channels}"
        if self.kernel is not None:
            shape += f"k{self.kernel}"
        if self.stride != 1:
            shape += f"s{self.stride}"
        return format_name(self.name) + _format_args((shape,) if shape else (), self.kwargs, raw_args=True)


@dataclass(frozen=True)
class Repeat:
    """``{...}*N`` (or ``<...>*N``): the body N times, each copy with its own parameters."""

    body: Tuple["Node", ...]
    times: int
    span: Span = _span()

    def __str__(self) -> str:
        return "{" + to_spec(self.body) + "}*" + str(self.times)


Node = Union[Conv, BatchNorm, Neuron, Pool, GlobalPool, Linear, Dropout, Block, Repeat]


@dataclass(frozen=True)
class Spec:
    """A parsed spec: its nodes, and the text they came from (for error messages)."""

    nodes: Tuple[Node, ...]
    source: str = field(default="", compare=False, repr=False)

    def to_spec(self) -> str:
        return to_spec(self.nodes)

    def __str__(self) -> str:
        return self.to_spec()


def to_spec(nodes: Any) -> str:
    """The canonical text of a node sequence (or a :class:`Spec`, or one node)."""
    if isinstance(nodes, Spec):
        nodes = nodes.nodes
    if not isinstance(nodes, (tuple, list)):
        return str(nodes)
    return "-".join(str(n) for n in nodes)


def format_name(name: str) -> str:
    """A registry name as spec text (quoted when it is not a plain word, e.g. ``'my-neuron'``)."""
    if _WORD.match(name) and name.lower() not in _KEYWORDS:
        return name
    return _quote(name)


def _quote(text: str) -> str:
    quote = "'" if "'" not in text else '"'
    return quote + text + quote


def format_value(value: Any) -> str:
    """A keyword value as spec text; the parser reads it back to an equal value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return repr(value)
        return _quote(repr(value))  # inf/nan are not numbers in the grammar; the consumer rejects them
    if isinstance(value, Call):
        return str(value)
    if isinstance(value, str):
        if _WORD.match(value) and value.lower() not in _KEYWORDS:
            return value
        return _quote(value)
    name = getattr(value, "name", None)  # Surrogate / ElementwiseFunction objects passed as overrides
    if isinstance(name, str):
        alpha = getattr(value, "alpha", None)
        param = getattr(value, "param_name", None)
        if param and alpha is not None and alpha != getattr(value, "default", alpha):
            return str(Call(name, (), ((param, float(alpha)),)))
        return format_name(name)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} in a spec string")


def _format_args(args: Tuple[Any, ...], kwargs: KwArgs, *, always: bool = False, raw_args: bool = False) -> str:
    parts = [a if raw_args else format_value(a) for a in args]
    parts += [f"{k}={format_value(v)}" for k, v in kwargs]
    if not parts and not always:
        return ""
    return "(" + ", ".join(parts) + ")"
