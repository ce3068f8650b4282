"""The model zoo: ``create_model(name_or_spec, **kw)`` and ``list_models(pattern)``, timm-like.

Models are registered in ``sewforge.MODELS``: the image ResNets in :mod:`.resnet`, the DVS and
CIFAR-10 networks of the paper (defined by spec strings) in :mod:`.dvs`. ``create_model`` also
accepts a spec string, which it compiles with :func:`sewforge.spec.build`.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional

from torch import nn

from ..registry import MODELS
from ..spec import SpecError, build, parse
from . import dvs, resnet  # noqa: F401  (register the zoo)

__all__ = ["create_model", "list_models", "is_model_name", "set_pretrained_loader"]

#: ``loader(name, path, **kwargs) -> model`` behind ``create_model(name, pretrained=path)``. The
#: checkpoint converters (:mod:`sewforge.interop`, a layer above the zoo) install it when sewforge
#: is imported, so the zoo does not depend on them.
_pretrained_loader: Optional[Callable[..., nn.Module]] = None


def set_pretrained_loader(loader: Callable[..., nn.Module]) -> None:
    """Install the function that reads ``pretrained=`` weights (see :func:`create_model`)."""
    global _pretrained_loader
    _pretrained_loader = loader


def list_models(pattern: str = "*") -> List[str]:
    """Registered model names matching a shell-style wildcard (``'sew_*'``), naturally sorted."""
    return MODELS.names(pattern)


def is_model_name(name: Any) -> bool:
    """Whether ``name`` is a registered model (rather than a spec string)."""
    return isinstance(name, str) and name.strip() in MODELS


def _accepts(factory: Any, name: str) -> bool:
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def create_model(name_or_spec: str, **kwargs: Any) -> nn.Module:
    """A zoo model by name, or a network compiled from a spec string.

    ``create_model("sew7b_gesture", g="IAND")``;
    ``create_model("c32k3s1-BN-PLIF-FC10", input_shape=(2, 32, 32), T=8)``.
    Keyword arguments set to None mean "the model's default" and are dropped. Common ones:
    ``num_classes``, ``T``, ``g``, ``neuron``, ``surrogate``, ``zero_init``, ``v_threshold``;
    a spec string also needs ``input_shape=(C, H, W)``. Execution: ``memory="compact"`` (default;
    spikes saved for backward in 1 bit), ``"lean"`` (plus each batch norm -> neuron chain rerun in
    backward instead of keeping the neuron's fp32 potential), ``"recompute"`` (each residual block
    rerun in backward, plus compact) or ``"dense"``; ``channels_last=True`` for channels_last weights and activations.
    ``pretrained=PATH`` loads weights from a sewforge checkpoint, a SpikingJelly 2.0 state dict or a
    2021 SEW checkpoint, converting them (:func:`sewforge.interop.convert_state_dict`).
    """
    pretrained = kwargs.pop("pretrained", None)
    if pretrained is not None:
        if not isinstance(name_or_spec, str) or name_or_spec.strip() not in MODELS:
            raise ValueError(f"pretrained= needs a zoo model name (see `sewforge list models`), got {name_or_spec!r}")
        if _pretrained_loader is None:  # pragma: no cover - sewforge/__init__ installs it
            raise RuntimeError("no checkpoint reader is installed for pretrained=; import sewforge.interop")
        return _pretrained_loader(name_or_spec.strip(), pretrained, **kwargs)
    if not isinstance(name_or_spec, str):
        raise TypeError(f"create_model expects a model name or a spec string, got {type(name_or_spec).__name__}")
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    name = name_or_spec.strip()
    if name in MODELS:
        factory = MODELS.get(name)
        input_shape = kwargs.pop("input_shape", None)
        if input_shape is not None and _accepts(factory, "input_shape"):
            kwargs["input_shape"] = tuple(input_shape)
        model = factory(**kwargs)
        if input_shape is not None and not _accepts(factory, "input_shape"):
            own = getattr(model, "input_shape", None)
            if own is not None and len(own) == len(tuple(input_shape)) and own[0] != tuple(input_shape)[0]:
                raise SpecError(f"model {MODELS.entry(name).name!r} takes {own[0]}-channel inputs {tuple(own)}; "
                                f"input_shape={tuple(input_shape)} does not fit")
        return model
    if "input_shape" not in kwargs:
        parse(name_or_spec)  # an unknown single name fails here, with model suggestions
        raise SpecError(f"building the spec {name_or_spec!r} needs input_shape=(C, H, W), e.g. "
                        "create_model(spec, input_shape=(2, 128, 128), T=16)")
    return build(name_or_spec, **kwargs)
