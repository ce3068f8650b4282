"""Benchmarks against SpikingJelly 2.0 (the same as ``python -m sewforge.bench``).

  sewforge bench neurons --device cuda --json neurons.json
  sewforge bench step sew7b_gesture sew_resnet18 --quick
  sewforge bench compile
  sewforge bench gpu-check --out GPU_CHECK.md

Numbers are recorded in BENCHMARKS.md with the device named; see each suite's --help.
"""
from __future__ import annotations

import argparse
import json
import os

__all__ = ["add_arguments", "run", "SUITES"]

#: suite name -> module under sewforge.bench
SUITES = {"neurons": "neurons", "step": "step", "compile": "compile", "gpu-check": "gpucheck"}


def _suite(name: str):
    import importlib

    return importlib.import_module(f"sewforge.bench.{SUITES[name]}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="time with glibc's default allocator settings instead of sewforge.tune_cpu_allocator() "
                        "(which applies to every framework measured in the process)")
    sub = p.add_subparsers(dest="suite", metavar="SUITE")
    for name in SUITES:
        mod = _suite(name)
        sp = sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0], description=mod.__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(sp)
        sp.set_defaults(_suite_run=mod.run)
    # internal: measure one case's peak RSS in this (fresh) process and print it as JSON
    probe = sub.add_parser("_probe")
    probe.add_argument("case")
    probe.set_defaults(_suite_run=_probe)


def _probe(args: argparse.Namespace) -> int:
    spec = json.loads(args.case)
    mod = _suite("neurons" if spec["kind"] == "neuron" else "step")
    print(json.dumps(mod.probe(spec)))
    return 0


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "suite", None):
        print("sewforge bench: error: name a suite: " + ", ".join(SUITES), flush=True)
        return 2
    if args.suite != "_probe" and not args.no_tune_malloc:
        from ..kernels.layout import tune_cpu_allocator

        tuned = tune_cpu_allocator()
        print(f"CPU allocator: {'memory kept for reuse (sewforge.tune_cpu_allocator)' if tuned else 'glibc defaults'}; "
              f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}")
    return int(args._suite_run(args) or 0)
