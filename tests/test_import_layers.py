"""The package's dependencies point one way: each module imports only from lower layers.

The layers, lowest first (a module may import from its own subpackage and from any layer below):

    utilities   checks (suggestions, number checks), then registry, _triton, fileio, memory, _version,
                then jit (public Triton helpers)
    surrogates, elementwise      the element-wise functions of the kernels
    kernels -> layers (T*B folding, the spike-aware convolution) -> neurons -> blocks
                -> spec (parser, graph, builder) -> models (the zoo)
    data                         data sets and data transforms
    train                        the trainer (recipes, checkpoints, the loop)
    analysis, interop, testing   use models, data and the trainer as libraries; not each other
    bench                        benchmarks
    commands, cli                the command line (``cli.py`` in any package too)
    __main__                     ``python -m`` entry points, which call the command line
    sewforge/__init__            re-exports the public API; nothing inside the package imports it

Every import counts, including those inside functions (they are dependencies all the same).
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import sewforge

ROOT = Path(sewforge.__file__).parent

RANKS = {
    "registry": 0, "_triton": 0, "fileio": 0, "memory": 0, "_version": 0, "checks": -1,
    "jit": 1, "layers": 3.5,
    "surrogates": 2, "elementwise": 2,
    "kernels": 3, "neurons": 4, "blocks": 5, "spec": 6, "models": 7,
    "data": 8, "train": 9,
    "analysis": 10, "interop": 10, "testing": 10,
    "bench": 11,
    "commands": 12, "cli": 12, "__main__": 12.5,
}
CLI_RANK = 12
PACKAGE_RANK = 13  # sewforge/__init__.py


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The top-level unit of a dotted module name: ``sewforge.spec.graph`` -> ``spec``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _rank(module: str, path: Path = None) -> int:
    unit = _unit(module)
    if not unit:
        return PACKAGE_RANK
    if path is not None and path.stem in ("cli", "__main__"):
        return CLI_RANK + (0.5 if path.stem == "__main__" else 0)
    assert unit in RANKS, f"{module}: give sewforge/{unit} a layer in RANKS"
    return RANKS[unit]


def _imports(path: Path) -> Iterator[Tuple[int, str]]:
    """(line, imported sewforge module) for every import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "sewforge" or node.module.startswith("sewforge.")):
                target = node.module
            else:
                continue
            if target == "sewforge":  # from sewforge import X: a submodule, or the package's own API
                for alias in node.names:
                    sub = ROOT / alias.name
                    yield node.lineno, (f"sewforge.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").exists()
                                        else "sewforge")
            else:
                yield node.lineno, target
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "sewforge" or alias.name.startswith("sewforge."):
                    yield node.lineno, alias.name


FILES = sorted(ROOT.rglob("*.py"))


def test_every_subpackage_has_a_layer():
    units = {_unit(_module_name(p)) for p in FILES} - {""}
    assert units <= set(RANKS), f"not layered: {sorted(units - set(RANKS))}"


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_imports_point_down(path):
    module = _module_name(path)
    own_unit, own_rank = _unit(module), _rank(module, path)
    wrong = []
    for line, target in _imports(path):
        if _unit(target) == own_unit and own_unit:
            continue  # inside one subpackage
        if _rank(target) >= own_rank:
            wrong.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target} (layer {_rank(target)} "
                         f">= {own_rank})")
    assert not wrong, "\n".join(wrong)


def test_the_walker_sees_relative_lazy_and_package_imports(tmp_path):
    """The checker itself: a lazy relative import and ``from sewforge import create_model``."""
    src = ROOT / "models" / "__init__.py"
    found = [t for _, t in _imports(src)]
    assert "sewforge.registry" in found and "sewforge.spec" in found
    assert _rank("sewforge") == PACKAGE_RANK and _rank("sewforge.kernels.ops") == RANKS["kernels"]


def test_plugin_authors_find_everything_in_public_modules():
    """What CONTRIBUTING's recipes and the example plugin need is exported by public modules."""
    from sewforge.jit import HAS_TRITON, jit, tl  # noqa: F401
    from sewforge.neurons import BaseNeuron, ChargeEquation, check_tau  # noqa: F401
    from sewforge.registry import NEURONS, SURROGATES  # noqa: F401
    from sewforge.surrogates import Surrogate  # noqa: F401

    @jit
    def double(x):
        return 2 * x

    assert callable(double)
