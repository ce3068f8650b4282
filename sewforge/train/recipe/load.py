"""Loading a recipe: a file (with its ``base:`` chain) or plain data, ``key=value`` overrides with
dotted keys, then every check; :class:`RecipeError` lists all problems with where they came from."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .files import Origins, load_file
from .schema import Recipe, RecipeError
from .template import fill_output
from .validate import build_recipe

__all__ = ["load_recipe", "recipe_from_dict", "parse_override"]


def parse_override(text: str) -> Tuple[str, Any]:
    """``'optimizer.lr=1e-3'`` -> ``('optimizer.lr', '1e-3')``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", key):
        raise RecipeError([f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.01"])
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise RecipeError([f"override {text!r}: the value is not valid YAML: {exc}"]) from None
    return key, parsed


def _apply_override(data: Dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def recipe_from_dict(data: Mapping[str, Any], *, source: str = "<recipe>", overrides: Sequence[str] = (),
                     stem: Optional[str] = None, _origins: Optional[Origins] = None,
                     _problems: Optional[List[str]] = None) -> Recipe:
    """A validated :class:`Recipe` from plain data (e.g. the copy kept in a checkpoint)."""
    origins = _origins or Origins()
    problems = list(_problems or [])
    data = _copy(data)
    data.pop("base", None)
    for text in overrides:
        key, value = parse_override(text)
        _apply_override(data, key, value)
        origins.where[key] = f"override {text!r}"
        # every key below an overridden section comes from the override too
        if isinstance(value, dict):
            for sub in _flatten(value, key + "."):
                origins.where[sub] = f"override {text!r}"
    recipe = build_recipe(data, origins, source, problems)
    if not problems:
        fill_output(recipe, stem or Path(source).stem, origins.of("output", source), problems)
    if problems:
        raise RecipeError(problems)
    return recipe


def _flatten(d: Mapping[str, Any], prefix: str) -> List[str]:
    keys = []
    for k, v in d.items():
        keys.append(prefix + str(k))
        if isinstance(v, Mapping):
            keys += _flatten(v, f"{prefix}{k}.")
    return keys


def _copy(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {k: _copy(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_copy(v) for v in data]
    return data


def load_recipe(path: Union[str, Path], overrides: Sequence[str] = ()) -> Recipe:
    """Read, merge (``base:``), override and validate a recipe file; raise :class:`RecipeError`."""
    path = Path(path)
    origins = Origins()
    problems: List[str] = []
    try:
        data = load_file(path, origins, problems)
        return recipe_from_dict(data, source=str(path), overrides=overrides, stem=path.stem,
                                _origins=origins, _problems=problems)
    except RecursionError:  # "a: &x [*x]": a YAML alias inside its own anchor
        raise RecipeError([f"{path}: a YAML anchor (&name) is used inside itself (*name), which makes an endless "
                           "value; repeat the value instead"]) from None
