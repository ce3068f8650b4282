"""Global settings written into a parsed spec (``neuron=``, ``g=``, ``surrogate=``, ``zero_init``,
``v_threshold``, ``num_classes``), so that ``to_spec`` shows the network that is built."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..checks import positive_int
from ..registry import BLOCKS, ELEMENTWISE, NEURONS, SURROGATES
from .errors import SpecError, close_matches
from .graph import COMMON_NEURON_ARGS, DEFAULT_NEURON
from .nodes import Block, Call, Linear, Neuron, Node, Repeat, Spec

__all__ = ["apply_overrides"]


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
