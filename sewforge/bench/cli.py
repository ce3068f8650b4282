"""``python -m sewforge.bench <suite> [options]``."""
from __future__ import annotations

import argparse
from typing import List, Optional

from . import neurons

SUITES = {"neurons": neurons}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sewforge.bench", description=__doc__)
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, mod in SUITES.items():
        p = sub.add_parser(name, help=mod.__doc__.strip().splitlines()[0])
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    args = parser.parse_args(argv)
    if not args.suite:
        parser.print_help()
        return 2
    return int(args._run(args) or 0)
