"""Name -> component registries, with lazy entry-point plugins.

One ``Registry`` type, several instances (neurons, surrogates, element-wise functions, blocks,
models).  Lookups are case-insensitive, duplicates raise, misses suggest close names, and
third-party packages add entries through the entry-point group of each registry.  A plugin is
imported only when a registry is first listed or a name is first missed, and a plugin that fails
to import is reported (package and error) without breaking anything else.
``SEWFORGE_PLUGIN_AUTOLOAD=0`` turns plugin discovery off.
"""
from __future__ import annotations

import fnmatch
import inspect
import os
import re
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .checks import close_matches

__all__ = ["Entry", "Registry", "PluginError", "plugin_errors", "natural_key",
           "NEURONS", "SURROGATES", "ELEMENTWISE", "BLOCKS", "MODELS", "DATASETS"]


class PluginError(RuntimeWarning):
    """Warning category for plugins that failed to load."""


@dataclass(frozen=True)
class Entry:
    """One registered component."""

    name: str
    factory: Any
    description: str = ""
    package: str = "sewforge"
    version: str = ""
    metadata: Tuple[Tuple[str, Any], ...] = field(default_factory=tuple)

    def meta(self, key: str, default: Any = None) -> Any:
        return dict(self.metadata).get(key, default)


def natural_key(text: str) -> List[Any]:
    """Sort key so that 'resnet18' comes before 'resnet101'."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


_PLUGIN_ERRORS: List[Tuple[str, str, str]] = []
_ALL_REGISTRIES: List["Registry"] = []
#: (package, version) of the plugins being imported: their registrations are attributed to them
_LOADING_PLUGIN: List[Tuple[str, str]] = []


def plugin_errors() -> List[Tuple[str, str, str]]:
    """``(group, package, error)`` for every plugin that failed to load so far."""
    return list(_PLUGIN_ERRORS)


def _autoload_enabled() -> bool:
    return os.environ.get("SEWFORGE_PLUGIN_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off")


def _core_version() -> str:
    try:
        return metadata.version("sewforge")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+local"


class Registry:
    """A case-insensitive mapping of names to :class:`Entry`.

    ``kind`` is the singular noun used in messages ("neuron"); ``group`` is the entry-point group
    that plugins use ("sewforge.neurons").  An entry point may point at a module (importing it
    registers its entries through the decorators) or at a callable taking this registry.
    """

    def __init__(self, kind: str, group: Optional[str] = None):
        self.kind = kind
        self.group = group
        self._entries: Dict[str, Entry] = {}
        self._plugins_loaded = False
        _ALL_REGISTRIES.append(self)

    # -- registration ----------------------------------------------------------------------
    def register(
        self,
        name: Optional[str] = None,
        *,
        description: str = "",
        package: Optional[str] = None,
        version: Optional[str] = None,
        **meta: Any,
    ) -> Callable[[Any], Any]:
        """Decorator: ``@NEURONS.register("PLIF", description=...)``, or bare ``@NEURONS.register``
        (registers under the object's ``__name__``)."""
        if name is not None and not isinstance(name, str):  # used bare: name is the object itself
            obj = name
            self.add(getattr(obj, "__name__", None), obj, description=description, package=package,
                     version=version, **meta)
            return obj

        def deco(obj: Any) -> Any:
            self.add(name or getattr(obj, "__name__"), obj, description=description,
                     package=package, version=version, **meta)
            return obj

        return deco

    def add(self, name: str, factory: Any, *, description: str = "", package: Optional[str] = None,
            version: Optional[str] = None, **meta: Any) -> Entry:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
            raise ValueError(
                f"{self.kind} name {name!r} is invalid: use letters, digits, '_', '-' or '.', "
                "starting with a letter or '_'")
        key = name.lower()
        if key in self._entries:
            old = self._entries[key]
            raise ValueError(
                f"{self.kind} {name!r} is already registered (by {old.package} {old.version}); "
                f"choose another name or unregister {old.name!r} first")
        if package is None:
            package, plugin_version = _LOADING_PLUGIN[-1] if _LOADING_PLUGIN else ("sewforge", None)
            version = version or plugin_version
        if version is None:
            version = _core_version() if package == "sewforge" else _dist_version(package)
        if not description:
            doc = (getattr(factory, "__doc__", None) or "").strip()
            description = doc.splitlines()[0] if doc else ""
        entry = Entry(name, factory, description, package, version, tuple(sorted(meta.items())))
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> Entry:
        return self._entries.pop(self.entry(name).name.lower())

    # -- lookup ----------------------------------------------------------------------------
    def entry(self, name: str) -> Entry:
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        key = name.lower()
        if key not in self._entries:
            self.load_plugins()
        if key not in self._entries:
            raise KeyError(self._missing_message(name))
        return self._entries[key]

    def get(self, name: str) -> Any:
        return self.entry(name).factory

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name.lower() not in self._entries:
            self.load_plugins()
        return name.lower() in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def names(self, pattern: str = "*") -> List[str]:
        """Registered names matching a shell-style wildcard (case-insensitive), naturally sorted."""
        self.load_plugins()
        pat = pattern.lower()
        found = [e.name for k, e in self._entries.items() if fnmatch.fnmatchcase(k, pat)]
        return sorted(found, key=natural_key)

    def entries(self, pattern: str = "*") -> List[Entry]:
        return [self.entry(n) for n in self.names(pattern)]

    def _missing_message(self, name: str) -> str:
        names = [e.name for e in self._entries.values()]
        close = close_matches(name, names, n=3, cutoff=0.5)
        msg = f"unknown {self.kind} {name!r}"
        if close:
            msg += f"; did you mean {', '.join(repr(c) for c in close)}?"
        msg += f" Known {self.kind}s: {', '.join(sorted(names, key=natural_key)) or '(none)'}"
        failed = [f"{pkg} ({err})" for grp, pkg, err in _PLUGIN_ERRORS if grp == self.group]
        if failed:
            msg += f". Plugins that failed to load: {'; '.join(failed)}"
        return msg

    # -- plugins ---------------------------------------------------------------------------
    def load_plugins(self, force: bool = False) -> None:
        """Import the entry points of this registry's group once (lazily)."""
        if self.group is None or (self._plugins_loaded and not force):
            return
        self._plugins_loaded = True
        if not _autoload_enabled():
            return
        try:
            eps = metadata.entry_points(group=self.group)
        except Exception as exc:  # a broken environment must not break the core
            _report(self.group, "<entry points>", exc)
            return
        for ep in eps:
            dist = getattr(ep, "dist", None)
            pkg = dist.metadata["Name"] if dist is not None else ep.value.split(":")[0].split(".")[0]
            ver = dist.version if dist is not None else ""
            before = [(reg, dict(reg._entries)) for reg in _ALL_REGISTRIES]
            _LOADING_PLUGIN.append((pkg, ver))
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type):
                    obj(self)
                elif not callable(obj) and not inspect.ismodule(obj):
                    raise TypeError(f"entry point {ep.value!r} names an object of type {type(obj).__name__}, expected a module "
                                    "(importing it registers its entries) or a callable taking the registry")
            except SystemExit as exc:  # sys.exit() in a plugin must not end the program; Ctrl-C still does
                for reg, entries in before:
                    reg._entries = entries
                _report(self.group, f"{pkg} {ver}".strip() + f" (entry point {ep.name!r})",
                        RuntimeError(f"the plugin called sys.exit({exc.code!r}) while loading"))
            except Exception as exc:
                for reg, entries in before:  # a half-registered plugin is dropped as a whole
                    reg._entries = entries
                _report(self.group, f"{pkg} {ver}".strip() + f" (entry point {ep.name!r})", exc)
            finally:
                _LOADING_PLUGIN.pop()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


def _dist_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _report(group: str, package: str, exc: BaseException) -> None:
    err = f"{type(exc).__name__}: {exc}"
    _PLUGIN_ERRORS.append((group, package, err))
    warnings.warn(f"sewforge plugin {package} in group {group!r} failed to load and was skipped: {err}",
                  PluginError, stacklevel=3)


NEURONS = Registry("neuron", "sewforge.neurons")
SURROGATES = Registry("surrogate", "sewforge.surrogates")
ELEMENTWISE = Registry("element-wise function", "sewforge.elementwise")
BLOCKS = Registry("block", "sewforge.blocks")
MODELS = Registry("model", "sewforge.models")
DATASETS = Registry("dataset", "sewforge.datasets")
