"""The checked graph of a spec: its layers with shapes, parameters and MACs, and the unrolling of
repetitions into the flat layer sequence it is built from.

Shapes are per sample and per time step: ``(C, H, W)`` for feature maps, ``(N,)`` after ``FC``.
Global overrides are :mod:`.rewrite`'s, the construction of one module per layer :mod:`.lower`'s.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from .errors import located
from .nodes import Block, Call, Neuron, Node, Repeat, Spec

__all__ = ["Graph", "GraphNode", "unroll", "DEFAULT_NEURON", "MAX_LAYERS", "COMMON_NEURON_ARGS", "Shape"]

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
        raise located(spec, biggest, f"the spec expands to {total} layers, more than the limit of {MAX_LAYERS}; "
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
