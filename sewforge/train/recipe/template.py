"""The run folder's name: ``output`` filled in with ``{recipe}`` (the file name without .yaml) and
recipe fields such as ``{data.T}`` or ``{optimizer.lr:.0e}``; plain values and simple formats only."""
from __future__ import annotations

import dataclasses
import re
import string
from typing import Any, Dict, List

from .schema import Recipe

__all__ = ["fill_output"]

_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?")
#: what a field of the output template may be formatted with: fill/align, sign, a width and a
#: precision of at most three digits, and a type (e.g. ``{optimizer.lr:.0e}``, ``{seed:03d}``)
_SPEC_RE = re.compile(r"(.?[<>^=])?[+\- ]?0?\d{0,3}(\.\d{1,3})?[bcdeEfFgGnosxX%]?")


def _template_value(name: str, fields_: Dict[str, Any]) -> Any:
    """The value of ``{name}`` in the output template: a recipe field or ``section.field`` holding a
    plain value; no other attribute, no indexing."""
    if not _FIELD_RE.fullmatch(name):
        raise ValueError(f"{{{name}}} is not a field name (write {{seed}} or {{section.key}}, without [] or calls)")
    head, _, key = name.partition(".")
    if head not in fields_:
        raise ValueError(f"{{{name}}}: the recipe has no key {head!r}")
    value = fields_[head]
    if key:
        names = {f.name for f in dataclasses.fields(value)} if dataclasses.is_dataclass(value) else set()
        if key not in names:
            raise ValueError(f"{{{name}}}: {head!r} has no key {key!r}")
        value = getattr(value, key)
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise ValueError(f"{{{name}}} is a {type(value).__name__}, not a single value")
    return value


def _fill_template(template: str, fields_: Dict[str, Any]) -> str:
    parts = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        parts.append(literal)
        if name is None:
            continue
        if conversion is not None:
            raise ValueError(f"{{{name}!{conversion}}}: conversions (!r, !s, !a) are not supported")
        if not _SPEC_RE.fullmatch(spec or ""):
            raise ValueError(f"{{{name}:{spec}}}: format {spec!r} is not a simple format such as '03d' or '.0e' "
                             "(width and precision are at most 3 digits)")
        parts.append(format(_template_value(name, fields_), spec or ""))
    return "".join(parts)


def fill_output(recipe: Recipe, stem: str, at: str, problems: List[str]) -> None:
    """Fill in ``recipe.output`` (``stem``: the recipe's file name without .yaml); a template that
    cannot be filled in is a problem reported at ``at``."""
    fields_: Dict[str, Any] = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(recipe)}
    fields_["recipe"] = stem
    try:
        recipe.output = _fill_template(recipe.output, fields_)
    except (ValueError, TypeError) as exc:
        problems.append(f"{at}: output: cannot fill in {recipe.output!r}: {exc}; "
                        "use {recipe} or recipe fields such as {data.T}, {seed}, {model.g}")
