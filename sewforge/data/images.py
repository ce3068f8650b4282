"""Static image data: ImageNet-style class folders and CIFAR-10's python batches.

ImageNet uses the paper's augmentation (PAPER_NOTES, "ImageNet models"): training
RandomResizedCrop 224 + horizontal flip, testing resize 256 + centre crop 224, both normalised with
the ImageNet mean and std.  CIFAR-10 (Table 9) is normalised with its per-channel statistics, with
random crop (padding 4) and horizontal flip for training.  Images are ``[3, H, W]`` float32; models
repeat them over T, so ``T`` is not used here.  torchvision is imported only by these datasets.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from .base import (DatasetFormatError, DatasetNotFoundError, FrameDatasetBase, SampleListDataset, check_choice,
                   check_positive_int, check_root)

__all__ = ["ImageNetFolder", "CIFAR10Batches", "IMAGENET_MEAN", "IMAGENET_STD", "CIFAR10_MEAN", "CIFAR10_STD",
           "imagenet_transform", "read_cifar10_batch", "CIFAR10_URL"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

Transform = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _torchvision():
    try:
        import torchvision
        from torchvision import transforms
    except ImportError as exc:  # pragma: no cover - torchvision is installed with the image extras
        raise ImportError(f"image datasets need torchvision (pip install torchvision): {exc}") from None
    return torchvision, transforms


# -- ImageNet ------------------------------------------------------------------------------------
def imagenet_transform(split: str, image_size: int = 224, augment: bool = True):
    """The paper's ImageNet preprocessing (PIL image -> normalised float tensor)."""
    _, tv = _torchvision()
    normalize = tv.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if split == "train" and augment:
        return tv.Compose([tv.RandomResizedCrop(image_size), tv.RandomHorizontalFlip(), tv.ToTensor(), normalize])
    resize = int(round(image_size * 256 / 224))
    return tv.Compose([tv.Resize(resize), tv.CenterCrop(image_size), tv.ToTensor(), normalize])


def _class_folders(folder: Path) -> List[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


class ImageNetFolder(SampleListDataset):
    """ImageNet-style data: ``root/train/<class>/*.JPEG`` and ``root/val/<class>/*.JPEG``.

    Class indices follow the sorted class-folder names of ``train/`` (also for ``val/``, which must
    have the same class folders, so labels cannot shift).  ``augment=False`` gives training images
    the test preprocessing.
    """

    LAYOUT = ("Expected root/train/<class>/<image> and root/val/<class>/<image> (the ILSVRC2012 validation "
              "images sorted into the same class folders as train, e.g. with the usual valprep.sh).")

    def __init__(self, root: Optional[str] = None, split: str = "train", T: Optional[int] = None, *,
                 image_size: int = 224, augment: bool = True, transform: Transform = None):
        split = check_choice("split", split, ("train", "test"))
        image_size = check_positive_int("image_size", image_size, minimum=8)
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be True or False, got {augment!r}")
        root_path = check_root(root, "imagenet", self.LAYOUT)
        sub = "train" if split == "train" else "val"
        folder = root_path / sub
        if not folder.is_dir():
            raise DatasetNotFoundError(f"imagenet: folder {folder} does not exist. {self.LAYOUT}")
        classes = _class_folders(folder)
        if not classes:
            raise DatasetNotFoundError(f"imagenet: {folder} has no class folders (images must be sorted into "
                                       f"one folder per class). {self.LAYOUT}")
        train_folder = root_path / "train"
        if sub == "val" and train_folder.is_dir():
            train_classes = _class_folders(train_folder)
            if classes != train_classes:
                only_val = sorted(set(classes) - set(train_classes))[:5]
                only_train = sorted(set(train_classes) - set(classes))[:5]
                raise DatasetFormatError(f"imagenet: the class folders of {folder} and {train_folder} differ "
                                         f"(only in val: {only_val}; only in train: {only_train}); labels "
                                         f"would not match")
        _torchvision()
        from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset
        index = {c: i for i, c in enumerate(classes)}
        try:
            self.samples = make_dataset(str(folder), index, extensions=IMG_EXTENSIONS)
        except FileNotFoundError as exc:
            raise DatasetNotFoundError(f"imagenet: {exc}. {self.LAYOUT}") from None
        super().__init__(classes=classes, input_shape=(3, image_size, image_size), T=None, transform=transform)
        self.root, self.split, self.augment = root_path, split, augment
        self.preprocess = imagenet_transform(split, image_size, augment)

    def load(self, index: int) -> Tuple[torch.Tensor, int]:
        from PIL import Image, UnidentifiedImageError
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                image = Image.open(f)
                image = image.convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DatasetFormatError(f"{path}: cannot decode the image ({type(exc).__name__}: {exc})") from None
        return self.preprocess(image), label


# -- CIFAR-10 -----------------------------------------------------------------------------------
_ALLOWED_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _RefusedGlobal(pickle.UnpicklingError):
    pass


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing else (a data file must not run code)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise _RefusedGlobal(f"refusing to load {module}.{name}: a CIFAR-10 batch holds only "
                             f"numpy arrays, lists and bytes")


def read_cifar10_batch(path: Path) -> Dict[str, Any]:
    """One CIFAR-10 python batch: ``{"data": uint8 [N, 3, 32, 32], "labels": int64 [N]}``."""
    try:
        with open(path, "rb") as f:
            raw = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DatasetNotFoundError(f"cifar10: batch file {path} does not exist") from None
    except _RefusedGlobal as exc:
        raise DatasetFormatError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            ImportError, MemoryError) as exc:
        raise DatasetFormatError(f"{path}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}); "
                                 f"the file may be truncated, download it again") from None
    if not isinstance(raw, dict):
        raise DatasetFormatError(f"{path}: expected a pickled dict, got {type(raw).__name__}")
    batch = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in raw.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DatasetFormatError(f"{path}: the key b'{key}' is missing (found {sorted(map(str, batch))})")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DatasetFormatError(f"{path}: b'data' must be a uint8 array [N, 3072], got {desc}")
    labels = np.asarray(batch["labels"])
    if labels.shape != (len(data),) or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{path}: b'labels' must hold {len(data)} integers, got shape {labels.shape} "
                                 f"of {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DatasetFormatError(f"{path}: b'labels' must be in 0..9, found {labels.min()}..{labels.max()}")
    return {"data": data.reshape(-1, 3, 32, 32), "labels": labels.astype(np.int64)}


