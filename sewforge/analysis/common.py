"""What the analyses share: the models under study, their inputs, and how results are written.

Models always come from :func:`sewforge.models.create_model` (a zoo name or a spec string) and
data from :func:`sewforge.data.create_dataset`, so an analysis sees exactly the network and the
samples that training would.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..fileio import atomic_file, atomic_write_text

__all__ = ["AnalysisError", "Variant", "parse_shape", "model_blocks", "model_uses_g", "block_names",
           "make_surrogate", "build_model", "random_spikes", "dataset_batch", "atomic_write_text",
           "write_csv", "save_figure", "pyplot", "default_labels"]


class AnalysisError(ValueError):
    """An analysis cannot run with the arguments it was given; the message says which and why."""


@dataclass(frozen=True)
class Variant:
    """One network of a comparison: a model, its element-wise function (None for blocks without
    one) and whether its residual branches start as identities."""

    model: str
    g: Optional[str] = None
    zero_init: bool = False

    @property
    def family(self) -> str:
        """The curve family, as the paper's legends name it: ``sew_resnet152 [ADD]``."""
        return self.model if self.g is None else f"{self.model} [{self.g}]"

    @property
    def label(self) -> str:
        return self.family + (" (zero init)" if self.zero_init else "")


def parse_shape(text: str) -> Tuple[int, int, int]:
    """``"3x64x64"`` -> ``(3, 64, 64)``; anything else raises :class:`AnalysisError`."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or any(s < 1 for s in shape):
        raise AnalysisError(f"input shape {text!r} is not CxHxW with positive integers, e.g. 3x64x64 or 2x128x128")
    return shape  # type: ignore[return-value]


def model_blocks(model: nn.Module) -> List[nn.Module]:
    """The residual blocks of ``model`` in forward order (``model.blocks()`` where it exists)."""
    if callable(getattr(model, "blocks", None)):
        blocks = list(model.blocks())
    else:
        from ..blocks import iter_blocks

        blocks = list(iter_blocks(model))
    if not blocks:
        raise AnalysisError(f"{type(model).__name__} has no residual blocks to analyse; use a model with SEW, "
                            "Spiking ResNet or plain blocks (see `sewforge list blocks`)")
    return blocks


def model_uses_g(model: nn.Module) -> bool:
    """Whether any block of ``model`` combines its branches with an element-wise function g."""
    return any(bool(getattr(b, "uses_g", False)) for b in model_blocks(model))


def block_names(model: nn.Module) -> Dict[int, str]:
    """``id(module) -> qualified name`` (``layer3.5``), to label blocks in results."""
    return {id(m): name for name, m in model.named_modules()}


def make_surrogate(name: Optional[str], alpha: Optional[float]) -> Any:
    """A surrogate object from a registered name and its shape parameter (alpha, or ``a`` for
    Rectangular); None for both means "the model's own default"."""
    if name is None and alpha is None:
        return None
    from ..registry import SURROGATES
    from ..surrogates import create_surrogate

    name = name or "ATan"
    cls = SURROGATES.get(name)
    param = getattr(cls, "param_name", "alpha")
    if alpha is None:
        return create_surrogate(name)
    if param is None:
        raise AnalysisError(f"surrogate {name!r} has no shape parameter; drop --alpha")
    return create_surrogate(name, **{param: float(alpha)})


def build_model(variant: Variant, *, T: Optional[int] = None, num_classes: Optional[int] = None,
                input_shape: Optional[Tuple[int, int, int]] = None, neuron: Optional[str] = None,
                surrogate: Any = None, v_threshold: Optional[float] = None, seed: int = 0) -> nn.Module:
    """``create_model`` for one variant, seeded so that every variant of a comparison starts from
    the same weights (the paper's "same initialization parameters")."""
    from ..models import create_model

    torch.manual_seed(seed)
    return create_model(variant.model, T=T, num_classes=num_classes, input_shape=input_shape, g=variant.g,
                        zero_init=variant.zero_init, neuron=neuron, surrogate=surrogate, v_threshold=v_threshold)


def random_spikes(shape: Sequence[int], *, T: int, batch: int, p: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Bernoulli(p) spikes ``[T, batch, *shape]``, the same for every call with the same seed."""
    if not 0.0 <= p <= 1.0:
        raise AnalysisError(f"spike probability p={p} must lie in [0, 1]")
    gen = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((T, batch, *shape), float(p)), generator=gen)


def dataset_batch(name: str, *, T: int, batch: int, split: str = "train", seed: int = 0, root: Optional[str] = None,
                  **kwargs: Any) -> Tuple[torch.Tensor, torch.Tensor, Any]:
    """``batch`` samples of a registered dataset (a seeded random subset) as the model takes them:
    ``([T, B, C, H, W] or [B, C, H, W], labels [B], dataset)``."""
    from ..data import create_dataset
    from ..data.transforms import time_major

    dataset = create_dataset(name, root=root, split=split, T=T, **kwargs)
    if len(dataset) == 0:
        raise AnalysisError(f"dataset {name!r} split {split!r} is empty")
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(len(dataset), generator=gen)[:batch].tolist()
    samples = [dataset[i] for i in index]
    x = torch.stack([torch.as_tensor(s[0], dtype=torch.float32) for s in samples])
    y = torch.tensor([int(s[1]) for s in samples], dtype=torch.long)
    return time_major(x), y, dataset


def default_labels(batch: int, num_classes: int, seed: int = 0) -> torch.Tensor:
    """Uniform random class labels for inputs that have none (random spikes)."""
    gen = torch.Generator().manual_seed(seed + 1)
    return torch.randint(num_classes, (batch,), generator=gen)


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.6g}"
    if isinstance(value, bool):
        return int(value)
    return "" if value is None else value


def write_csv(path: Union[str, Path], rows: Iterable[Dict[str, Any]], columns: Sequence[str]) -> Path:
    """Rows (dicts) as CSV with a header, atomically; NaN and None become empty cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def save_figure(fig: Any, path: Union[str, Path]) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    plt = pyplot()
    path = Path(path)
    try:
        with atomic_file(path) as fh:
            fig.savefig(fh, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt
