"""DVS128 Gesture and CIFAR10-DVS from their original downloads, or from frames SpikingJelly made.

Both datasets read the recordings once, turn each sample into ``[T, 2, 128, 128]`` event counts
(split by number, as the paper) and keep them as one ``.npz`` per sample in
``<root>/frames_number_{T}_split_by_{method}/`` (or under ``cache_dir``), in exactly SpikingJelly's
layout.  A frames folder already made by SpikingJelly is therefore used as is, and a conversion
that was interrupted resumes with the samples still missing.  See :mod:`sewforge.data.cache`.

Splits are the paper's: DVS128 Gesture's official trial lists (1176 train / 288 test samples,
11 classes); CIFAR10-DVS per class the first 90% of recordings in sorted file-name order for
training and the rest for testing (900 / 100 per class, 10 classes).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..registry import natural_key
from .base import (DatasetFormatError, DatasetNotFoundError, SampleListDataset, check_choice, check_root, check_number,
                   check_positive_int)
from .cache import FrameJob, convert_recordings, frames_dirname, load_frames, remove_stale_temp_files
from .events import SPLIT_METHODS

__all__ = ["EventFrameFolder", "DVS128Gesture", "CIFAR10DVS", "GESTURE_CLASSES", "CIFAR10_CLASSES",
           "read_gesture_labels", "read_trial_list"]

GESTURE_CLASSES = ("hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise",
                   "right_arm_counter_clockwise", "left_arm_clockwise", "left_arm_counter_clockwise",
                   "arm_roll", "air_drums", "air_guitar", "other_gestures")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SENSOR_SIZE = 128
GESTURE_URL = "https://research.ibm.com/interactive/dvsgesture/"
CIFAR10DVS_URL = "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671"

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


class EventFrameFolder(SampleListDataset):
    """Samples stored as frames files ``[T, 2, H, W]``, one file per sample, loaded on access."""

    def __init__(self, samples: Sequence[Tuple[str, int]], *, classes: Sequence[str], T: int, H: int, W: int,
                 transform: Transform = None):
        super().__init__(classes=classes, input_shape=(2, H, W), T=T, transform=transform)
        self.samples = list(samples)

    def load(self, index: int) -> Tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        frames = load_frames(path)
        expected = (self.T,) + self.input_shape
        if frames.shape != expected:
            raise DatasetFormatError(f"{path}: frames of shape {frames.shape}, expected {expected} "
                                     f"([T, 2, H, W]); delete the file to have it made again")
        return torch.from_numpy(frames.astype(np.float32)), label


# -- shared helpers ------------------------------------------------------------------------------
def _check_event_options(split: str, T: int, split_by: str, workers: Optional[int]) -> Tuple[str, int, str, Optional[int]]:
    split = check_choice("split", split, ("train", "test"))
    T = check_positive_int("T", T)
    split_by = check_choice("split_by", split_by, SPLIT_METHODS)
    if workers is not None:
        workers = max(1, check_positive_int("workers", workers, minimum=0))
    return split, T, split_by, workers


def _frame_dirs(root: Path, cache_dir: Optional[os.PathLike], T: int, split_by: str) -> Tuple[List[Path], Path]:
    """Folders where frames are looked for (root first), and the one new frames are written to."""
    name = frames_dirname(T, split_by)
    search = [root / name]
    if cache_dir is None:
        return search, search[0]
    write = Path(cache_dir).expanduser() / name
    if write != search[0]:
        search.append(write)
    return search, write


def _existing(rel: str, search: Sequence[Path]) -> Optional[Path]:
    for folder in search:
        p = folder / rel
        if p.is_file():
            return p
    return None


def _npz_files(folder: Path) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".npz") and not f.startswith("."))


def _convert(jobs: List[FrameJob], write: Path, workers: Optional[int], name: str, verbose: bool) -> None:
    if jobs:
        remove_stale_temp_files(write)
        convert_recordings(jobs, workers=workers, label=name, verbose=verbose)


# -- DVS128 Gesture ---------------------------------------------------------------------------------
def _gesture_layout(root: Path, T: int, split_by: str) -> str:
    return (f"Expected either the original download (DvsGesture.tar.gz from {GESTURE_URL}, extracted) as\n"
            f"  {root}/DvsGesture/trials_to_train.txt, trials_to_test.txt, user01_fluorescent.aedat, "
            f"user01_fluorescent_labels.csv, ...\n"
            f"  (the same files directly in {root}, or in SpikingJelly's {root}/extract/DvsGesture, also work)\n"
            f"or frames made by SpikingJelly:\n"
            f"  {root}/{frames_dirname(T, split_by)}/{{train,test}}/<label 0-10>/*.npz (key 'frames')")


def read_trial_list(path: Path) -> List[str]:
    """Recording names (``user01_fluorescent.aedat``) listed in ``trials_to_train.txt`` / ``_test``."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not a text list of recordings ({exc})") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    for i, n in enumerate(names, 1):
        if not n.endswith(".aedat") or "/" in n or "\\" in n:
            raise DatasetFormatError(f"{path}: entry {i} {n!r} is not a recording name like "
                                     f"'user01_fluorescent.aedat'")
    return names


