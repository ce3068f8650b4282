"""Reading recipe files: YAML with the file and line of every key, and ``base: other.yaml``
(a path relative to the file) merged under the file's own keys, section by section."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import yaml

from .schema import RecipeError

__all__ = ["Origins", "load_file"]


class Origins:
    """Where each dotted key came from: ``file:line`` or ``override 'k=v'``."""

    def __init__(self) -> None:
        self.where: Dict[str, str] = {}

    def of(self, key: str, default: str) -> str:
        while key:
            if key in self.where:
                return self.where[key]
            key = key.rpartition(".")[0]
        return default


def _read_yaml(path: Path, origins: Origins, problems: List[str], prefix: str = "") -> Dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError([f"{path}: recipe file not found"]) from None
    except OSError as exc:
        raise RecipeError([f"{path}: cannot read the recipe: {exc}"]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError([f"{path}: not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}); "
                           "a recipe is a YAML text file"]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError([f"{path}: not valid YAML: {exc}"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError([f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}"])

    def walk(n: Any, pre: str) -> None:
        if not isinstance(n, yaml.MappingNode):
            return
        seen = set()
        for key_node, value_node in n.value:
            key = f"{pre}{key_node.value}"
            where = f"{path}:{key_node.start_mark.line + 1}"
            if key in seen:
                problems.append(f"{where}: {key}: key given twice in the same mapping (YAML keeps only the last)")
            seen.add(key)
            origins.where[key] = where
            walk(value_node, key + ".")

    walk(node, prefix)
    return data


def _merge(base: Dict[str, Any], top: Mapping[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def load_file(path: Path, origins: Origins, problems: List[str], chain: Tuple[Path, ...] = ()) -> Dict[str, Any]:
    path = Path(path)
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in chain + (resolved,))
        raise RecipeError([f"{path}: 'base' recipes form a cycle: {cycle}"])
    own = Origins()
    data = _read_yaml(path, own, problems)
    base_ref = data.pop("base", None)
    if base_ref is None:
        origins.where.update(own.where)
        return data
    if not isinstance(base_ref, str):
        raise RecipeError([f"{own.of('base', str(path))}: base: expected a path to another recipe, "
                           f"got {base_ref!r}"])
    base_path = (path.parent / base_ref)
    if not base_path.exists():
        raise RecipeError([f"{own.of('base', str(path))}: base: recipe {str(base_path)!r} not found "
                           f"(paths are relative to {str(path.parent)!r})"])
    merged = _merge(load_file(base_path, origins, problems, chain + (resolved,)), data)
    origins.where.update({k: v for k, v in own.where.items() if k != "base"})
    return merged