class CIFAR10Batches(FrameDatasetBase):
    """CIFAR-10 from ``cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``), ``[3, 32, 32]``.

    Normalised with the CIFAR-10 channel mean and std; the training split adds random crop
    (padding 4) and horizontal flip unless ``augment=False``.  All images are held in memory (180 MB).
    """

    LAYOUT = (f"Expected root/cifar-10-batches-py/data_batch_1 ... data_batch_5 and test_batch (the python "
              f"version, {CIFAR10_URL}, extracted), or those files directly in root.")

    def __init__(self, root: Optional[str] = None, split: str = "train", T: Optional[int] = None, *,
                 augment: bool = True, transform: Transform = None):
        split = check_choice("split", split, ("train", "test"))
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be True or False, got {augment!r}")
        root_path = check_root(root, "cifar10", self.LAYOUT)
        folder = root_path / "cifar-10-batches-py"
        if not folder.is_dir():
            folder = root_path
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DatasetNotFoundError(f"cifar10: {', '.join(missing)} not found in {folder}. {self.LAYOUT}")
        batches = [read_cifar10_batch(folder / n) for n in names]
        classes = _CIFAR10_NAMES
        meta = folder / "batches.meta"
        if meta.is_file():
            try:
                with open(meta, "rb") as f:
                    info = _ArrayUnpickler(f, encoding="bytes").load()
                names_meta = info.get(b"label_names", info.get("label_names"))
                if names_meta is not None and len(names_meta) == 10:
                    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_meta)
            except Exception as exc:
                raise DatasetFormatError(f"{meta}: not a readable CIFAR-10 meta file ({type(exc).__name__}: "
                                         f"{exc})") from None
        super().__init__(classes=classes, input_shape=(3, 32, 32), T=None, transform=transform)
        self.images = torch.from_numpy(np.concatenate([b["data"] for b in batches]))
        self.labels = torch.from_numpy(np.concatenate([b["labels"] for b in batches]))
        self.root, self.split, self.augment = root_path, split, augment
        self._mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CIFAR10_STD).view(3, 1, 1)
        self._augment = None
        if split == "train" and augment:
            _, tv = _torchvision()
            self._augment = tv.Compose([tv.RandomCrop(32, padding=4), tv.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.labels)

    def label_of(self, index: int) -> int:
        return int(self.labels[index])

    def load(self, index: int) -> Tuple[torch.Tensor, int]:
        image = self.images[index]
        if self._augment is not None:
            image = self._augment(image)
        x = (image.float() / 255.0 - self._mean) / self._std
        return x, int(self.labels[index])
