"""SEW ResNet and Spiking ResNet for images (ImageNet, section 4.1 and Table 2), as spec strings.

The layout is torchvision's ResNet v1.5 with every ReLU replaced by a spiking neuron, as in the
paper's code (PAPER_NOTES, "ImageNet models"):

* stem ``c64k7s2p3-BN-IF-MPk3s2p1``: the conv7x7 s2 + BN runs once on a static image ``[B, 3, H, W]``
  and is repeated T times into a neuron (IF by default), then max pooling over T*B;
* four stages of basic blocks (18, 34) or bottlenecks with the stride on the 3x3 (50, 101, 152);
* ``GAP-FC1000``: global average pooling, then one linear layer on the mean over T.

Each model is its spec lowered by :func:`sewforge.spec.build` to a :class:`~sewforge.spec.SpecNet`
with torchvision's layer names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``downsample.0``, ``fc``)
and initialisation, so with parameter-free neurons (IF, LIF) the parameter counts and
``state_dict`` keys of the non-spiking layers equal torchvision's: 11,689,512 / 21,797,672 /
25,557,032 / 44,549,160 / 60,192,808 for depth 18 / 34 / 50 / 101 / 152. Any H, W runs; the
channels are fixed by ``input_shape`` (default ``(3, 224, 224)``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple

from ..checks import positive_int
from ..registry import BLOCKS, MODELS
from ..spec import SpecError, SpecNet, build

__all__ = ["PARAM_COUNTS", "resnet_spec", "build_resnet",
           "sew_resnet18", "sew_resnet34", "sew_resnet50", "sew_resnet101", "sew_resnet152",
           "spiking_resnet18", "spiking_resnet34", "spiking_resnet50", "spiking_resnet101", "spiking_resnet152"]

#: torchvision's parameter counts, which these models match with parameter-free neurons.
PARAM_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
STEM = "c64k7s2p3-BN-IF-MPk3s2p1"


def resnet_spec(block: str, layers: Sequence[int], num_classes: int = 1000) -> str:
    """The spec of a torchvision-layout ResNet with ``layers[i]`` blocks of type ``block`` in stage i:
    ``resnet_spec("SEW", (2, 2, 2, 2))`` is SEW ResNet-18."""
    if (isinstance(layers, (str, bytes)) or len(layers) != 4
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers)):
        raise SpecError(f"layers must be 4 positive block counts, one per stage, got {layers!r}")
    expansion = getattr(BLOCKS.get(block), "expansion", 1)
    parts = [STEM]
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
        width = planes * expansion
        parts.append(f"{block}(c{width}s2)" if stage else f"{block}(c{width})")
        if count == 2:
            parts.append(f"{block}(c{width})")
        elif count > 2:
            parts.append(f"{{{block}(c{width})}}*{count - 1}")
    return "-".join(parts + ["GAP", f"FC{num_classes}"])


def _input_shape(in_channels: Optional[int], input_shape: Optional[Sequence[int]]) -> Tuple[int, ...]:
    if input_shape is None:
        channels = 3 if in_channels is None else in_channels
        positive_int(channels, "in_channels", SpecError)
        return (channels, 224, 224)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else ()
    if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise SpecError(f"input_shape must be (C, H, W) with positive integers, got {input_shape!r}")
    if in_channels is not None and in_channels != shape[0]:
        raise SpecError(f"in_channels={in_channels} contradicts input_shape={shape}; give one of them")
    return shape


def build_resnet(spec: str, *, num_classes: Optional[int] = None, T: Optional[int] = None, g: Any = None,
                 neuron: Any = None, surrogate: Any = None, zero_init: Optional[bool] = None,
                 v_threshold: Optional[float] = None, fuse: Optional[bool] = None,
                 in_channels: Optional[int] = None, input_shape: Optional[Sequence[int]] = None,
                 memory: str = "compact", channels_last: bool = False, readout: str = "mean") -> SpecNet:
    """Build a ResNet spec (:func:`resnet_spec`) with torchvision's names and initialisation; T=4
    unless given. Arguments left at None keep the spec's defaults (IF neurons, g=ADD)."""
    return build(spec, input_shape=_input_shape(in_channels, input_shape), T=4 if T is None else T,
                 num_classes=num_classes, g=g, neuron=neuron, surrogate=surrogate, zero_init=zero_init,
                 v_threshold=v_threshold, fuse=True if fuse is None else fuse, readout=readout, memory=memory,
                 channels_last=channels_last, naming="torchvision", init="torchvision")


