"""The ``sewforge`` command line: ``sewforge <command> ...``.

Each command lives in :mod:`sewforge.commands` as a module with ``add_arguments(parser)`` and
``run(args) -> int``; this file only dispatches, importing a command when it is used.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

#: command name -> (module under sewforge.commands, one-line help)
COMMANDS = {
    "build": ("build", "build a network from a spec string or model name and print its layer table"),
    "train": ("train", "train a model from a YAML recipe"),
    "analyze": ("analyze", "firing rates, gradient amplitudes and the degradation study"),
    "convert": ("convert", "convert SpikingJelly or 2021 SEW checkpoints into sewforge checkpoints"),
    "export": ("export", "export a network to NIR (the Neuromorphic Intermediate Representation)"),
    "list": ("listing", "list registered neurons, surrogates, element-wise functions, blocks, models"),
    "bench": ("bench", "benchmarks against SpikingJelly 2.0: neurons, step, compile, gpu-check"),
}


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

    parser = argparse.ArgumentParser(prog="sewforge", description="Deep spiking residual networks (SEW ResNet).")
    parser.add_argument("--version", action="version", version=f"sewforge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(f"sewforge.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"sewforge.commands.{module}":
                raise
            continue  # a command whose module is not part of this installation
        p = sub.add_parser(name, help=help_text, description=(mod.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
