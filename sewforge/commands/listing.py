"""List what is registered (core and plugins): ``sewforge list neurons '*IF*'``."""
from __future__ import annotations

import argparse

from .. import registry

_KINDS = {
    "neurons": registry.NEURONS,
    "surrogates": registry.SURROGATES,
    "elementwise": registry.ELEMENTWISE,
    "blocks": registry.BLOCKS,
    "models": registry.MODELS,
    "datasets": registry.DATASETS,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", choices=sorted(_KINDS), help="which registry to list")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style wildcard, case-insensitive")


def run(args: argparse.Namespace) -> int:
    reg = _KINDS[args.kind]
    entries = reg.entries(args.pattern)
    width = max([len(e.name) for e in entries] + [4])
    for e in entries:
        origin = "" if e.package == "sewforge" else f"  [{e.package} {e.version}]".rstrip()
        print(f"{e.name:<{width}}  {e.description}{origin}")
    for group, pkg, err in registry.plugin_errors():
        if group == reg.group:
            print(f"(plugin {pkg} failed to load: {err})")
    return 0
