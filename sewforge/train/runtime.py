"""Process-wide settings of a run: random seeds, threads, deterministic kernels, the CPU
allocator, and the autocast precision with its gradient scaler."""
from __future__ import annotations

import random

import numpy as np
import torch

from .recipe import Recipe

__all__ = ["seed_everything", "configure_torch", "autocast_dtype", "grad_scaler"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_torch(recipe: Recipe, device: torch.device) -> None:
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


def autocast_dtype(recipe: Recipe, device: torch.device) -> torch.dtype:
    if recipe.amp_dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    return getattr(torch, recipe.amp_dtype)


def grad_scaler(recipe: Recipe, device: torch.device) -> torch.amp.GradScaler:
    """Loss scaling where it is needed (float16 autocast on GPUs); a no-op scaler elsewhere."""
    use = recipe.amp and device.type == "cuda" and autocast_dtype(recipe, device) == torch.float16
    return torch.amp.GradScaler(device.type, enabled=use)
