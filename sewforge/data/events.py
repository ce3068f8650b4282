"""Event streams to frames: the integration used for every event dataset.

The paper's pipeline (PAPER_NOTES, "Input frames") cuts an event stream into ``T`` slices of
equal event count ("split by number") and counts events per polarity and pixel in each slice,
giving ``[T, 2, H, W]`` counts that are neither binarised nor normalised.  The same function turns
the built-in synthetic events and the real recordings into frames, so every dataset shares one
integration.  Everything here is vectorised (one ``np.bincount`` per stream).
"""
from __future__ import annotations

from typing import Any, Mapping, Tuple

import numpy as np

__all__ = ["SPLIT_METHODS", "slice_index", "split_by_number", "split_by_time", "events_to_frames",
           "check_events"]

SPLIT_METHODS = ("number", "time")


def check_events(events: Mapping[str, Any], H: int, W: int, *, need_time: bool = False
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, p)`` of ``events`` as int64 arrays, checked against a ``H x W`` sensor.

    ``events`` is a mapping (or a structured array) with fields ``x``, ``y``, ``p`` (and ``t``).
    Raises ValueError naming the field that is missing, mis-sized or out of range.
    """
    fields = ("t", "x", "y", "p") if need_time else ("x", "y", "p")
    arrays = {}
    for key in fields:
        try:
            arrays[key] = np.asarray(events[key])
        except (KeyError, ValueError, IndexError):
            raise ValueError(f"events need the field {key!r} (fields t, x, y, p as arrays)") from None
        if arrays[key].ndim != 1:
            raise ValueError(f"events[{key!r}] must be one-dimensional, got shape {arrays[key].shape}")
    n = len(arrays[fields[0]])
    for key in fields:
        if len(arrays[key]) != n:
            raise ValueError(f"events fields differ in length: {key!r} has {len(arrays[key])}, "
                             f"{fields[0]!r} has {n}")
    x = arrays["x"].astype(np.int64, copy=False)
    y = arrays["y"].astype(np.int64, copy=False)
    p = (arrays["p"] != 0).astype(np.int64)
    for key, v, bound in (("x", x, W), ("y", y, H)):
        if n and (v.min() < 0 or v.max() >= bound):
            bad = int(np.count_nonzero((v < 0) | (v >= bound)))
            raise ValueError(f"{bad} of {n} events have {key} outside [0, {bound - 1}] "
                             f"(sensor {H}x{W}); min {int(v.min())}, max {int(v.max())}")
    return x, y, p


def _check_T(T: Any) -> int:
    if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
        raise ValueError(f"T (number of frames) must be a positive integer, got {T!r}")
    return int(T)


def slice_index(n: int, T: int) -> np.ndarray:
    """Frame index of each of ``n`` events when split into ``T`` slices of equal count.

    Slice ``j`` holds events ``[j * (n // T), (j + 1) * (n // T))``; the last slice also takes the
    remainder (so with ``n < T`` every event lands in the last slice), as in the paper's code.
    """
    T = _check_T(T)
    per = n // T
    sizes = np.full(T, per, dtype=np.int64)
    sizes[-1] = n - per * (T - 1)
    return np.repeat(np.arange(T, dtype=np.int64), sizes)


def _count(index: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, T: int, H: int, W: int,
           dtype: Any) -> np.ndarray:
    flat = ((index * 2 + p) * H + y) * W + x
    counts = np.bincount(flat, minlength=T * 2 * H * W).reshape(T, 2, H, W)
    return counts.astype(dtype, copy=False)


def split_by_number(events: Mapping[str, Any], T: int, H: int, W: int, *, dtype: Any = np.float32
                    ) -> np.ndarray:
    """Per-polarity event counts ``[T, 2, H, W]`` over ``T`` slices of equal event count.

    ``events`` holds arrays ``x`` (column), ``y`` (row) and ``p`` (polarity; channel 1 for
    ``p != 0``), in stream order.  Counts are exact integers stored as ``dtype``.
    """
    T = _check_T(T)
    x, y, p = check_events(events, H, W)
    return _count(slice_index(len(x), T), x, y, p, T, H, W, dtype)


def split_by_time(events: Mapping[str, Any], T: int, H: int, W: int, *, dtype: Any = np.float32
                  ) -> np.ndarray:
    """Per-polarity event counts ``[T, 2, H, W]`` over ``T`` slices of equal duration.

    Slice ``j`` covers ``[t0 + j*dt, t0 + (j+1)*dt)`` with ``dt = (t_last - t0) // T``; the last
    slice also takes every later event (SpikingJelly's "split by time").  Events must be in time order.
    """
    T = _check_T(T)
    x, y, p = check_events(events, H, W, need_time=True)
    t = np.asarray(events["t"]).astype(np.int64, copy=False)
    if len(t) == 0:
        return np.zeros((T, 2, H, W), dtype=dtype)
    if np.any(np.diff(t) < 0):
        raise ValueError("split_by_time needs events in time order (t non-decreasing)")
    dt = max(int(t[-1] - t[0]) // T, 1)
    index = np.minimum((t - t[0]) // dt, T - 1)
    return _count(index, x, y, p, T, H, W, dtype)


def events_to_frames(events: Mapping[str, Any], T: int, H: int, W: int, split_by: str = "number", *,
                     dtype: Any = np.float32) -> np.ndarray:
    """``split_by_number`` or ``split_by_time`` by name (``split_by`` in :data:`SPLIT_METHODS`)."""
    if split_by == "number":
        return split_by_number(events, T, H, W, dtype=dtype)
    if split_by == "time":
        return split_by_time(events, T, H, W, dtype=dtype)
    raise ValueError(f"split_by must be one of {', '.join(map(repr, SPLIT_METHODS))}, got {split_by!r}")