def read_gesture_labels(path: Path) -> List[Tuple[int, int, int]]:
    """``(label 0-10, start_us, end_us)`` rows of a ``*_labels.csv`` (class ids 1-11 in the file)."""
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except FileNotFoundError:
        raise DatasetNotFoundError(f"label file {path} does not exist (every recording needs its "
                                   f"<name>_labels.csv beside it)") from None
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{path}: not a text file of labels ({exc})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = [f for f in re.split(r"[,\s]+", line.strip()) if f]
        if not fields:
            continue
        if lineno == 1 and not fields[0].lstrip("-").isdigit():
            continue  # header "class,startTime_usec,endTime_usec"
        try:
            cls, start, end = (int(f) for f in fields)
        except ValueError:
            raise DatasetFormatError(f"{path}, line {lineno}: expected 'class,startTime_usec,endTime_usec' "
                                     f"as three integers, got {line.strip()!r}") from None
        if not 1 <= cls <= len(GESTURE_CLASSES):
            raise DatasetFormatError(f"{path}, line {lineno}: class {cls} is not in 1..{len(GESTURE_CLASSES)}")
        if end <= start:
            raise DatasetFormatError(f"{path}, line {lineno}: endTime_usec {end} is not after "
                                     f"startTime_usec {start}")
        rows.append((cls - 1, start, end))
    return rows


def _find_gesture_raw(root: Path) -> Optional[Path]:
    for folder in (root / "DvsGesture", root / "extract" / "DvsGesture", root):
        if (folder / "trials_to_train.txt").is_file() or (folder / "trials_to_test.txt").is_file():
            return folder
    return None


def _plan_gesture(raw: Path, split: str, T: int, split_by: str, search: List[Path], write: Path
                  ) -> Tuple[List[Tuple[str, int]], List[FrameJob]]:
    trials_file = raw / f"trials_to_{split}.txt"
    if not trials_file.is_file():
        raise DatasetNotFoundError(f"dvs128_gesture: {trials_file} is missing (the {split} split is defined "
                                   f"by this list of recordings)")
    samples, jobs = [], []
    for recording in read_trial_list(trials_file):
        aedat = raw / recording
        stem = recording[:-len(".aedat")]
        if not aedat.is_file():
            raise DatasetNotFoundError(f"dvs128_gesture: recording {aedat} listed in {trials_file} does not exist")
        per_label = [0] * len(GESTURE_CLASSES)
        missing = []
        for label, start, end in read_gesture_labels(raw / f"{stem}_labels.csv"):
            rel = f"{split}/{label}/{stem}_{per_label[label]}.npz"
            per_label[label] += 1
            found = _existing(rel, search)
            if found is None:
                found = write / rel
                missing.append((str(found), start, end))
            samples.append((str(found), label))
        if missing:
            jobs.append(FrameJob(str(aedat), "aedat3", tuple(missing), T, SENSOR_SIZE, SENSOR_SIZE, split_by))
    return samples, jobs


