"""Training recipes: a typed, validated configuration read from YAML plus ``key=value`` overrides.

A recipe is a tree of dataclasses (:mod:`.schema`).  Loading (:mod:`.load`) reads the file with the
line of every key and its ``base:`` chain (:mod:`.files`), applies the overrides, checks every key
and value (:mod:`.validate`) and fills in the output folder's name (:mod:`.template`), reporting
*all* problems at once, each with the file and line (or the command-line override) it came from
and what would be allowed.  Unknown keys get close-match suggestions.
"""
from __future__ import annotations

from .load import load_recipe, parse_override, recipe_from_dict
from .schema import (SCHEDULERS, DataConfig, ModelConfig, OptimizerConfig, Recipe, RecipeError, SchedulerConfig,
                     dump_recipe, recipe_to_dict)

__all__ = ["Recipe", "ModelConfig", "DataConfig", "OptimizerConfig", "SchedulerConfig", "RecipeError",
           "load_recipe", "recipe_from_dict", "recipe_to_dict", "dump_recipe", "parse_override",
           "SCHEDULERS"]
