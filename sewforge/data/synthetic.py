"""Built-in event data that needs no download: shapes moving in one of four directions.

Each sample is an event stream from a simulated 2-polarity sensor: a random outline (square,
diamond, circle or cross, random size) slides along a straight path while its edge pixels emit
events at random times, over a background of uniform sensor noise and a few hot pixels.  The label
is the direction of motion (right, left, down, up).

The class is carried by the *order* of events only:

* polarity is drawn independently of everything (no leading-edge ON / trailing-edge OFF cue);
* "left" is "right" played backwards and "up" is "down" played backwards: every random draw of a
  sample is made before the label is applied, and the label only reverses time and/or swaps the
  axes.  So mirrored classes have exactly the same distribution of time-summed frames, and a model
  that sees one summed frame can at best tell the axis (50% accuracy), never the direction.

Events become frames through :func:`sewforge.data.events.split_by_number`, the same code as for
the real recordings.  A sample depends only on ``(seed, split, index)``, so a smaller ``num_train``
gives a prefix of a larger one; labels cycle through the classes, so every split is balanced.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch

from .base import FrameDatasetBase, check_choice, check_number, check_positive_int
from .events import split_by_number

__all__ = ["SYNTHETIC_CLASSES", "SyntheticMotion", "synthetic_events", "synthetic_frames"]

SYNTHETIC_CLASSES = ("right", "left", "down", "up")
_SHAPES = ("square", "diamond", "circle", "cross")
_DURATION_US = 1_000_000
_SPLIT_CODE = {"train": 0, "test": 1}


def _outline(shape: str, half: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel offsets ``(dx, dy)`` of an outline of radius ``half`` around its centre."""
    r = np.arange(-half, half + 1)
    dx, dy = (a.ravel() for a in np.meshgrid(r, r, indexing="xy"))
    if shape == "square":
        keep = np.maximum(np.abs(dx), np.abs(dy)) == half
    elif shape == "diamond":
        keep = np.abs(dx) + np.abs(dy) == half
    elif shape == "circle":
        keep = np.abs(np.hypot(dx, dy) - half) < 0.5
    else:  # cross
        keep = (dx == 0) | (dy == 0)
    return dx[keep], dy[keep]