def _scan_gesture_frames(search: List[Path], split: str) -> List[Tuple[str, int]]:
    found: Dict[str, Tuple[str, int]] = {}
    for folder in search:
        split_dir = folder / split
        if not split_dir.is_dir():
            continue
        for entry in sorted(os.listdir(split_dir)):
            sub = split_dir / entry
            if entry.startswith(".") or not sub.is_dir():
                continue
            if not entry.isdigit() or int(entry) >= len(GESTURE_CLASSES):
                raise DatasetFormatError(f"dvs128_gesture: frames folder {sub} is not a label 0-10 "
                                         f"(SpikingJelly names class folders by label)")
            for f in _npz_files(sub):
                found.setdefault(f"{entry}/{f}", (str(sub / f), int(entry)))
    return list(found.values())


class DVS128Gesture(EventFrameFolder):
    """DVS128 Gesture (Amir et al., CVPR 2017): 11 gestures, ``[T, 2, 128, 128]`` event counts.

    ``root`` holds the extracted original download (``DvsGesture/`` with the ``.aedat`` recordings,
    their ``*_labels.csv`` and ``trials_to_train.txt`` / ``trials_to_test.txt``) and/or a frames
    folder made by SpikingJelly.  Each labelled gesture of a recording is one sample: the events
    with ``start <= t < end``.  ``workers`` processes convert recordings on first use (default:
    up to 8); ``cache_dir`` puts new frames elsewhere than ``root`` (e.g. when it is read-only).
    """

    def __init__(self, root: Optional[str] = None, split: str = "train", T: int = 16, *,
                 split_by: str = "number", workers: Optional[int] = None, cache_dir: Optional[str] = None,
                 verbose: bool = True, transform: Transform = None):
        split, T, split_by, workers = _check_event_options(split, T, split_by, workers)
        root_path = check_root(root, "dvs128_gesture", _gesture_layout(Path(root or "<root>"), T, split_by))
        search, write = _frame_dirs(root_path, cache_dir, T, split_by)
        raw = _find_gesture_raw(root_path)
        if raw is not None:
            samples, jobs = _plan_gesture(raw, split, T, split_by, search, write)
            _convert(jobs, write, workers, "dvs128_gesture", verbose)
        else:
            samples = _scan_gesture_frames(search, split)
            if not samples:
                raise DatasetNotFoundError(f"dvs128_gesture: no recordings and no {split} frames in {root_path}.\n"
                                           + _gesture_layout(root_path, T, split_by))
        samples.sort(key=lambda s: (s[1], natural_key(os.path.basename(s[0]))))
        super().__init__(samples, classes=GESTURE_CLASSES, T=T, H=SENSOR_SIZE, W=SENSOR_SIZE, transform=transform)
        self.root, self.split, self.split_by = root_path, split, split_by


# -- CIFAR10-DVS --------------------------------------------------------------------------------------
def _cifar10dvs_layout(root: Path, T: int, split_by: str) -> str:
    return (f"Expected either the original recordings ({CIFAR10DVS_URL}, the ten class zips extracted) as\n"
            f"  {root}/<class>/cifar10_<class>_<i>.aedat for the classes {', '.join(CIFAR10_CLASSES)}\n"
            f"  (SpikingJelly's {root}/extract/<class>/ also works)\n"
            f"or frames made by SpikingJelly:\n"
            f"  {root}/{frames_dirname(T, split_by)}/<class>/*.npz (key 'frames')")


def _aedat_files(folder: Path) -> List[str]:
    return sorted(f for f in os.listdir(folder) if f.endswith(".aedat") and not f.startswith("."))


def _find_cifar10dvs_raw(root: Path) -> Optional[Path]:
    for folder in (root, root / "extract"):
        if any((folder / c).is_dir() and _aedat_files(folder / c) for c in CIFAR10_CLASSES):
            return folder
    return None


