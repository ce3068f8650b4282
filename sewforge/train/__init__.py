"""Training from YAML recipes: ``sewforge train recipes/quickstart.yaml key=value`` (the command
line is :mod:`sewforge.commands.train`; ``python -m sewforge.train`` runs it).

- :mod:`.recipe`: the typed recipe schema, reading YAML with lines, checks and overrides,
- :mod:`.loop`: the run (``train``, ``evaluate_checkpoint``): set-up, the epochs, saving,
- :mod:`.epochs`: one training epoch (AMP, random temporal delete) and one test pass,
- :mod:`.resume`: continuing from a checkpoint (weights, optimizer, schedule, random streams),
- :mod:`.runfolder`: owning a run folder and turning write errors into one line,
- :mod:`.finite`: stopping on NaN or infinite samples, losses and parameters,
- :mod:`.meters`: the firing-rate meter; :mod:`.compile`: ``torch.compile`` or eager,
- :mod:`.factories`: the recipe's model, data sets, optimizer and schedule,
- :mod:`.loaders`: data loaders and samplers; :mod:`.runtime`: seeds, threads, precision,
- :mod:`.checkpoint`: atomic, ``weights_only``-loadable checkpoints with generator states,
- :mod:`.runlog`: the run folder (summary.csv, TensorBoard, curves.png) and progress display,
- :mod:`.logs`: what a run says, through the logger ``sewforge.train``: the console and train.log,
- :mod:`.distributed`: ``torchrun`` process groups (NCCL on GPUs, gloo on CPUs),
- :mod:`.errors`: the errors a run stops with.
"""
from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint
from .errors import NonFiniteError, NonFiniteLossError, RunFolderError
from .loop import TrainResult, evaluate_checkpoint, train
from .recipe import (DataConfig, ModelConfig, OptimizerConfig, Recipe, RecipeError, SchedulerConfig, dump_recipe,
                     load_recipe, recipe_from_dict, recipe_to_dict)

__all__ = ["train", "evaluate_checkpoint", "TrainResult", "NonFiniteError", "NonFiniteLossError", "RunFolderError",
           "Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RecipeError",
           "load_recipe", "recipe_from_dict", "recipe_to_dict", "dump_recipe", "load_checkpoint",
           "CheckpointError"]
