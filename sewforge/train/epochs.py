"""One epoch of training (random temporal delete, AMP, clipping) and one pass over the test set
(all T frames, top-1 and top-5 accuracy, firing rate), summed over every process."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..data.transforms import temporal_delete, time_major
from .distributed import DistContext, all_reduce_sum
from .finite import check_test_samples, check_training_step
from .meters import FiringRateMeter
from .recipe import Recipe
from .runlog import Progress
from .runtime import autocast_dtype

__all__ = ["EpochStats", "train_epoch", "evaluate"]


@dataclass
class EpochStats:
    loss: float
    acc: float
    firing_rate: float = float("nan")
    acc5: float = float("nan")  # top-5 accuracy (Table 2's Acc@5); NaN with fewer than 5 classes


def train_epoch(ctx: DistContext, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                scaler: Any, recipe: Recipe, epoch: int, progress: bool) -> EpochStats:
    model.train()
    dev = ctx.device
    amp_dtype = autocast_dtype(recipe, dev)
    bar = Progress(len(loader), f"epoch {epoch + 1}/{recipe.epochs} train", enabled=progress and ctx.is_main)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    count = 0
    params = [p for p in model.parameters() if p.requires_grad]
    for step, (x, y) in enumerate(loader, 1):
        x = time_major(x.to(dev, non_blocking=True))
        y = y.to(dev, non_blocking=True)
        # a NaN input does not show in the loss (a neuron turns it into "no spike") but poisons the
        # batch-norm statistics and the gradients: the inputs are checked with the loss, in one sync
        inputs_finite = torch.isfinite(x).all()
        frames = temporal_delete(x, recipe.T_train) if recipe.T_train is not None else x
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=recipe.amp):
            logits = model(frames)
        loss = F.cross_entropy(logits.float(), y)
        value = loss.detach()
        check_training_step(ctx, loader, recipe, x, inputs_finite, value, epoch=epoch, step=step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if recipe.clip_grad is not None:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(params, recipe.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        b = y.shape[0]
        loss_sum += value.double() * b
        correct += (logits.detach().argmax(1) == y).sum()
        count += b
        if bar.enabled:
            bar.update(step, loss=float(loss_sum) / count, acc=100.0 * float(correct) / count)
    total_loss, total_correct, total_count = all_reduce_sum(ctx, [float(loss_sum), float(correct), float(count)])
    total_count = max(total_count, 1.0)
    return EpochStats(total_loss / total_count, 100.0 * total_correct / total_count)


@torch.no_grad()
def evaluate(ctx: DistContext, model: nn.Module, loader: DataLoader, recipe: Recipe, meter: FiringRateMeter,
             progress: bool, desc: str = "test") -> EpochStats:
    model.eval()
    dev = ctx.device
    amp_dtype = autocast_dtype(recipe, dev)
    bar = Progress(len(loader), desc, enabled=progress and ctx.is_main)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    correct5 = torch.zeros((), dtype=torch.int64, device=dev)
    count = 0
    # the first sample holding NaN or infinite values, by its place in this process's order (-1: none);
    # checked as in training, but with no sync per step: a reported accuracy is never one of NaN frames
    first_bad = torch.full((), -1, dtype=torch.int64, device=dev)
    with meter.measuring():
        for step, (x, y) in enumerate(loader, 1):
            x = x.to(dev, non_blocking=True)
            ok = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
            here = torch.where(ok.all(), -1, (~ok).to(torch.int64).argmax() + count)
            first_bad = torch.where(first_bad < 0, here, first_bad)
            x = time_major(x)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=recipe.amp):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            if logits.shape[1] >= 5:
                correct5 += (logits.topk(5, dim=1).indices == y[:, None]).any(1).sum()
            count += y.shape[0]
            if bar.enabled:
                bar.update(step)
        spikes, outputs = meter.totals()
        top5 = logits.shape[1] >= 5 if count else False
    check_test_samples(ctx, loader, recipe, int(first_bad))
    sums = all_reduce_sum(ctx, [float(loss_sum), float(correct), float(count), spikes, outputs, float(correct5)])
    n = max(sums[2], 1.0)
    rate = sums[3] / sums[4] if sums[4] > 0 else float("nan")
    return EpochStats(sums[0] / n, 100.0 * sums[1] / n, rate, 100.0 * sums[5] / n if top5 else math.nan)
