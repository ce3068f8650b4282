"""Checkpoints that survive a crash and load with ``torch.load(..., weights_only=True)``.

A checkpoint holds only tensors and plain containers of numbers and strings: the model, optimizer,
scheduler and loss-scaler states, the epoch, the best accuracy, the metric history and the random
number generator states of every process, so that a resumed run continues exactly as an
uninterrupted one.  Files are written to a temporary name in the same folder and renamed, so a
crash never leaves a half-written checkpoint behind.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Union

import numpy as np
import torch

from ..fileio import atomic_file

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "load_checkpoint", "require_resumable", "capture_rng", "restore_rng"]

FORMAT = "sewforge-train-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or not a sewforge training checkpoint."""


def save_checkpoint(path: Union[str, Path], state: Dict[str, Any]) -> None:
    """Write ``state`` (plus format tags) to ``path`` atomically."""
    with atomic_file(path) as fh:
        torch.save({"format": FORMAT, "version": VERSION, **state}, fh)


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """Read a training checkpoint on the CPU, safely (no arbitrary objects are unpickled)."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, not a torch file, unsafe content
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); "
                              "it may be truncated or not a sewforge checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a sewforge training checkpoint "
                              f"(expected format {FORMAT!r})")
    version = state.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"checkpoint {str(path)!r} has version {version!r}, expected a whole number; "
                              "the file is damaged or not a sewforge checkpoint")
    if version > VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has version {version}, newer than this "
                              f"sewforge understands ({VERSION}); upgrade sewforge")
    problems = [f"{key!r} {what}" for key, kinds, what in _REQUIRED
                if key in state and not isinstance(state[key], kinds)]
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in weights.items()):
        problems.insert(0, "'model' is missing or is not a mapping of names to tensors")
    if problems:
        raise CheckpointError(f"checkpoint {str(path)!r} is damaged: {'; '.join(problems)}; use another "
                              "checkpoint of the run (best.pt / last.pt) or start a new run")
    return state


def require_resumable(state: Dict[str, Any], path: Union[str, Path]) -> None:
    """Raise :class:`CheckpointError` unless ``state`` holds what continuing a run needs."""
    missing = [k for k in ("epoch", "optimizer", "best_test_acc", "best_epoch", "history") if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks {', '.join(repr(k) for k in missing)}, so the run "
                              "cannot continue from it; evaluate it with --eval-only, or start a new run")


#: keys that, when present, must have these types (what training and evaluation read)
_REQUIRED = (("epoch", int, "is not a whole number"), ("optimizer", dict, "is not a mapping"),
             ("best_test_acc", (int, float), "is not a number"), ("best_epoch", int, "is not a whole number"),
             ("history", list, "is not a list"), ("recipe", dict, "is not a mapping"))


# ---------------------------------------------------------------------------------------------
# random number generators, as plain data
# ---------------------------------------------------------------------------------------------
def capture_rng() -> Dict[str, Any]:
    """The state of Python's, NumPy's, PyTorch's and CUDA's generators (tensors and lists only)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: Dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda: List[torch.Tensor] = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        count = min(len(cuda), torch.cuda.device_count())
        for i in range(count):
            torch.cuda.set_rng_state(cuda[i], i)
