"""Train a model from a YAML recipe (``sewforge train`` and ``python -m sewforge.train`` are this command).

  python -m sewforge.train recipes/quickstart.yaml                 train
  python -m sewforge.train recipes/quickstart.yaml epochs=3 optimizer.lr=1e-3
  python -m sewforge.train recipes/quickstart.yaml --resume        continue <output>/last.pt
  python -m sewforge.train --resume runs/quickstart epochs=20      continue (and extend) a run folder
  python -m sewforge.train --eval-only --checkpoint runs/quickstart/best.pt
  torchrun --nproc_per_node=8 -m sewforge.train recipes/imagenet_sew_resnet18.yaml

Overrides are KEY=VALUE with dotted keys for sections; values are read as YAML.  Without a recipe
file, the recipe saved in the checkpoint is used.  Everything is validated before any work starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.recipe import Recipe, RecipeError, dump_recipe, load_recipe, recipe_from_dict

__all__ = ["add_arguments", "run"]


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue a run: without PATH from <output>/last.pt, else from a checkpoint or run folder")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an output folder that holds an earlier run (deletes its files)")
    p.add_argument("--eval-only", action="store_true", help="only test the weights of --checkpoint")
    p.add_argument("--checkpoint", metavar="PATH", help="checkpoint (or run folder) for --eval-only")
    p.add_argument("--print-recipe", action="store_true",
                   help="validate, print the resolved recipe and exit without training")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or per-step lines")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = ("%(prog)s [RECIPE.yaml] [KEY=VALUE ...] [--resume [PATH]] [--overwrite] "
               "[--eval-only --checkpoint PATH] [--print-recipe] [--no-progress]")
    # REMAINDER, re-parsed in run(): options may then come before, between or after the items
    p.add_argument("items", nargs=argparse.REMAINDER, metavar="RECIPE.yaml | KEY=VALUE",
                   help="a recipe file (optional with --resume PATH / --checkpoint) and overrides such as "
                        "optimizer.lr=1e-3 data.T=8")
    _add_options(p)
    p.set_defaults(train_prog=p.prog)


def _parse_items(args: argparse.Namespace) -> argparse.Namespace:
    inner = argparse.ArgumentParser(prog=getattr(args, "train_prog", "sewforge train"), add_help=False)
    inner.add_argument("items", nargs="*")
    _add_options(inner)
    parsed = inner.parse_intermixed_args(list(args.items or []))
    for key, value in vars(parsed).items():
        if key == "items" or value not in (None, False):
            setattr(args, key, value)
    return args


def _split(items: Sequence[str]) -> Tuple[Optional[str], List[str]]:
    recipe: Optional[str] = None
    overrides: List[str] = []
    for item in items:
        if "=" in item:
            overrides.append(item)
        elif recipe is None:
            recipe = item
        else:
            raise RecipeError([f"two recipe files given ({recipe!r} and {item!r}); overrides are KEY=VALUE"])
    return recipe, overrides


def _checkpoint_recipe(path: str, overrides: Sequence[str]) -> Recipe:
    ckpt = load_checkpoint(path)
    stored = ckpt.get("recipe")
    if not isinstance(stored, dict):
        raise CheckpointError(f"checkpoint {path!r} holds no recipe; give the recipe file as well")
    return recipe_from_dict(stored, source=f"{path} (recipe saved in the checkpoint)", overrides=overrides,
                            stem=Path(path).stem)


def _resolve(args: argparse.Namespace) -> Recipe:
    items = list(args.items)
    if isinstance(args.resume, str) and ("=" in args.resume or args.resume.endswith((".yaml", ".yml"))):
        items.insert(0, args.resume)  # "--resume recipe.yaml" or "--resume epochs=9": the flag, then an item
        args.resume = True
    recipe_path, overrides = _split(items)
    if args.eval_only and not args.checkpoint:
        raise RecipeError(["--eval-only needs --checkpoint PATH (a .pt file or a run folder)"])
    if args.checkpoint and not args.eval_only:
        raise RecipeError(["--checkpoint is for --eval-only; to continue training use --resume PATH"])
    if args.eval_only and args.resume:
        raise RecipeError(["--eval-only and --resume cannot be combined"])
    if recipe_path is not None:
        recipe = load_recipe(recipe_path, overrides)
    elif args.checkpoint:
        recipe = _checkpoint_recipe(args.checkpoint, overrides)
    elif isinstance(args.resume, str):
        recipe = _checkpoint_recipe(args.resume, overrides)
    else:
        raise RecipeError(["no recipe: give a recipe file (e.g. recipes/quickstart.yaml), or --resume PATH / "
                           "--eval-only --checkpoint PATH to use the recipe saved in a checkpoint"])
    if isinstance(args.resume, str) and not any(o.split("=", 1)[0].strip() == "output" for o in overrides):
        folder = Path(args.resume)
        recipe.output = str(folder if folder.is_dir() else folder.parent)  # the run continues where it lives
    return recipe


def _interrupted(recipe: Optional[Recipe], args: argparse.Namespace) -> str:
    """One line for Ctrl-C: how to continue the run, or to start it over."""
    if recipe is None or args.eval_only or args.print_recipe:
        return "interrupted"
    from ..train.runlog import finished_epochs

    folder = Path(recipe.output)
    prog = getattr(args, "train_prog", None) or "sewforge train"
    again = " ".join([prog] + list(getattr(args, "items", None) or []))
    if (folder / "last.pt").exists():
        done = finished_epochs(folder)
        return (f"interrupted: {str(folder)!r} keeps the checkpoint of epoch {done}; continue with "
                f"'{again} --resume' or start over with '{again} --overwrite'")
    return (f"interrupted before the first epoch ended (no checkpoint in {str(folder)!r}); rerun '{again}' "
            "to start over")


def run(args: argparse.Namespace) -> int:
    from ..train.distributed import PeerError
    from ..train.errors import NonFiniteError, RunFolderError
    from ..train.loop import evaluate_checkpoint, train

    recipe: Optional[Recipe] = None
    try:
        args = _parse_items(args)
        recipe = _resolve(args)
        if args.print_recipe:
            print(dump_recipe(recipe), end="")
            return 0
        if args.eval_only:
            evaluate_checkpoint(recipe, args.checkpoint, progress=not args.no_progress)
        else:
            result = train(recipe, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
            if result.history and _is_main():
                print(f"done: best test accuracy {result.best_test_acc:.2f}% at epoch {result.best_epoch}; "
                      f"run folder {result.output}")
        return 0
    except (RecipeError, CheckpointError, RunFolderError, NonFiniteError, PeerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{_interrupted(recipe, args)}", file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError) as exc:
        # data or model set-up problems (missing files, unknown names, bad shapes, folders that cannot
        # be written) explain themselves
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2


def _is_main() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0
