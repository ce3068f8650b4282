"""Several processes through ``torchrun``: NCCL between GPUs, gloo between CPU processes.

``torchrun --nproc_per_node=8 -m sewforge.train recipe.yaml`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; this module joins the process group, picks each process's device, and offers the
few collective helpers the trainer needs (sums of metrics, averaging of batch-norm statistics,
gathering small Python objects for rank 0 to save).
"""
from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistContext", "setup", "teardown", "all_reduce_sum", "all_gather_objects", "average_bn_buffers",
           "main_process_first", "resolve_device", "agree"]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use device=cpu or auto")
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} was asked for but no CUDA GPU is available; use device=cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {spec!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered "
                         f"from 0; use device=cuda:0 ... cuda:{torch.cuda.device_count() - 1} or auto")
    return device


def setup(device_spec: str) -> DistContext:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = resolve_device(device_spec, local)
    if world <= 1:
        return DistContext(0, 1, 0, device, False)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
        initialized_here = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local, device, initialized_here)


class PeerError(RuntimeError):
    """Another process of a distributed run failed; this one stops too, naming it."""


@contextlib.contextmanager
def main_process_first(ctx: DistContext):
    """Rank 0 runs the block first, the other ranks after it: one process converts event
    recordings into the frame cache and the others read the cached frames, instead of every rank
    converting the same files. When the block fails on rank 0, the others do not repeat the work:
    they raise :class:`PeerError` naming rank 0's error (instead of waiting, or converting)."""
    if not ctx.distributed:
        yield
        return
    if ctx.is_main:
        try:
            yield
        except BaseException as exc:
            dist.broadcast_object_list([f"{type(exc).__name__}: {exc}"], src=0)
            raise
        dist.broadcast_object_list([None], src=0)
    else:
        status: List[Any] = [None]
        dist.broadcast_object_list(status, src=0)
        if status[0] is not None:
            raise PeerError(f"process 0 failed preparing the run, so process {ctx.rank} stops too: {status[0]}")
        yield


def teardown(ctx: DistContext) -> None:
    """End a distributed run: free what the run left in reference cycles while the interpreter is
    whole, then leave the process group if this run joined it. Objects of the run that still hold
    communication buffers would otherwise be freed during interpreter shutdown, where Gloo's worker
    threads abort the process ("terminate called without an active exception") after a run that
    succeeded."""
    if not ctx.distributed:
        return
    gc.collect()
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(ctx: DistContext, values: Sequence[float]) -> List[float]:
    """Element-wise sums over all processes (float64, so counts stay exact)."""
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_gather_objects(ctx: DistContext, obj: Any) -> List[Any]:
    if not ctx.distributed:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


@torch.no_grad()
def average_bn_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Give every process the mean of the batch-norm running statistics, so that all ranks
    evaluate and save the same model (DDP synchronises parameters, not these buffers)."""
    if not ctx.distributed:
        return
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            for buf in (module.running_mean, module.running_var):
                if buf is not None:
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf /= ctx.world_size


def agree(ctx: DistContext, error: Optional[BaseException]) -> None:
    """Raise on every rank when one rank failed during set-up (instead of leaving others waiting)."""
    errors = all_gather_objects(ctx, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for e in errors:
        if e is not None:
            raise PeerError(f"another process failed during set-up, so process {ctx.rank} stops too: {e[0]}: {e[1]}")
