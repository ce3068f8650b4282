"""The data loaders of a run: every process trains on its part of a (seed, epoch) shuffle and tests
a disjoint shard of the test set."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .distributed import DistContext
from .recipe import Recipe

__all__ = ["ShardSampler", "Loaders", "training_loaders", "eval_loader", "check_sample"]


class ShardSampler(Sampler):
    """Every rank tests a disjoint part of the test set (no padding, so the sums are exact)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _worker_ignores_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches the whole process group: a loading worker leaves it to the main process,
    which prints one line and shuts the workers down (no traceback from each worker)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _loader(dataset: Dataset, batch_size: int, sampler: Sampler, recipe: Recipe, device: torch.device,
            drop_last: bool) -> DataLoader:
    workers = recipe.data.workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, persistent_workers=False,
                      worker_init_fn=_worker_ignores_ctrl_c if workers > 0 else None)


def eval_loader(recipe: Recipe, dataset: Dataset, ctx: DistContext) -> DataLoader:
    """This process's shard of the test set, in order."""
    return _loader(dataset, recipe.test_batch_size or recipe.batch_size,
                   ShardSampler(len(dataset), ctx.rank, ctx.world_size), recipe, ctx.device, False)


@dataclass
class Loaders:
    train_sampler: DistributedSampler  # set_epoch() before each epoch: the order is a function of (seed, epoch)
    train: DataLoader
    test: DataLoader


def training_loaders(recipe: Recipe, datasets: Dict[str, Dataset], ctx: DistContext) -> Loaders:
    sampler = DistributedSampler(datasets["train"], num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=recipe.seed)
    train = _loader(datasets["train"], recipe.batch_size, sampler, recipe, ctx.device, recipe.drop_last)
    if len(train) == 0:
        raise ValueError(f"the training split of {recipe.data.name!r} has {len(datasets['train'])} samples per "
                         f"process, fewer than batch_size={recipe.batch_size} with drop_last=true")
    return Loaders(sampler, train, eval_loader(recipe, datasets["test"], ctx))


def check_sample(recipe: Recipe, dataset: Dataset) -> None:
    """The first sample has the shape the recipe needs (events for random temporal delete)."""
    x, _ = dataset[0]
    if recipe.T_train is not None and torch.as_tensor(x).dim() != 4:
        raise ValueError(f"T_train={recipe.T_train} (random temporal delete) needs event samples [T, C, H, W], "
                         f"but dataset {recipe.data.name!r} gives {tuple(torch.as_tensor(x).shape)}; "
                         "set T_train: null")