def register_resnet(family: str, depth: int, block: str, layers: Tuple[int, int, int, int]
                    ) -> Callable[[Callable[..., SpecNet]], Callable[..., SpecNet]]:
    """Register the decorated factory as the zoo entry of this ResNet (its name is the factory's)."""
    spec = resnet_spec(block, layers)
    title = "SEW ResNet" if family == "sew" else "Spiking ResNet"

    def decorate(fn: Callable[..., SpecNet]) -> Callable[..., SpecNet]:
        def factory(num_classes: Optional[int] = None, T: Optional[int] = None, g: Any = None, neuron: Any = None,
                    surrogate: Any = None, zero_init: Optional[bool] = None, v_threshold: Optional[float] = None,
                    fuse: Optional[bool] = None, input_shape: Optional[Sequence[int]] = None,
                    in_channels: Optional[int] = None, memory: str = "compact", channels_last: bool = False,
                    readout: str = "mean") -> SpecNet:
            return build_resnet(spec, num_classes=num_classes, T=T, g=g, neuron=neuron, surrogate=surrogate,
                                zero_init=zero_init, v_threshold=v_threshold, fuse=fuse, input_shape=input_shape,
                                in_channels=in_channels, memory=memory, channels_last=channels_last,
                                readout=readout)

        factory.__name__ = factory.__qualname__ = fn.__name__
        factory.__doc__ = (f"{title}-{depth} for 3x224x224 images (torchvision v1.5 layout, IF neurons, T=4 by "
                           f"default); {PARAM_COUNTS[depth]:,} parameters with IF neurons.\n\n    Spec: ``{spec}``\n"
                           "    Arguments left at None keep these defaults.")
        MODELS.add(fn.__name__, factory, description=f"{title}-{depth}, ImageNet layout, "
                                                     f"{PARAM_COUNTS[depth] / 1e6:.2f}M params",
                   spec=spec, family=family, depth=depth, params=PARAM_COUNTS[depth], input_shape=(3, 224, 224),
                   default_T=4, num_classes=1000)
        return factory
    return decorate


@register_resnet("sew", 18, "SEW", (2, 2, 2, 2))
def sew_resnet18(**kwargs: Any) -> SpecNet: ...


@register_resnet("sew", 34, "SEW", (3, 4, 6, 3))
def sew_resnet34(**kwargs: Any) -> SpecNet: ...


@register_resnet("sew", 50, "SEWBottleneck", (3, 4, 6, 3))
def sew_resnet50(**kwargs: Any) -> SpecNet: ...


@register_resnet("sew", 101, "SEWBottleneck", (3, 4, 23, 3))
def sew_resnet101(**kwargs: Any) -> SpecNet: ...


@register_resnet("sew", 152, "SEWBottleneck", (3, 8, 36, 3))
def sew_resnet152(**kwargs: Any) -> SpecNet: ...


@register_resnet("spiking", 18, "SpikingResNet", (2, 2, 2, 2))
def spiking_resnet18(**kwargs: Any) -> SpecNet: ...


@register_resnet("spiking", 34, "SpikingResNet", (3, 4, 6, 3))
def spiking_resnet34(**kwargs: Any) -> SpecNet: ...


@register_resnet("spiking", 50, "SpikingBottleneck", (3, 4, 6, 3))
def spiking_resnet50(**kwargs: Any) -> SpecNet: ...


@register_resnet("spiking", 101, "SpikingBottleneck", (3, 4, 23, 3))
def spiking_resnet101(**kwargs: Any) -> SpecNet: ...


@register_resnet("spiking", 152, "SpikingBottleneck", (3, 8, 36, 3))
def spiking_resnet152(**kwargs: Any) -> SpecNet: ...
