"""The degradation study (Table 2, Figure 3): does a deeper network train to a higher loss?

Networks of several depths, Spiking ResNet and SEW ResNet (and plain, optionally), are trained for
the same budget on the built-in synthetic data through the trainer (:func:`sewforge.train.train`),
and their final training loss is compared against depth. The networks are spec strings in the
style of 7B-Net, with ``k`` blocks at one resolution (one identity area, as the stages of the
ImageNet ResNets):

    c{w}k3s1-BN-{neuron}-MPk2s2-{{Block(c{w})}}*k-MPk2s2-MPk2s2-FC{classes}

Each run keeps its own folder (``runs/<family>-<depth>-seed<seed>``) with the trainer's checkpoints and
``summary.csv``; a finished run with the same recipe is reused rather than trained again.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .common import AnalysisError

__all__ = ["FAMILIES", "ZERO_INIT_POLICIES", "DegradationRun", "DEGRADATION_COLUMNS", "degradation_spec",
           "degradation_recipe", "degradation_study", "loss_by_depth"]

#: family -> registered block
FAMILIES = {"spiking": "SpikingResNet", "sew": "SEW", "plain": "Plain"}
#: which families start from zero init: "paper" = Spiking ResNet only (Table 2's Spiking ResNets
#: were trained with it, the SEW ResNets without), "on" = all, "off" = none
ZERO_INIT_POLICIES = ("paper", "on", "off")
DEGRADATION_COLUMNS = ("family", "block", "depth", "seed", "zero_init", "spec", "epochs", "train_loss", "train_acc",
                       "test_loss", "test_acc", "best_test_acc", "params", "seconds", "run")


@dataclass
class DegradationRun:
    family: str
    block: str
    depth: int
    seed: int
    zero_init: bool
    spec: str
    epochs: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    best_test_acc: float
    params: int
    seconds: float
    run: str

    def as_row(self) -> Dict[str, Any]:
        return asdict(self)


def degradation_spec(family: str, depth: int, *, width: int = 16, neuron: str = "IF", num_classes: int = 4) -> str:
    """The spec string of a ``depth``-block network of one family."""
    if family not in FAMILIES:
        raise AnalysisError(f"unknown family {family!r}: choose from {', '.join(FAMILIES)}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise AnalysisError(f"depth must be a positive number of blocks, got {depth!r}")
    return (f"c{width}k3s1-BN-{neuron}-MPk2s2-{{{FAMILIES[family]}(c{width})}}*{depth}-MPk2s2-MPk2s2-"
            f"FC{num_classes}")


def degradation_recipe(family: str, depth: int, *, output: str, epochs: int = 4, T: int = 4, batch_size: int = 32,
                       lr: float = 0.1, width: int = 16, neuron: str = "IF", g: str = "ADD", zero_init: bool = False,
                       num_train: int = 256, num_test: int = 128, size: int = 32, seed: int = 2020,
                       device: str = "auto") -> Any:
    """The trainer's recipe for one run: SGD (momentum 0.9, no weight decay) with a cosine schedule,
    as the paper's ImageNet runs, on the synthetic motion data."""
    from ..train import recipe_from_dict

    data = {
        "model": {"name": degradation_spec(family, depth, width=width, neuron=neuron), "zero_init": zero_init,
                  **({"g": g} if family == "sew" else {})},
        "data": {"name": "synthetic", "T": T, "kwargs": {"num_train": num_train, "num_test": num_test, "size": size}},
        "optimizer": {"name": "sgd", "lr": lr, "momentum": 0.9, "weight_decay": 0.0},
        "scheduler": {"name": "cosine"},
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "device": device,
        "output": str(output).replace("{", "{{").replace("}", "}}"),
    }
    return recipe_from_dict(data, source=f"degradation {family}-{depth}")


def _zero_init(policy: str, family: str) -> bool:
    if policy not in ZERO_INIT_POLICIES:
        raise AnalysisError(f"zero-init policy {policy!r}: choose one of {', '.join(ZERO_INIT_POLICIES)}")
    return policy == "on" or (policy == "paper" and family == "spiking")


