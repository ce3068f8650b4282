"""The training loop: one recipe in, a run folder out.

Per epoch: set the learning rate for this epoch, train (random temporal delete, AMP, DDP), average
batch-norm statistics across processes, test on all T frames while counting spikes, then save
``best.pt`` / ``last.pt`` and append a row to ``summary.csv``.  The data order is a function of
(seed, epoch) and every random generator is saved with the checkpoint, so ``--resume`` continues
bit for bit where an uninterrupted run would be.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from .checkpoint import (CheckpointError, capture_rng, load_checkpoint, require_resumable, restore_rng,
                         save_checkpoint)
from .distributed import (DistContext, all_gather_objects, all_reduce_sum, average_bn_buffers, main_process_first,
                          setup, teardown)
from ..data.transforms import temporal_delete, time_major
from .factories import build_datasets, build_model
from .recipe import Recipe, dump_recipe, recipe_to_dict
from .runlog import Progress, RunFolderBusy, RunFolderLock, RunLog, finished_epochs
from ..fileio import write_problem

__all__ = ["TrainResult", "NonFiniteError", "NonFiniteLossError", "RunFolderError", "train", "evaluate_checkpoint", "build_model",
           "build_datasets", "FiringRateMeter", "temporal_delete", "time_major", "compile_model", "compiler_problem"]


class NonFiniteError(RuntimeError):
    """A training sample, the loss, a parameter or a batch-norm statistic is NaN or infinite; the run
    stopped before writing it and kept its last good checkpoint."""


class NonFiniteLossError(NonFiniteError):
    """The training loss became NaN or infinite (with finite inputs)."""


class RunFolderError(RuntimeError):
    """The output folder holds an earlier run that this one would overwrite."""


@dataclass
class TrainResult:
    output: Path
    epochs_done: int
    best_test_acc: float
    best_epoch: int
    history: List[Dict[str, float]]
    model: nn.Module = field(repr=False)


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
_COMPILER_PROBLEMS: Dict[str, Optional[str]] = {}


def compiler_problem(device: torch.device) -> Optional[str]:
    """None when ``torch.compile`` works on ``device`` (a tiny function is compiled and run once
    per device type), else what went wrong, in one line."""
    key = torch.device(device).type
    if key not in _COMPILER_PROBLEMS:
        try:
            fn = torch.compile(lambda t: t * 2 + 1, fullgraph=True)
            ok = bool((fn(torch.ones(8, device=device)) == 3).all())
            _COMPILER_PROBLEMS[key] = None if ok else "a compiled test function gave a wrong result"
        except Exception as exc:  # noqa: BLE001 - any backend failure means: run eager
            _COMPILER_PROBLEMS[key] = _one_line(exc)
    return _COMPILER_PROBLEMS[key]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


class _CompiledOrEager(nn.Module):
    """Runs ``torch.compile(module)``; if its first call fails (no working backend for this
    model), says so once and runs ``module`` eagerly from then on."""

    def __init__(self, module: nn.Module, say: Any):
        super().__init__()
        self.module = module
        object.__setattr__(self, "_compiled", torch.compile(module))
        object.__setattr__(self, "_say", say)
        self._works: Optional[bool] = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self._works is None:
            try:
                out = self._compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a real error in the model raises again below, eagerly
                self._works = False
                self._say(f"compile: torch.compile failed on the first step ({_one_line(exc)}); training runs eager")
            else:
                self._works = True
                return out
        return (self._compiled if self._works else self.module)(*args, **kwargs)


def compile_model(model: nn.Module, device: torch.device, say: Any) -> nn.Module:
    """``model`` wrapped for ``torch.compile`` (falling back to eager on the first failure), or
    ``model`` itself, with one line said, where this PyTorch has no working compiler."""
    problem = compiler_problem(device)
    if problem is not None:
        say(f"compile: true, but torch.compile does not work here ({problem}); training runs eager")
        return model
    return _CompiledOrEager(model, say)


class _ShardSampler(Sampler):
    """Every rank tests a disjoint part of the test set (no padding, so the sums are exact)."""

    def __init__(self, size: int, rank: int, world_size: int):
        self.indices = list(range(rank, size, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class FiringRateMeter:
    """Mean firing rate of all neuron outputs: hooks on every ``BaseNeuron``.

    While measuring, neurons that count their own spikes inside their op (``count_spikes``) do,
    and the fused SEW blocks keep running fused (the count is of A, not ``g(A, S)``); blocks whose
    last neuron cannot count run it and ``g`` separately so that a hook sees the spikes.
    """

    def __init__(self, model: nn.Module):
        from ..neurons import BaseNeuron

        self.model = model
        self.neurons = [m for m in model.modules() if isinstance(m, BaseNeuron)]
        self.spikes: Optional[torch.Tensor] = None
        self.count = 0

    def _add(self, spikes: torch.Tensor, numel: int) -> None:
        s = spikes.detach().reshape(()).to(torch.float64)
        self.spikes = s if self.spikes is None else self.spikes + s
        self.count += int(numel)

    def _count_hook(self, module: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
        spikes = getattr(module, "spike_count", None)
        if isinstance(spikes, torch.Tensor):
            self._add(spikes, module.spike_numel)

    def _hook(self, module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], out: Any) -> None:
        if kwargs.get("shortcut") is not None or len(args) > 1 or not isinstance(out, torch.Tensor):
            return  # a fused g(A, S): not spikes
        self._add(out.detach().sum(dtype=torch.float64), out.numel())

    @contextlib.contextmanager
    def measuring(self) -> Iterator["FiringRateMeter"]:
        from ..blocks import spike_counting

        self.spikes, self.count = None, 0
        handles = []
        with spike_counting(self.model) as counting:
            counters = {id(m) for m in counting}
            try:
                for n in self.neurons:
                    if id(n) in counters:
                        handles.append(n.register_forward_hook(self._count_hook))
                    else:
                        handles.append(n.register_forward_hook(self._hook, with_kwargs=True))
                yield self
            finally:
                for h in handles:
                    h.remove()

    def totals(self) -> Tuple[float, float]:
        return (0.0 if self.spikes is None else float(self.spikes)), float(self.count)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    if recipe.amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, recipe.amp_dtype)


def _build_optimizer(recipe: Recipe, model: nn.Module) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    o = recipe.optimizer
    kwargs = dict(o.kwargs)
    if o.name.lower() == "sgd":
        kwargs.setdefault("nesterov", o.nesterov)  # timm's 'sgd' would otherwise mean Nesterov
    return create_optimizer_v2(model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                               **kwargs)


def _build_scheduler(recipe: Recipe, optimizer: torch.optim.Optimizer) -> Any:
    from timm.scheduler import create_scheduler_v2

    s = recipe.scheduler
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=s.name, num_epochs=s.T_max or recipe.epochs, decay_epochs=s.step_size,
        decay_milestones=list(s.milestones), decay_rate=s.gamma, min_lr=s.min_lr, warmup_lr=s.warmup_lr,
        warmup_epochs=s.warmup_epochs, step_on_epochs=True)
    return scheduler


@dataclass
class _EpochStats:
    loss: float
    acc: float
    firing_rate: float = float("nan")
    acc5: float = float("nan")  # top-5 accuracy (Table 2's Acc@5); NaN with fewer than 5 classes


def _train_epoch(ctx: DistContext, model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                 scaler: Any, recipe: Recipe, epoch: int, progress: bool) -> _EpochStats:
    model.train()
    dev = ctx.device
    amp_dtype = _autocast_dtype(recipe, dev)
    total = len(loader)
    bar = Progress(total, f"epoch {epoch + 1}/{recipe.epochs} train", enabled=progress and ctx.is_main)
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
        full = x
        if recipe.T_train is not None:
            x = temporal_delete(x, recipe.T_train)
        with torch.autocast(device_type=dev.type, dtype=amp_dtype, enabled=recipe.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        value = loss.detach()
        finite = torch.isfinite(value) & inputs_finite
        if ctx.distributed:  # every rank must stop together, or the others would wait forever
            flag = finite.to(torch.float32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
            finite = flag > 0
        if not bool(finite):
            where = f"epoch {epoch + 1}, step {step}/{total}"
            found: Optional[Tuple[str, Any]] = None
            if not bool(inputs_finite):
                found = ("sample", _dataset_index(loader, step, _first_bad_sample(full)))
            elif not bool(torch.isfinite(value)):
                found = ("loss", float(value))
            if ctx.distributed:  # every rank names the same culprit: the lowest bad sample, else a loss
                seen = [f for f in all_gather_objects(ctx, found) if f is not None]
                samples = [f[1] for f in seen if f[0] == "sample"]
                found = ("sample", min(samples)) if samples else (seen[0] if seen else None)
            if found is not None and found[0] == "sample":
                raise NonFiniteError(f"training sample {found[1]} of data {recipe.data.name!r} (split "
                                     f"{recipe.data.train_split!r}) holds NaN or infinite values ({where}); "
                                     "fix or remove that sample")
            if found is not None:
                raise NonFiniteLossError(f"training loss is {found[1]} at {where}")
            raise NonFiniteError(f"a NaN or infinite sample or loss was met at {where}")
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
    return _EpochStats(total_loss / total_count, 100.0 * total_correct / total_count)


def _first_bad_sample(x: torch.Tensor) -> int:
    """Position in the batch of the first sample of ``x`` (time-major events or images) that holds a
    NaN or infinite value."""
    batch_major = x.transpose(0, 1) if x.dim() == 5 else x
    ok = torch.isfinite(batch_major).reshape(batch_major.shape[0], -1).all(1)
    return int((~ok).nonzero()[0, 0])


def _dataset_index(loader: DataLoader, step: int, position: int) -> int:
    """The data set index of sample ``position`` of batch ``step`` (1-based): the sampler's order
    for this epoch is a function of (seed, epoch), so it is drawn again."""
    order = list(iter(loader.sampler)) if loader.sampler is not None else []
    k = (step - 1) * int(loader.batch_size or 1) + position
    return int(order[k]) if k < len(order) else k


def first_non_finite(model: nn.Module) -> Optional[str]:
    """Name of the first parameter or floating-point buffer (batch-norm statistics) of ``model``
    that holds a NaN or infinite value, or None; one device sync when all are finite."""
    tensors = [(n, t) for n, t in list(model.named_parameters()) + list(model.named_buffers())
               if t.is_floating_point() and t.numel()]
    if not tensors:
        return None
    flags = torch.stack([torch.isfinite(t.detach()).all() for _, t in tensors])
    if bool(flags.all()):
        return None
    return tensors[int((~flags).nonzero()[0, 0])][0]


@torch.no_grad()
def _evaluate(ctx: DistContext, model: nn.Module, loader: DataLoader, recipe: Recipe, meter: FiringRateMeter,
              progress: bool, desc: str = "test") -> _EpochStats:
    model.eval()
    dev = ctx.device
    amp_dtype = _autocast_dtype(recipe, dev)
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
    bad = int(first_bad)
    bad_index = _dataset_index(loader, 1, bad) if bad >= 0 else None
    if ctx.distributed:  # every rank stops, naming the same sample (the lowest bad data set index)
        found = [i for i in all_gather_objects(ctx, bad_index) if i is not None]
        bad_index = min(found) if found else None
    if bad_index is not None:
        raise NonFiniteError(f"test sample {bad_index} of data {recipe.data.name!r} (split {recipe.data.test_split!r}) "
                             "holds NaN or infinite values")
    sums = all_reduce_sum(ctx, [float(loss_sum), float(correct), float(count), spikes, outputs, float(correct5)])
    n = max(sums[2], 1.0)
    rate = sums[3] / sums[4] if sums[4] > 0 else float("nan")
    return _EpochStats(sums[0] / n, 100.0 * sums[1] / n, rate, 100.0 * sums[5] / n if top5 else float("nan"))


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


def _configure_torch(recipe: Recipe, device: torch.device) -> None:
    from ..kernels.layout import tune_cpu_allocator

    tune_cpu_allocator()  # a step's large activations reuse the previous step's memory
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    if recipe.deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _check_sample(recipe: Recipe, dataset: Dataset) -> None:
    x, _ = dataset[0]
    if recipe.T_train is not None and torch.as_tensor(x).dim() != 4:
        raise ValueError(f"T_train={recipe.T_train} (random temporal delete) needs event samples [T, C, H, W], "
                         f"but dataset {recipe.data.name!r} gives {tuple(torch.as_tensor(x).shape)}; "
                         "set T_train: null")


def _agree(ctx: DistContext, error: Optional[BaseException]) -> None:
    """Raise on every rank when one rank failed during set-up (instead of leaving others waiting)."""
    errors = all_gather_objects(ctx, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for e in errors:
        if e is not None:
            raise RuntimeError(f"another process failed during set-up: {e[0]}: {e[1]}")


def _recipe_diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    out = []
    for key in new:
        a, b = old.get(key), new[key]
        if isinstance(a, dict) and isinstance(b, dict) and key != "kwargs":
            out += _recipe_diff(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" != "output":
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _lock(lock: Optional[RunFolderLock], output: Path) -> None:
    """Own the run folder (rank 0 only), or raise :class:`RunFolderError` naming its holder."""
    if lock is None or lock.held:
        return
    try:
        lock.acquire()
    except RunFolderBusy as exc:
        raise RunFolderError(str(exc)) from None
    except OSError as exc:
        raise RunFolderError(write_problem(exc, lock.path, "output", output)) from None


@contextlib.contextmanager
def _writing(path: Path, output: Path, kept: str = "") -> Iterator[None]:
    """Turn an OS error while writing ``path`` of the run folder into one line naming ``output=``,
    the file, the reason and what to do (plus ``kept``: which earlier files are left as they were)."""
    try:
        yield
    except OSError as exc:
        raise RunFolderError(write_problem(exc, path, "output", output) + (f"; {kept}" if kept else "")) from None


def _kept(history: List[Dict[str, float]], output: Path) -> str:
    return (f"the checkpoints of epoch {history[-1]['epoch']} in {str(output)!r} are kept" if history
            else "no checkpoint was written")


def _resume_path(resume: Union[bool, str, Path], output: Path) -> Path:
    if resume is True:
        return output / "last.pt"
    p = Path(resume)
    return p / "last.pt" if p.is_dir() else p


# ---------------------------------------------------------------------------------------------
# the entry points
# ---------------------------------------------------------------------------------------------
def train(recipe: Recipe, *, resume: Union[None, bool, str, Path] = None, overwrite: bool = False,
          progress: bool = True, log: Any = None) -> TrainResult:
    """Train as the recipe says and return the result (only rank 0 writes the run folder).

    ``resume``: True continues ``<output>/last.pt``; a path names a checkpoint or run folder.
    Raises :class:`NonFiniteLossError` when the loss stops being finite (the last good checkpoint is
    kept), :class:`RunFolderError` when ``output`` holds another run and neither ``resume`` nor
    ``overwrite`` is given.
    """
    log = log or (lambda msg: print(msg, flush=True))
    ctx = setup(recipe.device)
    lock = RunFolderLock(Path(recipe.output)) if ctx.is_main else None
    try:
        return _train(recipe, ctx, resume, overwrite, progress, log, lock)
    finally:
        if lock is not None:
            lock.release()
        teardown(ctx)


def _train(recipe: Recipe, ctx: DistContext, resume: Any, overwrite: bool, progress: bool, log: Any,
           lock: Optional[RunFolderLock]) -> TrainResult:
    say = log if ctx.is_main else (lambda msg: None)
    output = Path(recipe.output)
    _configure_torch(recipe, ctx.device)

    error: Optional[BaseException] = None
    ckpt: Optional[Dict[str, Any]] = None
    restart = False  # the folder holds a run stopped before its first epoch ended: start it over
    try:
        if output.is_dir():  # a new folder is locked when it is created, after all is checked
            _lock(lock, output)
        if resume:
            ckpt_path = _resume_path(resume, output)
            if resume is True and not ckpt_path.exists():
                raise CheckpointError(f"nothing to resume: {str(ckpt_path)!r} does not exist (no epoch of this run "
                                      "has finished); start the run without --resume")
            ckpt = load_checkpoint(ckpt_path)
            require_resumable(ckpt, ckpt_path)
        elif ctx.is_main and not overwrite and not (output / "last.pt").exists() and finished_epochs(output) == 0:
            restart = (output / "args.yaml").exists()
        elif ctx.is_main and not overwrite:
            raise RunFolderError(
                f"output folder {str(output)!r} already holds a run (summary.csv / last.pt); continue it with "
                f"--resume, start over with --overwrite, or choose another folder with output=...")
    except (CheckpointError, RunFolderError) as exc:
        error = exc
    _agree(ctx, error)

    _seed_everything(recipe.seed)
    with main_process_first(ctx):
        datasets = build_datasets(recipe)
    _check_sample(recipe, datasets["train"])
    model = build_model(recipe, datasets["train"]).to(ctx.device)
    if recipe.sync_bn and ctx.distributed:
        if ctx.device.type == "cpu":
            raise ValueError("sync_bn: true needs GPUs (PyTorch's SyncBatchNorm does not run on CPUs); set "
                             "sync_bn: false, the batch-norm statistics are then averaged after every epoch")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw_model = model
    optimizer = _build_optimizer(recipe, raw_model)
    scheduler = _build_scheduler(recipe, optimizer)
    use_scaler = recipe.amp and ctx.device.type == "cuda" and _autocast_dtype(recipe, ctx.device) == torch.float16
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=use_scaler)

    start_epoch, best_acc, best_epoch = 0, 0.0, 0
    history: List[Dict[str, float]] = []
    rng_states: Optional[List[Dict[str, Any]]] = None
    if ckpt is not None:
        try:
            raw_model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"the weights in {str(ckpt_path)!r} do not fit model {recipe.model.name!r}: {exc}\n"
                                  "resume with the recipe the run was started with (its args.yaml), or start a new "
                                  "run in another output folder") from None
        initial_lrs = [group.get("initial_lr") for group in optimizer.param_groups]
        old_opt = ((ckpt.get("recipe") or {}).get("optimizer") or {}).get("name")
        if old_opt is not None and str(old_opt).lower() != recipe.optimizer.name.lower():
            raise CheckpointError(f"{str(ckpt_path)!r} holds the state of optimizer {old_opt!r}, but the recipe asks for "
                                  f"{recipe.optimizer.name!r}; resume with optimizer.name={old_opt}, or start a new run "
                                  "in another output folder")
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"the optimizer state in {str(ckpt_path)!r} does not fit the recipe's optimizer "
                                  f"{recipe.optimizer.name!r} ({type(exc).__name__}: {exc}); resume with the recipe the "
                                  "run was started with (its args.yaml)") from None
        for group, lr0 in zip(optimizer.param_groups, initial_lrs):  # the recipe's lr, not the old run's
            if lr0 is not None:
                group["initial_lr"] = lr0
        old_recipe = ckpt.get("recipe") or {}
        new_recipe = recipe_to_dict(recipe)
        same_schedule = all(old_recipe.get(k) == new_recipe[k] for k in ("scheduler", "epochs", "optimizer"))
        if scheduler is not None and ckpt.get("scheduler") and same_schedule:
            scheduler.load_state_dict(ckpt["scheduler"])
        changed = _recipe_diff(old_recipe, new_recipe)
        if changed:
            say("resuming with a changed recipe (the learning rate follows the new one): " + "; ".join(changed))
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch = int(ckpt["epoch"])
        best_acc, best_epoch = float(ckpt["best_test_acc"]), int(ckpt["best_epoch"])
        history = [dict(r) for r in ckpt["history"]][:start_epoch]
        rng_states = ckpt.get("rng")
    if ctx.distributed:
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(raw_model, device_ids=ids)
    if recipe.compile:
        model = compile_model(model, ctx.device, say)

    _seed_everything(recipe.seed + ctx.rank)
    train_sampler = DistributedSampler(datasets["train"], num_replicas=ctx.world_size, rank=ctx.rank,
                                       shuffle=True, seed=recipe.seed)
    train_loader = _loader(datasets["train"], recipe.batch_size, train_sampler, recipe, ctx.device, recipe.drop_last)
    test_loader = _loader(datasets["test"], recipe.test_batch_size or recipe.batch_size,
                          _ShardSampler(len(datasets["test"]), ctx.rank, ctx.world_size), recipe, ctx.device, False)
    if len(train_loader) == 0:
        raise ValueError(f"the training split of {recipe.data.name!r} has {len(datasets['train'])} samples per "
                         f"process, fewer than batch_size={recipe.batch_size} with drop_last=true")
    meter = FiringRateMeter(raw_model)

    error = None
    try:
        _lock(lock, output)
    except RunFolderError as exc:
        error = exc
    _agree(ctx, error)
    if ctx.is_main and (overwrite or restart) and ckpt is None:
        if restart:
            say(f"output folder {str(output)!r} holds a run stopped before its first epoch ended: starting it over")
        with _writing(output, output):
            RunLog.remove_previous(output)
    with _writing(output, output):
        runlog = RunLog(output, enabled=ctx.is_main, start_epoch=start_epoch)
    if ctx.is_main:
        with _writing(output / "args.yaml", output):
            runlog.write_args(dump_recipe(recipe))
        with _writing(output / "summary.csv", output):
            runlog.sync_summary(history)
    n_params = sum(p.numel() for p in raw_model.parameters())
    say(f"run folder {output}: model {recipe.model.name!r} ({n_params:,} parameters), data {recipe.data.name!r} "
        f"({len(datasets['train'])} train / {len(datasets['test'])} test), device {ctx.device}"
        + (f" x {ctx.world_size} processes" if ctx.distributed else ""))
    if ckpt is not None:
        say(f"resuming after epoch {start_epoch} (best test acc {best_acc:.2f}% at epoch {best_epoch})")
        if start_epoch >= recipe.epochs:
            say(f"nothing to do: {start_epoch} of epochs={recipe.epochs} are done; raise epochs= to train longer")
        if rng_states is not None and len(rng_states) == ctx.world_size:
            restore_rng(rng_states[ctx.rank])
        else:
            say(f"the checkpoint was written by {len(rng_states or [])} processes, this run has {ctx.world_size}: "
                "random streams restart from the seed (the run will not repeat the original exactly)")
            _seed_everything(recipe.seed + ctx.rank + 1000 * start_epoch)

    try:
        for epoch in range(start_epoch, recipe.epochs):
            t0 = time.perf_counter()
            if scheduler is not None:
                scheduler.step(epoch)
            lr = float(optimizer.param_groups[0]["lr"])
            train_sampler.set_epoch(epoch)
            try:
                tr = _train_epoch(ctx, model, train_loader, optimizer, scaler, recipe, epoch, progress)
            except NonFiniteError as exc:
                hint = (" Try a lower optimizer.lr, clip_grad, or amp: false" if isinstance(exc, NonFiniteLossError)
                        else "")
                raise type(exc)(f"{exc}: stopped; {_kept(history, output)}.{hint}") from None
            if not recipe.sync_bn:
                average_bn_buffers(ctx, raw_model)
            bad = first_non_finite(raw_model)  # never save, nor test, a model holding NaN
            if bad is not None:
                raise NonFiniteError(f"model tensor {bad!r} holds NaN or infinite values after epoch {epoch + 1}: "
                                     f"stopped; {_kept(history, output)}. Try a lower optimizer.lr or clip_grad")
            try:
                te = _evaluate(ctx, raw_model, test_loader, recipe, meter, progress)
            except NonFiniteError as exc:
                raise NonFiniteError(f"{exc} (testing after epoch {epoch + 1}): stopped; {_kept(history, output)}; "
                                     "fix or remove that sample") from None
            improved = best_epoch == 0 or te.acc > best_acc
            if improved:
                best_acc, best_epoch = te.acc, epoch + 1
            row = {"epoch": epoch + 1, "train_loss": tr.loss, "train_acc": tr.acc, "test_loss": te.loss,
                   "test_acc": te.acc, "test_acc5": te.acc5, "best_test_acc": best_acc, "lr": lr,
                   "seconds": time.perf_counter() - t0,
                   "firing_rate": te.firing_rate}
            history.append(row)
            rngs = all_gather_objects(ctx, capture_rng())
            write_error: Optional[RunFolderError] = None
            if ctx.is_main:
                try:
                    state = {"epoch": epoch + 1, "model": raw_model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": scheduler.state_dict() if scheduler is not None else {},
                             "scaler": scaler.state_dict(), "best_test_acc": best_acc, "best_epoch": best_epoch,
                             "history": [dict(r) for r in history], "rng": rngs, "recipe": recipe_to_dict(recipe),
                             "world_size": ctx.world_size}
                    kept = (f"last.pt of epoch {history[-2]['epoch']} is kept" if len(history) > 1
                            else "no last.pt was written")
                    if improved:
                        with _writing(output / "best.pt", output, _kept(history[:-1], output)):
                            save_checkpoint(output / "best.pt", state)
                        kept += f" (best.pt already holds epoch {epoch + 1})"
                    with _writing(output / "last.pt", output, kept):
                        save_checkpoint(output / "last.pt", state)
                    with _writing(output / "summary.csv", output, f"last.pt holds epoch {epoch + 1}; --resume "
                                                                   "writes summary.csv again"):
                        runlog.append(row, history)
                    with _writing(output / "tensorboard", output, "the checkpoints and summary.csv are complete"):
                        runlog.add_scalars(row)
                    with _writing(output / "curves.png", output, "the checkpoints and summary.csv are complete"):
                        runlog.plot_if_due(history)
                except RunFolderError as exc:
                    write_error = exc
            if ctx.distributed:  # the other processes stop too, instead of waiting for process 0
                failed = [e for e in all_gather_objects(ctx, None if write_error is None else str(write_error))
                          if e is not None]
                if failed and write_error is None:
                    raise RunFolderError(f"process 0 could not write the run folder: {failed[0]}")
            if write_error is not None:
                raise write_error
            say(f"epoch {epoch + 1}/{recipe.epochs}  train loss {tr.loss:.4f} acc {tr.acc:.2f}%  "
                f"test loss {te.loss:.4f} acc {te.acc:.2f}%  best {best_acc:.2f}% (epoch {best_epoch})  "
                f"lr {lr:.3g}  firing rate {te.firing_rate:.3f}  {row['seconds']:.1f}s")
    except BaseException:
        with contextlib.suppress(OSError):  # the error in flight is the one to report
            runlog.close(history)
        raise
    with _writing(output / "curves.png", output, "the checkpoints and summary.csv are complete"):
        runlog.close(history)
    return TrainResult(output, len(history), best_acc, best_epoch, history, raw_model)


def evaluate_checkpoint(recipe: Recipe, checkpoint: Union[str, Path], *, progress: bool = True,
                        log: Any = None) -> Dict[str, float]:
    """Test the weights of ``checkpoint`` on the recipe's test split (all T frames)."""
    log = log or (lambda msg: print(msg, flush=True))
    ctx = setup(recipe.device)
    try:
        error: Optional[BaseException] = None
        try:
            ckpt = load_checkpoint(checkpoint)
        except CheckpointError as exc:
            error = exc
        _agree(ctx, error)
        _configure_torch(recipe, ctx.device)
        _seed_everything(recipe.seed)
        with main_process_first(ctx):
            test_set = build_datasets(recipe, ("test",))["test"]
        model = build_model(recipe, test_set).to(ctx.device)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"the weights in {str(checkpoint)!r} do not fit model {recipe.model.name!r}: "
                                  f"{exc}") from None
        loader = _loader(test_set, recipe.test_batch_size or recipe.batch_size,
                         _ShardSampler(len(test_set), ctx.rank, ctx.world_size), recipe, ctx.device, False)
        try:
            stats = _evaluate(ctx, model, loader, recipe, FiringRateMeter(model), progress)
        except NonFiniteError as exc:
            raise NonFiniteError(f"{exc}: no accuracy is reported; fix or remove that sample") from None
        result = {"epoch": int(ckpt.get("epoch", 0)), "test_loss": stats.loss, "test_acc": stats.acc,
                  "test_acc5": stats.acc5, "firing_rate": stats.firing_rate, "samples": len(test_set)}
        if ctx.is_main:
            top5 = "" if math.isnan(stats.acc5) else f"  top-5 {stats.acc5:.2f}%"
            log(f"{checkpoint} (epoch {result['epoch']}): test loss {stats.loss:.4f}  acc {stats.acc:.2f}%{top5}  "
                f"firing rate {stats.firing_rate:.3f}  ({len(test_set)} samples, T={recipe.data.T})")
        return result
    finally:
        teardown(ctx)
