"""What every sewforge dataset shares: the attributes the trainer reads, errors, argument checks."""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset

__all__ = ["DatasetFormatError", "DatasetNotFoundError", "FrameDatasetBase", "SampleListDataset",
           "check_root", "check_choice", "check_positive_int", "check_number"]


class DatasetFormatError(ValueError):
    """A data file is truncated, corrupt or not in the expected format (the message names the file)."""


class DatasetNotFoundError(FileNotFoundError):
    """A data folder or file is missing (the message names it and describes the expected layout)."""


class FrameDatasetBase(Dataset):
    """A map-style dataset of ``(x: float32 tensor, label: int)``.

    Subclasses implement ``__len__`` and ``load(index)``; this class adds ``transform``, index
    checks and the attributes ``classes``, ``num_classes``, ``input_shape`` (C, H, W) and ``T``
    (frames per sample; None for static images).
    """

    def __init__(self, *, classes: Sequence[str], input_shape: Tuple[int, int, int], T: Optional[int],
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        if transform is not None and not callable(transform):
            raise ValueError(f"transform must be callable (tensor -> tensor) or None, got {transform!r}")
        self.classes = tuple(str(c) for c in classes)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.T = T
        self.transform = transform

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, index: int) -> Tuple[torch.Tensor, int]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        n = len(self)
        if not isinstance(index, numbers.Integral) or isinstance(index, bool):
            raise TypeError(f"{type(self).__name__} index must be an integer, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"{type(self).__name__} index {index} out of range for {n} samples")
        x, label = self.load(int(index) % n)
        if self.transform is not None:
            x = self.transform(x)
        return x, label

    def targets(self) -> torch.Tensor:
        """Labels of all samples, in order (for class-balanced samplers and reports)."""
        return torch.tensor([self.label_of(i) for i in range(len(self))], dtype=torch.long)

    def label_of(self, index: int) -> int:
        return self.load(index)[1]

    def __repr__(self) -> str:
        split = getattr(self, "split", "?")
        return (f"{type(self).__name__}(split={split!r}, samples={len(self)}, classes={self.num_classes}, "
                f"input_shape={self.input_shape}, T={self.T})")


class SampleListDataset(FrameDatasetBase):
    """A dataset whose samples are a list ``self.samples`` of ``(path, label)``, one file each."""

    samples: List[Tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)

    def label_of(self, index: int) -> int:
        return self.samples[index][1]


def check_root(root: Optional[os.PathLike], name: str, layout: str) -> Path:
    """The data set's folder, or an error that names it and shows the expected layout."""
    if root is None:
        raise ValueError(f"dataset {name!r} needs root=<folder> (no download is made).\n{layout}")
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetNotFoundError(f"dataset {name!r}: folder {path} does not exist.\n{layout}")
    return path


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name: str, value: Any, *, minimum: Optional[float] = None,
                 maximum: Optional[float] = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise ValueError(f"{name} must be a number, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        lo = "-inf" if minimum is None else minimum
        hi = "inf" if maximum is None else maximum
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return float(value)
