"""Spec strings in the paper's notation -> checked graph -> multi-step network.

``build("c32k3s1-BN-PLIF-{SEW Block (c32)-MPk2s2}*7-FC11", input_shape=(2, 128, 128), T=16)``
parses the string (:func:`parse`, names resolved through the registries), applies global
overrides, unrolls repetitions, infers every layer's shape, parameters and MACs
(:class:`Graph`), and lowers it to a :class:`SpecNet`. ``to_spec`` prints the canonical form,
which builds the same network. Every mistake raises :class:`SpecError` with a caret under the
token.
"""
from __future__ import annotations

from .. import blocks as _blocks  # noqa: F401  (registers the core blocks the parser resolves)
from .errors import SpecError
from .graph import DEFAULT_NEURON, Graph, GraphNode
from .rewrite import apply_overrides
from .net import READOUTS, SpecNet, build, infer
from .nodes import (BatchNorm, Block, Call, Conv, Dropout, GlobalPool, Linear, Neuron, Node, Pool, Repeat, Spec,
                    to_spec)
from .parser import parse, tokenize
from .profile import LayerRow, format_table, profile_model

__all__ = ["SpecError", "parse", "tokenize", "to_spec", "build", "infer", "SpecNet", "Graph", "GraphNode",
           "apply_overrides", "READOUTS", "DEFAULT_NEURON", "LayerRow", "profile_model", "format_table",
           "Spec", "Node", "Conv", "BatchNorm", "Neuron", "Pool", "GlobalPool", "Linear", "Dropout", "Block",
           "Repeat", "Call"]
