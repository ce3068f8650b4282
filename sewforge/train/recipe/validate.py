"""Checking a recipe: every value against its field's type, range and choices, the relations
between fields, and every name against its registry (ours and timm's), so that all problems are
reported at once, each with where it came from, before any work starts.  PyYAML reads ``1e-3`` as a
string (YAML 1.1 wants a dot); a float field accepts it."""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from ...checks import close_matches
from .files import Origins
from .schema import Recipe

__all__ = ["build_recipe"]

_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?|mps")


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return f"{_describe(inner[0])} or null"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number (e.g. 0.1 or 1e-3)"
    if tp is str:
        return "a string"
    if origin in (dict, Dict):
        return "a mapping of names to values"
    if origin in (list, List):
        return "a list of integers" if args[0] is int else "a list"
    return "any value"


class _Bad(Exception):
    pass


def _coerce(value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union and type(None) in args:
        if value is None:
            return None
        return _coerce(value, [a for a in args if a is not type(None)][0])
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            return float(value.strip())  # PyYAML reads 1e-3 (no dot) as a string
        raise _Bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Bad
    if origin in (dict, Dict):
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
        raise _Bad
    if origin in (list, List):
        if isinstance(value, (list, tuple)):
            return [_coerce(v, args[0]) for v in value]
        raise _Bad
    raise TypeError(f"unsupported recipe field type {tp!r}")  # pragma: no cover - schema bug


def _check_range(value: Any, meta: Mapping[str, Any]) -> Optional[str]:
    if value is None:
        return None
    for v in value if isinstance(value, list) else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number, got {v!r}"
        for key, ok, text in (("min", lambda a, b: a >= b, ">="), ("gt", lambda a, b: a > b, ">"),
                              ("lt", lambda a, b: a < b, "<")):
            if key in meta and not ok(v, meta[key]):
                return f"must be {text} {meta[key]}, got {v!r}"
    if "choices" in meta and value not in meta["choices"]:
        close = close_matches(value, meta["choices"], n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{value!r} is not one of {', '.join(meta['choices'])}{hint}"
    return None


def _suggest(key: str, allowed: Sequence[str]) -> str:
    close = close_matches(key, allowed, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def _build(cls: Any, data: Mapping[str, Any], prefix: str, origins: Origins, where: str,
           problems: List[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: Dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        loc = origins.of(dotted, where)
        if key not in fields:
            section = f"section '{prefix[:-1]}'" if prefix else "the top level"
            problems.append(f"{loc}: {dotted}: unknown key; {_suggest(str(key), list(fields))}"
                            f"allowed keys in {section}: {', '.join(fields)}")
            continue
        f = fields[key]
        tp = hints[key]
        if dataclasses.is_dataclass(f.default_factory):
            if value is None:
                value = {}
            if not isinstance(value, Mapping):
                problems.append(f"{loc}: {dotted}: expected a section (a mapping with keys "
                                f"{', '.join(fl.name for fl in dataclasses.fields(tp))}), got {value!r}")
                continue
            values[key] = _build(tp, value, dotted + ".", origins, where, problems)
            continue
        try:
            coerced = _coerce(value, tp)
        except _Bad:
            problems.append(f"{loc}: {dotted}: expected {_describe(tp)}, got {value!r} "
                            f"({type(value).__name__}); {f.metadata.get('help', '')}".rstrip("; "))
            continue
        bad = _check_range(coerced, f.metadata)
        if bad:
            problems.append(f"{loc}: {dotted}: {bad}")
            continue
        values[key] = coerced
    return cls(**values)


def _check_relations(recipe: Recipe, origins: Origins, where: str, problems: List[str]) -> None:
    def at(key: str) -> str:
        return origins.of(key, where)

    if not recipe.model.name:
        problems.append(f"{at('model')}: model.name: required: a zoo model name (see `sewforge list models`) "
                        "or a spec string")
    if recipe.T_train is not None and recipe.T_train > recipe.data.T:
        problems.append(f"{at('T_train')}: T_train: must be <= data.T = {recipe.data.T} "
                        f"(frames kept out of T), got {recipe.T_train}")
    if not _DEVICE.fullmatch(recipe.device):
        problems.append(f"{at('device')}: device: expected auto, cpu, cuda or cuda:N, got {recipe.device!r}")
    ms = recipe.scheduler.milestones
    if any(m < 1 for m in ms) or any(b <= a for a, b in zip(ms, ms[1:])):
        problems.append(f"{at('scheduler.milestones')}: scheduler.milestones: expected increasing epochs >= 1, "
                        f"got {ms}")
    if recipe.scheduler.name == "multistep" and not ms:
        problems.append(f"{at('scheduler.name')}: scheduler.milestones: required by the 'multistep' schedule")
    _check_names(recipe, at, problems)


def _registry_problem(registry: Any, name: Optional[str], key: str, at: Any) -> Optional[str]:
    if name is None:
        return None
    try:
        registry.entry(name)
    except KeyError as exc:
        return f"{at(key)}: {key}: {exc.args[0]}"
    return None


def _check_names(recipe: Recipe, at: Any, problems: List[str]) -> None:
    """Names looked up in registries (ours and timm's) are checked now, not at epoch 1."""
    from ... import registry

    try:  # importing the data package registers the built-in datasets
        import sewforge.data  # noqa: F401
    except ModuleNotFoundError as exc:
        if exc.name != "sewforge.data":
            raise
    checks = [(registry.ELEMENTWISE, recipe.model.g, "model.g"), (registry.NEURONS, recipe.model.neuron, "model.neuron"),
              (registry.SURROGATES, recipe.model.surrogate, "model.surrogate"),
              (registry.DATASETS, recipe.data.name, "data.name")]
    for reg, name, key in checks:
        bad = _registry_problem(reg, name, key, at)
        if bad:
            problems.append(bad)
    if recipe.model.name:
        bad = _model_problem(recipe.model.name)
        if bad:
            problems.append(f"{at('model.name')}: model.name: {bad}")
    from timm.optim import list_optimizers

    known = list_optimizers()
    opt = recipe.optimizer.name.lower()
    if opt.split("_")[-1] not in known:
        close = close_matches(opt, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        problems.append(f"{at('optimizer.name')}: optimizer.name: unknown optimizer {recipe.optimizer.name!r}; "
                        f"{hint}timm knows: {', '.join(known)}")


def _model_problem(name: str) -> Optional[str]:
    """A zoo name must be registered; anything else must parse as a spec string."""
    try:
        import sewforge.models  # noqa: F401  (registers the zoo)
        from ...registry import MODELS
        from ...spec import SpecError, parse
    except ModuleNotFoundError:  # an installation without the model zoo
        return None
    if name.strip() in MODELS:
        return None
    try:
        parse(name)
    except SpecError as exc:
        return "\n      ".join(str(exc).splitlines())
    return None


def build_recipe(data: Mapping[str, Any], origins: Origins, where: str, problems: List[str]) -> Recipe:
    """The :class:`Recipe` of ``data``, with every problem appended to ``problems`` (the fields in
    error keep their defaults)."""
    recipe = _build(Recipe, data, "", origins, where, problems)
    _check_relations(recipe, origins, where, problems)
    return recipe
