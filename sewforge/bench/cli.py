"""``python -m sewforge.bench <suite> [options]``: neurons, step, compile, gpu-check."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from . import compile as compile_suite, gpucheck, neurons, step

SUITES = {"neurons": neurons, "step": step, "compile": compile_suite, "gpu-check": gpucheck}


def _probe(argv: List[str]) -> int:
    """Internal: measure one case's peak RSS in this (fresh) process and print it as JSON."""
    spec = json.loads(argv[0])
    mod = neurons if spec["kind"] == "neuron" else step
    print(json.dumps(mod.probe(spec)))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_probe"]:
        return _probe(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m sewforge.bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, mod in SUITES.items():
        p = sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0], description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="time with glibc's default allocator settings instead of sewforge.tune_cpu_allocator() "
                             "(which applies to every framework measured in the process)")
    args = parser.parse_args(argv)
    if not args.suite:
        parser.print_help()
        return 2
    if not args.no_tune_malloc:
        from ..kernels.layout import tune_cpu_allocator

        tuned = tune_cpu_allocator()
        print(f"CPU allocator: {'memory kept for reuse (sewforge.tune_cpu_allocator)' if tuned else 'glibc defaults'}; "
              f"THP_MEM_ALLOC_ENABLE={__import__('os').environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    return int(args._run(args) or 0)