def _finished(run_dir: Path, recipe: Any) -> Optional[List[Dict[str, float]]]:
    """The history of a finished run in ``run_dir`` with exactly this recipe, else None; a run with
    another recipe raises, so that nothing is overwritten by accident."""
    from ..train import load_checkpoint, recipe_to_dict

    last = run_dir / "last.pt"
    if not last.exists():
        return None
    state = load_checkpoint(last)
    if state.get("recipe") != recipe_to_dict(recipe):
        raise AnalysisError(f"{str(run_dir)!r} holds a run with another recipe; pass --overwrite to train it "
                            "again, or choose another --out")
    if int(state.get("epoch", 0)) < recipe.epochs:
        return None
    return [dict(r) for r in state["history"]]


def degradation_study(families: Sequence[str] = ("spiking", "sew"), depths: Sequence[int] = (1, 2, 4, 8), *,
                      seeds: Sequence[int] = (2020,), out: str = "runs/analysis/degradation", zero_init: str = "paper",
                      overwrite: bool = False, log: Callable[[str], None] = print,
                      **recipe_kwargs: Any) -> List[DegradationRun]:
    """Train every (family, depth, seed) for the same budget and collect the final losses.

    ``recipe_kwargs`` go to :func:`degradation_recipe` (epochs, T, batch_size, lr, width, neuron, g,
    num_train, num_test, size, device). Runs live in ``out/runs/<family>-<depth>-seed<seed>``.
    """
    from ..train import train

    if not families:
        raise AnalysisError("no families to train: pass at least one of " + ", ".join(FAMILIES))
    if not depths:
        raise AnalysisError("no depths to train: pass at least one positive number of blocks")
    if not seeds:
        raise AnalysisError("no seeds: pass at least one")
    results: List[DegradationRun] = []
    for family in families:
        for depth in sorted(set(depths)):
            for seed in seeds:
                name = f"{family}-{depth}-seed{seed}"
                run_dir = Path(out) / "runs" / name
                zi = _zero_init(zero_init, family)
                recipe = degradation_recipe(family, depth, output=str(run_dir), zero_init=zi, seed=seed,
                                            **recipe_kwargs)
                history = None if overwrite else _finished(run_dir, recipe)
                if history is None:
                    log(f"training {name}: {recipe.model.name} for {recipe.epochs} epochs")
                    history = train(recipe, overwrite=True, progress=False, log=lambda msg: log("  " + msg)).history
                else:
                    log(f"reusing {run_dir} (finished, same recipe)")
                last = history[-1]
                results.append(DegradationRun(
                    family, FAMILIES[family], depth, seed, zi, recipe.model.name, int(last["epoch"]),
                    float(last["train_loss"]), float(last["train_acc"]), float(last["test_loss"]),
                    float(last["test_acc"]), float(last.get("best_test_acc", math.nan)), _count_params(recipe),
                    float(sum(r.get("seconds", 0.0) for r in history)), str(run_dir)))
    return results


def _count_params(recipe: Any) -> int:
    from ..spec import infer

    graph = infer(recipe.model.name, (2, recipe.data.kwargs["size"], recipe.data.kwargs["size"]))
    return int(sum(n.params for n in graph.nodes))


def loss_by_depth(runs: Sequence[DegradationRun], families: Sequence[str], depths: Sequence[int],
                  seeds: Sequence[int] = (2020,)) -> List[str]:
    """The final training loss of every family at every depth (the mean over seeds), as lines."""
    lines = ["final training loss by depth" + (" (mean over seeds)" if len(seeds) > 1 else "") + ":"]
    for family in families:
        cells = []
        for depth in sorted(set(depths)):
            losses = [r.train_loss for r in runs if r.family == family and r.depth == depth]
            cells.append(f"{depth}: {sum(losses) / len(losses):.4f}")
        lines.append(f"  {family:<8} " + "  ".join(cells))
    return lines
