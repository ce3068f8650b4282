"""Continuing a run from a checkpoint: the weights, the optimizer state, the learning-rate schedule
where the recipe kept it, the loss scaler, the epochs done and the random streams; what changed in
the recipe is said in one line."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, load_checkpoint, require_resumable, restore_rng
from .distributed import DistContext
from .recipe import Recipe, recipe_to_dict
from .runtime import seed_everything

__all__ = ["RunState", "resume_path", "load_resumable", "restore", "continue_random_streams", "recipe_diff"]


@dataclass
class RunState:
    """Where a run stands: the epochs done (one history row each) and the best test accuracy."""

    start_epoch: int = 0
    best_acc: float = 0.0
    best_epoch: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    rng: Optional[List[Dict[str, Any]]] = None  # the generator states of every process, as saved


def resume_path(resume: Union[bool, str, Path], output: Path) -> Path:
    """``--resume``: ``<output>/last.pt``; ``--resume PATH``: a checkpoint, or a run folder's last.pt."""
    if resume is True:
        return output / "last.pt"
    p = Path(resume)
    return p / "last.pt" if p.is_dir() else p


def load_resumable(resume: Union[bool, str, Path], output: Path) -> Tuple[Dict[str, Any], Path]:
    """The checkpoint ``resume`` names and its path; :class:`CheckpointError` when there is none or it
    cannot be continued."""
    path = resume_path(resume, output)
    if resume is True and not path.exists():
        raise CheckpointError(f"nothing to resume: {str(path)!r} does not exist (no epoch of this run "
                              "has finished); start the run without --resume")
    ckpt = load_checkpoint(path)
    require_resumable(ckpt, path)
    return ckpt, path


def _load_weights(model: nn.Module, ckpt: Dict[str, Any], path: Path, recipe: Recipe) -> None:
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"the weights in {str(path)!r} do not fit model {recipe.model.name!r}: {exc}\n"
                              "resume with the recipe the run was started with (its args.yaml), or start a new "
                              "run in another output folder") from None


def _load_optimizer(optimizer: torch.optim.Optimizer, ckpt: Dict[str, Any], path: Path, recipe: Recipe) -> None:
    """The saved optimizer state, keeping the recipe's learning rate (not the old run's)."""
    initial_lrs = [group.get("initial_lr") for group in optimizer.param_groups]
    old_opt = ((ckpt.get("recipe") or {}).get("optimizer") or {}).get("name")
    if old_opt is not None and str(old_opt).lower() != recipe.optimizer.name.lower():
        raise CheckpointError(f"{str(path)!r} holds the state of optimizer {old_opt!r}, but the recipe asks for "
                              f"{recipe.optimizer.name!r}; resume with optimizer.name={old_opt}, or start a new run "
                              "in another output folder")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"the optimizer state in {str(path)!r} does not fit the recipe's optimizer "
                              f"{recipe.optimizer.name!r} ({type(exc).__name__}: {exc}); resume with the recipe the "
                              "run was started with (its args.yaml)") from None
    for group, lr0 in zip(optimizer.param_groups, initial_lrs):
        if lr0 is not None:
            group["initial_lr"] = lr0


def restore(ckpt: Dict[str, Any], path: Path, recipe: Recipe, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, scaler: Any, say: Callable[[str], None]) -> RunState:
    """Load ``ckpt`` into the model, optimizer, scheduler (when the schedule is unchanged) and scaler;
    say what the recipe changed; return where the run stands."""
    _load_weights(model, ckpt, path, recipe)
    _load_optimizer(optimizer, ckpt, path, recipe)
    old_recipe = ckpt.get("recipe") or {}
    new_recipe = recipe_to_dict(recipe)
    same_schedule = all(old_recipe.get(k) == new_recipe[k] for k in ("scheduler", "epochs", "optimizer"))
    if scheduler is not None and ckpt.get("scheduler") and same_schedule:
        scheduler.load_state_dict(ckpt["scheduler"])
    changed = recipe_diff(old_recipe, new_recipe)
    if changed:
        say("resuming with a changed recipe (the learning rate follows the new one): " + "; ".join(changed))
    if ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    start_epoch = int(ckpt["epoch"])
    return RunState(start_epoch, float(ckpt["best_test_acc"]), int(ckpt["best_epoch"]),
                    [dict(r) for r in ckpt["history"]][:start_epoch], ckpt.get("rng"))


def continue_random_streams(state: RunState, ctx: DistContext, recipe: Recipe, say: Callable[[str], None]) -> None:
    """Every process continues its saved random streams (bit for bit like an uninterrupted run); with
    another number of processes they restart from the seed, and the run says so."""
    if state.rng is not None and len(state.rng) == ctx.world_size:
        restore_rng(state.rng[ctx.rank])
        return
    say(f"the checkpoint was written by {len(state.rng or [])} processes, this run has {ctx.world_size}: "
        "random streams restart from the seed (the run will not repeat the original exactly)")
    seed_everything(recipe.seed + ctx.rank + 1000 * state.start_epoch)


def recipe_diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: old -> new`` for every recipe value that differs (the output folder aside)."""
    out = []
    for key in new:
        a, b = old.get(key), new[key]
        if isinstance(a, dict) and isinstance(b, dict) and key != "kwargs":
            out += recipe_diff(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" != "output":
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
