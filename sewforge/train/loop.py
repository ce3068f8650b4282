"""The training run: one recipe in, a run folder out.

Per epoch: set the learning rate for this epoch, train (random temporal delete, AMP, DDP), average
batch-norm statistics across processes, test on all T frames while counting spikes, then save
``best.pt`` / ``last.pt`` and append a row to ``summary.csv``.  The data order is a function of
(seed, epoch) and every random generator is saved with the checkpoint, so ``--resume`` continues
bit for bit where an uninterrupted run would be.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, capture_rng, load_checkpoint, save_checkpoint
from .compile import compile_model
from .distributed import (DistContext, agree, all_gather_objects, average_bn_buffers, main_process_first, setup,
                          teardown)
from .epochs import EpochStats, evaluate, train_epoch
from .errors import NonFiniteError, NonFiniteLossError, RunFolderError
from .factories import build_datasets, build_model, build_optimizer, build_scheduler
from .finite import first_non_finite
from .loaders import Loaders, check_sample, eval_loader, training_loaders
from .logs import TrainLog
from .meters import FiringRateMeter
from .recipe import Recipe, recipe_to_dict
from .resume import RunState, continue_random_streams, restore
from .runfolder import claim, kept_checkpoints, open_run_folder, writing
from .runlog import RunFolderLock, RunLog
from .runtime import configure_torch, grad_scaler, seed_everything

__all__ = ["TrainResult", "train", "evaluate_checkpoint"]

Say = Callable[[str], None]


@dataclass
class TrainResult:
    output: Path
    epochs_done: int
    best_test_acc: float
    best_epoch: int
    history: List[Dict[str, float]]
    model: nn.Module = field(repr=False)


def train(recipe: Recipe, *, resume: Union[None, bool, str, Path] = None, overwrite: bool = False,
          progress: bool = True, log: Optional[Say] = None) -> TrainResult:
    """Train as the recipe says and return the result (only rank 0 writes the run folder).

    ``resume``: True continues ``<output>/last.pt``; a path names a checkpoint or run folder.
    Raises :class:`NonFiniteLossError` when the loss stops being finite (the last good checkpoint is
    kept), :class:`RunFolderError` when ``output`` holds another run and neither ``resume`` nor
    ``overwrite`` is given.  Every line said goes to ``log`` (``print`` by default), to the logger
    ``sewforge.train`` and, with its time, to ``train.log`` in the run folder.
    """
    ctx = setup(recipe.device)
    lock = RunFolderLock(Path(recipe.output)) if ctx.is_main else None
    try:
        with TrainLog(log, enabled=ctx.is_main) as say:
            return _Run.start(recipe, ctx, resume, overwrite, progress, say, lock).run()
    finally:
        if lock is not None:
            lock.release()
        teardown(ctx)


@dataclass
class _Run:
    """A started run: its model, optimizer, loaders and run folder, and where it stands."""

    recipe: Recipe
    ctx: DistContext
    say: TrainLog
    progress: bool
    raw_model: nn.Module  # what is saved and tested
    model: nn.Module  # what trains: raw_model, wrapped for DDP and torch.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loaders: Loaders
    runlog: RunLog
    state: RunState

    @property
    def output(self) -> Path:
        return Path(self.recipe.output)

    @classmethod
    def start(cls, recipe: Recipe, ctx: DistContext, resume: Any, overwrite: bool, progress: bool, say: TrainLog,
              lock: Optional[RunFolderLock]) -> "_Run":
        """Check and build everything, then open the run folder (nothing is written there before all
        is checked)."""
        output = Path(recipe.output)
        configure_torch(recipe, ctx.device)
        found = claim(ctx, output, resume, overwrite, lock)
        seed_everything(recipe.seed)
        with main_process_first(ctx):
            datasets = build_datasets(recipe)
        check_sample(recipe, datasets["train"])
        raw_model = _model(recipe, ctx, datasets["train"])
        optimizer = build_optimizer(recipe, raw_model)
        scheduler = build_scheduler(recipe, optimizer)
        scaler = grad_scaler(recipe, ctx.device)
        state = RunState()
        if found.checkpoint is not None:
            state = restore(found.checkpoint, found.path, recipe, raw_model, optimizer, scheduler, scaler, say)
        model = _wrap(raw_model, recipe, ctx, say)
        seed_everything(recipe.seed + ctx.rank)
        loaders = training_loaders(recipe, datasets, ctx)
        runlog = open_run_folder(ctx, recipe, lock, found, overwrite, state, say)
        say.keep_in(output)
        n_params = sum(p.numel() for p in raw_model.parameters())
        say(f"run folder {output}: model {recipe.model.name!r} ({n_params:,} parameters), data {recipe.data.name!r} "
            f"({len(datasets['train'])} train / {len(datasets['test'])} test), device {ctx.device}"
            + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
        if found.checkpoint is not None:
            say(f"resuming after epoch {state.start_epoch} (best test acc {state.best_acc:.2f}% at epoch "
                f"{state.best_epoch})")
            if state.start_epoch >= recipe.epochs:
                say(f"nothing to do: {state.start_epoch} of epochs={recipe.epochs} are done; raise epochs= to train "
                    "longer")
            continue_random_streams(state, ctx, recipe, say)
        return cls(recipe, ctx, say, progress, raw_model, model, optimizer, scheduler, scaler, loaders, runlog, state)

    def run(self) -> TrainResult:
        state = self.state
        try:
            for epoch in range(state.start_epoch, self.recipe.epochs):
                self.epoch(epoch)
        except BaseException:
            with contextlib.suppress(OSError):  # the error in flight is the one to report
                self.runlog.close(state.history)
            raise
        with writing(self.output / "curves.png", self.output, "the checkpoints and summary.csv are complete"):
            self.runlog.close(state.history)
        return TrainResult(self.output, len(state.history), state.best_acc, state.best_epoch, state.history,
                           self.raw_model)

    def epoch(self, epoch: int) -> None:
        """Train, test, save and say one epoch."""
        state, recipe = self.state, self.recipe
        t0 = time.perf_counter()
        if self.scheduler is not None:
            self.scheduler.step(epoch)
        lr = float(self.optimizer.param_groups[0]["lr"])
        tr = self._train(epoch)
        te = self._test(epoch)
        improved = state.best_epoch == 0 or te.acc > state.best_acc
        if improved:
            state.best_acc, state.best_epoch = te.acc, epoch + 1
        row = {"epoch": epoch + 1, "train_loss": tr.loss, "train_acc": tr.acc, "test_loss": te.loss,
               "test_acc": te.acc, "test_acc5": te.acc5, "best_test_acc": state.best_acc, "lr": lr,
               "seconds": time.perf_counter() - t0, "firing_rate": te.firing_rate}
        state.history.append(row)
        self._save(epoch, row, improved)
        self.say(f"epoch {epoch + 1}/{recipe.epochs}  train loss {tr.loss:.4f} acc {tr.acc:.2f}%  "
                 f"test loss {te.loss:.4f} acc {te.acc:.2f}%  best {state.best_acc:.2f}% (epoch {state.best_epoch})  "
                 f"lr {lr:.3g}  firing rate {te.firing_rate:.3f}  {row['seconds']:.1f}s")

    def _kept(self) -> str:
        return kept_checkpoints(self.state.history, self.output)

    def _train(self, epoch: int) -> EpochStats:
        self.loaders.train_sampler.set_epoch(epoch)
        try:
            stats = train_epoch(self.ctx, self.model, self.loaders.train, self.optimizer, self.scaler, self.recipe,
                                epoch, self.progress)
        except NonFiniteError as exc:
            hint = " Try a lower optimizer.lr, clip_grad, or amp: false" if isinstance(exc, NonFiniteLossError) else ""
            raise type(exc)(f"{exc}: stopped; {self._kept()}.{hint}") from None
        if not self.recipe.sync_bn:
            average_bn_buffers(self.ctx, self.raw_model)
        bad = first_non_finite(self.raw_model)  # never save, nor test, a model holding NaN
        if bad is not None:
            raise NonFiniteError(f"model tensor {bad!r} holds NaN or infinite values after epoch {epoch + 1}: "
                                 f"stopped; {self._kept()}. Try a lower optimizer.lr or clip_grad")
        return stats

    def _test(self, epoch: int) -> EpochStats:
        try:
            return evaluate(self.ctx, self.raw_model, self.loaders.test, self.recipe, FiringRateMeter(self.raw_model),
                            self.progress)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc} (testing after epoch {epoch + 1}): stopped; {self._kept()}; "
                                 "fix or remove that sample") from None

    def _save(self, epoch: int, row: Dict[str, float], improved: bool) -> None:
        """best.pt (when improved), last.pt, summary.csv, TensorBoard and curves.png, by rank 0; a write
        that fails stops every process with one line saying what is kept."""
        rngs = all_gather_objects(self.ctx, capture_rng())
        error: Optional[RunFolderError] = None
        if self.ctx.is_main:
            try:
                self._write(epoch, row, improved, rngs)
            except RunFolderError as exc:
                error = exc
        if self.ctx.distributed:  # the other processes stop too, instead of waiting for process 0
            failed = [e for e in all_gather_objects(self.ctx, None if error is None else str(error)) if e is not None]
            if failed and error is None:
                raise RunFolderError(f"process 0 could not write the run folder: {failed[0]}")
        if error is not None:
            raise error

    def _write(self, epoch: int, row: Dict[str, float], improved: bool, rngs: List[Any]) -> None:
        state, output, history = self.state, self.output, self.state.history
        checkpoint = {"epoch": epoch + 1, "model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                      "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
                      "scaler": self.scaler.state_dict(), "best_test_acc": state.best_acc,
                      "best_epoch": state.best_epoch, "history": [dict(r) for r in history], "rng": rngs,
                      "recipe": recipe_to_dict(self.recipe), "world_size": self.ctx.world_size}
        kept = f"last.pt of epoch {history[-2]['epoch']} is kept" if len(history) > 1 else "no last.pt was written"
        if improved:
            with writing(output / "best.pt", output, kept_checkpoints(history[:-1], output)):
                save_checkpoint(output / "best.pt", checkpoint)
            kept += f" (best.pt already holds epoch {epoch + 1})"
        with writing(output / "last.pt", output, kept):
            save_checkpoint(output / "last.pt", checkpoint)
        with writing(output / "summary.csv", output, f"last.pt holds epoch {epoch + 1}; --resume writes summary.csv "
                                                     "again"):
            self.runlog.append(row, history)
        with writing(output / "tensorboard", output, "the checkpoints and summary.csv are complete"):
            self.runlog.add_scalars(row)
        with writing(output / "curves.png", output, "the checkpoints and summary.csv are complete"):
            self.runlog.plot_if_due(history)


def _model(recipe: Recipe, ctx: DistContext, dataset: Any) -> nn.Module:
    model = build_model(recipe, dataset).to(ctx.device)
    if recipe.sync_bn and ctx.distributed:
        if ctx.device.type == "cpu":
            raise ValueError("sync_bn: true needs GPUs (PyTorch's SyncBatchNorm does not run on CPUs); set "
                             "sync_bn: false, the batch-norm statistics are then averaged after every epoch")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def _wrap(model: nn.Module, recipe: Recipe, ctx: DistContext, say: Say) -> nn.Module:
    """``model`` for training: in DistributedDataParallel across processes, through torch.compile."""
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if recipe.compile:
        model = compile_model(model, ctx.device, say)
    return model


def evaluate_checkpoint(recipe: Recipe, checkpoint: Union[str, Path], *, progress: bool = True,
                        log: Optional[Say] = None) -> Dict[str, float]:
    """Test the weights of ``checkpoint`` on the recipe's test split (all T frames); the result line
    goes to ``log`` (``print`` by default) and to the logger ``sewforge.train``."""
    ctx = setup(recipe.device)
    try:
        error: Optional[BaseException] = None
        try:
            ckpt = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            error = exc
        agree(ctx, error)
        configure_torch(recipe, ctx.device)
        seed_everything(recipe.seed)
        with main_process_first(ctx):
            test_set = build_datasets(recipe, ("test",))["test"]
        model = build_model(recipe, test_set).to(ctx.device)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"the weights in {str(checkpoint)!r} do not fit model {recipe.model.name!r}: "
                                  f"{exc}") from None
        try:
            stats = evaluate(ctx, model, eval_loader(recipe, test_set, ctx), recipe, FiringRateMeter(model), progress)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}: no accuracy is reported; fix or remove that sample") from None
        result = {"epoch": int(ckpt.get("epoch", 0)), "test_loss": stats.loss, "test_acc": stats.acc,
                  "test_acc5": stats.acc5, "firing_rate": stats.firing_rate, "samples": len(test_set)}
        top5 = "" if math.isnan(stats.acc5) else f"  top-5 {stats.acc5:.2f}%"
        with TrainLog(log, enabled=ctx.is_main) as say:
            say(f"{checkpoint} (epoch {result['epoch']}): test loss {stats.loss:.4f}  acc {stats.acc:.2f}%{top5}  "
                f"firing rate {stats.firing_rate:.3f}  ({len(test_set)} samples, T={recipe.data.T})")
        return result
    finally:
        teardown(ctx)