def synthetic_events(label: int, rng: np.random.Generator, *, size: int = 32, noise: float = 0.25
                     ) -> Dict[str, np.ndarray]:
    """One event stream ``{"t", "x", "y", "p"}`` (time-ordered, t in microseconds) of class ``label``.

    All random draws come first and do not depend on ``label``; the label then only reverses time
    (left, up) and swaps the axes (down, up).  Two calls with equally seeded generators and labels
    0 and 1 therefore give the same events in opposite time order.
    """
    if label not in range(len(SYNTHETIC_CLASSES)):
        raise ValueError(f"label must be in 0..{len(SYNTHETIC_CLASSES) - 1} "
                         f"({', '.join(SYNTHETIC_CLASSES)}), got {label!r}")
    # Shape and path of a canonical left-to-right motion.
    half_lo = max(2, size // 16)
    half = int(rng.integers(half_lo, max(half_lo, size // 8) + 1))
    dx, dy = _outline(_SHAPES[int(rng.integers(len(_SHAPES)))], half)
    length = rng.uniform(0.35, 0.6) * size
    x_start = rng.uniform(half, size - 1 - half - length)
    y_centre = rng.uniform(half, size - 1 - half)
    # Edge events at uniform random times along the path.
    n_signal = int(rng.poisson(rng.uniform(0.8, 1.2) * size * size))
    tau_s = rng.random(n_signal)
    point = rng.integers(len(dx), size=n_signal)
    xs = np.rint(x_start + length * tau_s + dx[point])
    ys = np.rint(y_centre + dy[point])
    # Sensor noise: uniform background activity plus a few hot pixels firing all the time.
    n_background = int(rng.poisson(noise * n_signal))
    xb = rng.integers(size, size=n_background)
    yb = rng.integers(size, size=n_background)
    tau_b = rng.random(n_background)
    n_hot_pixels = int(rng.integers(0, 3))
    hot_xy = rng.integers(size, size=(2, n_hot_pixels))
    n_hot = int(rng.poisson(0.2 * noise * n_signal)) if n_hot_pixels else 0
    which = rng.integers(max(n_hot_pixels, 1), size=n_hot)
    xh = hot_xy[0][which] if n_hot else np.zeros(0, np.int64)
    yh = hot_xy[1][which] if n_hot else np.zeros(0, np.int64)
    tau_h = rng.random(n_hot)

    x = np.clip(np.concatenate([xs, xb, xh]), 0, size - 1).astype(np.int64)
    y = np.clip(np.concatenate([ys, yb, yh]), 0, size - 1).astype(np.int64)
    tau = np.concatenate([tau_s, tau_b, tau_h])
    p = rng.integers(0, 2, size=len(tau)).astype(np.int64)  # polarity carries no direction

    if label in (1, 3):  # left, up: the same motion played backwards
        tau = 1.0 - tau
    if label in (2, 3):  # down, up: the same motion along the other axis
        x, y = y, x
    order = np.argsort(tau, kind="stable")
    t = np.floor(tau[order] * _DURATION_US).astype(np.int64)
    return {"t": t, "x": x[order], "y": y[order], "p": p[order]}


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODE[split], index]))


def synthetic_frames(seed: int, split: str, count: int, T: int, size: int = 32, noise: float = 0.25
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(frames [count, T, 2, size, size] int16 counts, labels [count])`` for one split."""
    classes = len(SYNTHETIC_CLASSES)
    frames = np.empty((count, T, 2, size, size), dtype=np.int16)
    labels = np.arange(count, dtype=np.int64) % classes
    for i in range(count):
        events = synthetic_events(int(labels[i]), _sample_rng(seed, split, i), size=size, noise=noise)
        frames[i] = split_by_number(events, T, size, size, dtype=np.int16)
    return torch.from_numpy(frames), torch.from_numpy(labels)


_MEMORY_CACHE: "OrderedDict[Tuple[Any, ...], Tuple[torch.Tensor, torch.Tensor]]" = OrderedDict()
_MEMORY_CACHE_SIZE = 4


def _cached_frames(key: Tuple[Any, ...]) -> Tuple[torch.Tensor, torch.Tensor]:
    if key in _MEMORY_CACHE:
        _MEMORY_CACHE.move_to_end(key)
        return _MEMORY_CACHE[key]
    value = synthetic_frames(*key)
    _MEMORY_CACHE[key] = value
    while len(_MEMORY_CACHE) > _MEMORY_CACHE_SIZE:
        _MEMORY_CACHE.popitem(last=False)
    return value


class SyntheticMotion(FrameDatasetBase):
    """Built-in event data (no download): which way does the shape move?  4 classes, ``[T, 2, size, size]``.

    Deterministic per ``seed``; generated in memory in about a second per thousand samples and kept
    in a small in-process cache, so the train and test sets of a run are made once.  ``root`` is
    not used (nothing is read or written).  ``noise`` is the number of noise events per signal event.
    """

    def __init__(self, root: Optional[str] = None, split: str = "train", T: int = 16, *, seed: int = 0,
                 num_train: int = 1000, num_test: int = 500, size: int = 32, noise: float = 0.25,
                 transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        split = check_choice("split", split, ("train", "test"))
        T = check_positive_int("T", T)
        seed = check_positive_int("seed", seed, minimum=0)
        num_train = check_positive_int("num_train", num_train)
        num_test = check_positive_int("num_test", num_test)
        size = check_positive_int("size", size, minimum=16)
        noise = check_number("noise", noise, minimum=0.0)
        super().__init__(classes=SYNTHETIC_CLASSES, input_shape=(2, size, size), T=T, transform=transform)
        self.split, self.seed, self.size, self.noise = split, seed, size, noise
        count = num_train if split == "train" else num_test
        self.frames, self.labels = _cached_frames((seed, split, count, T, size, noise))

    def __len__(self) -> int:
        return len(self.labels)

    def label_of(self, index: int) -> int:
        return int(self.labels[index])

    def load(self, index: int) -> Tuple[torch.Tensor, int]:
        return self.frames[index].float(), int(self.labels[index])
