"""Train a model from a YAML recipe (the same as ``python -m sewforge.train``).

  sewforge train recipes/quickstart.yaml [KEY=VALUE ...] [--resume [PATH]]
  sewforge train --eval-only --checkpoint runs/quickstart/best.pt
"""
from __future__ import annotations

from ..train.cli import add_arguments, run

__all__ = ["add_arguments", "run"]
