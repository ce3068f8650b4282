"""Datasets: the built-in synthetic event data, DVS128 Gesture, CIFAR10-DVS, ImageNet, CIFAR-10.

``create_dataset(name, root=..., split="train", T=16, **kw)`` returns a map-style dataset of
``(x: float32 tensor, label: int)`` with ``.num_classes``, ``.input_shape`` (C, H, W) and
``.classes``.  Event data gives ``x = [T, 2, H, W]`` per-polarity event counts; images give
``[C, H, W]``.  Names are looked up in :data:`sewforge.registry.DATASETS`, so plugins add datasets
the same way.
"""
from __future__ import annotations

import inspect
from typing import Any, List, Optional

from ..checks import close_matches
from ..registry import DATASETS
from .base import DatasetFormatError, DatasetNotFoundError, FrameDatasetBase
from .events import SPLIT_METHODS, events_to_frames, slice_index, split_by_number, split_by_time
from .synthetic import SYNTHETIC_CLASSES, SyntheticMotion, synthetic_events, synthetic_frames
from .aedat import read_aedat2_raw, read_aedat3, read_cifar10dvs_aedat
from .cache import frames_dirname, load_frames, save_frames
from .dvs import CIFAR10_CLASSES, CIFAR10DVS, DVS128Gesture, EventFrameFolder, GESTURE_CLASSES
from .images import CIFAR10Batches, ImageNetFolder, read_cifar10_batch
from .transforms import temporal_delete, time_major

__all__ = [
    "time_major", "temporal_delete",
    "create_dataset", "list_datasets", "SPLITS",
    "DatasetFormatError", "DatasetNotFoundError", "FrameDatasetBase",
    "SPLIT_METHODS", "events_to_frames", "slice_index", "split_by_number", "split_by_time",
    "SYNTHETIC_CLASSES", "SyntheticMotion", "synthetic_events", "synthetic_frames",
    "read_aedat3", "read_aedat2_raw", "read_cifar10dvs_aedat", "frames_dirname", "load_frames", "save_frames",
    "EventFrameFolder", "DVS128Gesture", "CIFAR10DVS", "GESTURE_CLASSES", "CIFAR10_CLASSES",
    "ImageNetFolder", "CIFAR10Batches", "read_cifar10_batch",
]

SPLITS = ("train", "test")

DATASETS.add("synthetic", SyntheticMotion,
             description="built-in event data, no download: a shape moving right/left/down/up "
                         "(4 classes, [T, 2, 32, 32]); the direction is only in the event order")
DATASETS.add("dvs128_gesture", DVS128Gesture,
             description="DVS128 Gesture from the original AEDAT 3.1 download or SpikingJelly frames "
                         "(11 classes, [T, 2, 128, 128], 1176 train / 288 test)")
DATASETS.add("cifar10_dvs", CIFAR10DVS,
             description="CIFAR10-DVS from the original AEDAT recordings or SpikingJelly frames "
                         "(10 classes, [T, 2, 128, 128], 90/10 split per class)")
DATASETS.add("imagenet", ImageNetFolder,
             description="ImageNet-style train/ and val/ class folders with the paper's augmentation "
                         "([3, 224, 224])")
DATASETS.add("cifar10", CIFAR10Batches,
             description="CIFAR-10 from its python batches (10 classes, [3, 32, 32], crop + flip for training)")


def list_datasets(pattern: str = "*") -> List[str]:
    """Registered dataset names matching a wildcard, naturally sorted."""
    return DATASETS.names(pattern)


def create_dataset(name: str, *, root: Optional[str] = None, split: str = "train", T: int = 16,
                   **kwargs: Any):
    """A dataset by registered name.

    ``split`` is ``"train"`` or ``"test"`` (``"val"`` is accepted for ``"test"``: none of these
    datasets has a separate validation split).  ``T`` is the number of frames of event data
    (ignored by image datasets, whose models repeat the static image).  Keyword arguments whose
    value is None are dropped, so a CLI default of None means "the dataset's own default".
    Unknown names raise the registry's KeyError (with close matches); an argument the dataset does
    not take raises ValueError naming it and listing those it does take.
    """
    factory = DATASETS.get(name)
    entry_name = DATASETS.entry(name).name
    if split == "val":
        split = "test"
    if split not in SPLITS:
        raise ValueError(f"dataset {entry_name!r}: split must be 'train' or 'test' ('val' means 'test'), "
                         f"got {split!r}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _check_kwargs(entry_name, factory, kwargs)
    try:
        dataset = factory(root=root, split=split, T=T, **kwargs)
    except ValueError as exc:
        if type(exc) is ValueError and not str(exc).startswith("dataset "):
            raise ValueError(f"dataset {entry_name!r}: {exc}") from None
        raise
    try:
        size = len(dataset)
    except TypeError:  # a stream without a length
        return dataset
    if size == 0:  # training on it would report 0.00% accuracy, or fail on the first batch
        where = f" in {root}" if root is not None else ""
        raise ValueError(f"dataset {entry_name!r}: the {split} split{where} has no samples; check the folder "
                         "layout the data set expects and its split options")
    return dataset


def _check_kwargs(name: str, factory: Any, kwargs: dict) -> None:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature: let it check its own arguments
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    allowed = [n for n, p in params.items()
               if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
               and n not in ("self", "root", "split", "T")]
    for key in kwargs:
        if key not in allowed:
            close = close_matches(key, allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"dataset {name!r} has no argument {key!r}{hint} "
                             f"Its arguments: root, split, T, {', '.join(allowed)}")