def _split_sorted(names: List[str], ratio: float, split: str) -> List[str]:
    cut = math.ceil(len(names) * ratio)
    return names[:cut] if split == "train" else names[cut:]


class CIFAR10DVS(EventFrameFolder):
    """CIFAR10-DVS (Li et al., 2017): 10 classes, ``[T, 2, 128, 128]`` event counts.

    ``root`` holds one folder per class of ``.aedat`` recordings and/or a frames folder made by
    SpikingJelly.  The split is the paper's: per class the first ``ceil(train_ratio * n)``
    recordings in sorted file-name order train, the rest test.  ``workers`` and ``cache_dir`` as
    for :class:`DVS128Gesture`.
    """

    def __init__(self, root: Optional[str] = None, split: str = "train", T: int = 16, *,
                 split_by: str = "number", train_ratio: float = 0.9, workers: Optional[int] = None,
                 cache_dir: Optional[str] = None, verbose: bool = True, transform: Transform = None):
        split, T, split_by, workers = _check_event_options(split, T, split_by, workers)
        train_ratio = check_number("train_ratio", train_ratio, minimum=0.0, maximum=1.0)
        if train_ratio == 0.0:
            raise ValueError("train_ratio must be in (0, 1], got 0")
        root_path = check_root(root, "cifar10_dvs", _cifar10dvs_layout(Path(root or "<root>"), T, split_by))
        search, write = _frame_dirs(root_path, cache_dir, T, split_by)
        raw = _find_cifar10dvs_raw(root_path)
        samples: List[Tuple[str, int]] = []
        if raw is not None:
            missing = [c for c in CIFAR10_CLASSES if not (raw / c).is_dir() or not _aedat_files(raw / c)]
            if missing:
                raise DatasetNotFoundError(f"cifar10_dvs: no .aedat recordings for the classes "
                                           f"{', '.join(missing)} in {raw} (each class needs its folder "
                                           f"{raw}/<class>/ of recordings).\n"
                                           + _cifar10dvs_layout(root_path, T, split_by))
            jobs = []
            for label, cls in enumerate(CIFAR10_CLASSES):
                for name in _split_sorted(_aedat_files(raw / cls), train_ratio, split):
                    rel = f"{cls}/{name[:-len('.aedat')]}.npz"
                    found = _existing(rel, search)
                    if found is None:
                        found = write / rel
                        jobs.append(FrameJob(str(raw / cls / name), "cifar10dvs", ((str(found), None, None),),
                                             T, SENSOR_SIZE, SENSOR_SIZE, split_by))
                    samples.append((str(found), label))
            _convert(jobs, write, workers, "cifar10_dvs", verbose)
        else:
            missing_classes: List[str] = []
            for label, cls in enumerate(CIFAR10_CLASSES):
                names: Dict[str, str] = {}
                for folder in search:
                    if (folder / cls).is_dir():
                        for f in _npz_files(folder / cls):
                            names.setdefault(f, str(folder / cls / f))
                if not names:
                    missing_classes.append(cls)
                chosen = _split_sorted(sorted(names), train_ratio, split)
                samples.extend((names[f], label) for f in chosen)
            if len(missing_classes) == len(CIFAR10_CLASSES):
                raise DatasetNotFoundError(f"cifar10_dvs: no recordings and no frames in {root_path}.\n"
                                           + _cifar10dvs_layout(root_path, T, split_by))
            if missing_classes:
                raise DatasetNotFoundError(f"cifar10_dvs: the frames folder has no samples of the classes "
                                           f"{', '.join(missing_classes)} (looked in "
                                           f"{' and '.join(str(f) for f in search)}).\n"
                                           + _cifar10dvs_layout(root_path, T, split_by))
        super().__init__(samples, classes=CIFAR10_CLASSES, T=T, H=SENSOR_SIZE, W=SENSOR_SIZE, transform=transform)
        self.root, self.split, self.split_by, self.train_ratio = root_path, split, split_by, train_ratio
