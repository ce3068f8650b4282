"""Training from YAML recipes: ``sewforge train recipes/quickstart.yaml key=value`` (the command
line is :mod:`sewforge.commands.train`; ``python -m sewforge.train`` runs it).

- :mod:`.recipe`: the typed, validated recipe schema and its loader,
- :mod:`.engine`: the training loop (AMP, random temporal delete, DDP, firing rates),
- :mod:`.checkpoint`: atomic, ``weights_only``-loadable checkpoints with generator states,
- :mod:`.runlog`: the run folder (summary.csv, TensorBoard, curves.png) and progress display,
- :mod:`.distributed`: ``torchrun`` process groups (NCCL on GPUs, gloo on CPUs),
"""
from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint
from .engine import NonFiniteError, NonFiniteLossError, RunFolderError, TrainResult, evaluate_checkpoint, train
from .recipe import (DataConfig, ModelConfig, OptimizerConfig, Recipe, RecipeError, SchedulerConfig, dump_recipe,
                     load_recipe, recipe_from_dict, recipe_to_dict)

__all__ = ["train", "evaluate_checkpoint", "TrainResult", "NonFiniteError", "NonFiniteLossError", "RunFolderError",
           "Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RecipeError",
           "load_recipe", "recipe_from_dict", "recipe_to_dict", "dump_recipe", "load_checkpoint",
           "CheckpointError"]
