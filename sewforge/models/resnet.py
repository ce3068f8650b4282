"""SEW ResNet and Spiking ResNet for images (ImageNet, section 4.1 and Table 2).

The layout is torchvision's ResNet v1.5 with every ReLU replaced by a spiking neuron, as in the
paper's code (PAPER_NOTES, "ImageNet models"):

* stem: conv7x7 s2 + BN run once on the static image ``[B, 3, H, W]``, the result repeated T times
  into a neuron (IF by default), then MaxPool 3/2/1 over T*B;
* four stages of basic blocks (18, 34) or bottlenecks with the stride on the 3x3 (50, 101, 152);
* adaptive average pooling, flatten, mean over T, then one linear layer.

The non-spiking layers carry torchvision's names and initialisation, so with parameter-free
neurons (IF, LIF) the parameter counts equal torchvision's exactly: 11,689,512 / 21,797,672 /
25,557,032 / 44,549,160 / 60,192,808 for depth 18 / 34 / 50 / 101 / 152.
"""
from __future__ import annotations

from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..blocks import conv_bn, neuron_factory
from ..blocks.base import _positive_int
from ..layers import repeat_steps, seq_fold, steps_channels_last
from ..memory import check_memory_mode, memory_context, recompute
from ..registry import BLOCKS, MODELS

__all__ = ["ResNet", "PARAM_COUNTS",
           "sew_resnet18", "sew_resnet34", "sew_resnet50", "sew_resnet101", "sew_resnet152",
           "spiking_resnet18", "spiking_resnet34", "spiking_resnet50", "spiking_resnet101", "spiking_resnet152"]


def _input_shape(in_channels: Optional[int], input_shape: Optional[Sequence[int]], owner: str
                 ) -> Tuple[int, int, int]:
    if input_shape is None:
        return (_positive_int("in_channels", 3 if in_channels is None else in_channels, owner), 224, 224)
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else ()
    if len(shape) != 3 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"{owner}: input_shape must be (C, H, W) with positive integers, got {input_shape!r}")
    if in_channels is not None and in_channels != shape[0]:
        raise ValueError(f"{owner}: in_channels={in_channels} contradicts input_shape={shape}; give one of them")
    return shape  # type: ignore[return-value]


class ResNet(nn.Module):
    """A spiking ResNet for static images, multi-step over ``T`` time steps.

    ``block`` is a registered block name ("SEW", "SpikingResNet", "SEWBottleneck", ...) or class;
    ``layers`` the number of blocks per stage. Input ``[B, C, H, W]`` (the stem runs once and its
    output is repeated T times) or ``[T, B, C, H, W]`` (the stem runs folded over T*B); output
    logits ``[B, num_classes]``. ``input_shape`` (default ``(in_channels, 224, 224)``) only
    records the intended input and sets the stem's channels; any H, W >= 1 runs.

    ``memory`` (settable): "compact" (default) keeps the spikes saved for backward in 1 bit,
    "recompute" also reruns each block in backward, "dense" leaves autograd as usual (see
    :mod:`sewforge.memory`). ``channels_last=True`` keeps weights and every step of the
    activations in channels_last layout.
    """

    def __init__(self, block: Union[str, type], layers: Sequence[int], *, num_classes: int = 1000, T: int = 4,
                 g: Any = "ADD", neuron: Union[str, Callable[..., nn.Module], None] = "IF", surrogate: Any = None,
                 zero_init: bool = False, v_threshold: Optional[float] = None, fuse: bool = True,
                 in_channels: Optional[int] = None, input_shape: Optional[Sequence[int]] = None,
                 memory: str = "compact", channels_last: bool = False):
        super().__init__()
        owner = type(self).__name__
        self.memory = memory
        if not isinstance(channels_last, bool):
            raise ValueError(f"{owner}: channels_last must be True or False, got {channels_last!r}")
        self.channels_last = channels_last
        self.block_type = BLOCKS.get(block) if isinstance(block, str) else block
        if len(layers) != 4 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in layers):
            raise ValueError(f"{owner}: layers must be 4 positive block counts, one per stage, got {layers!r}")
        self.T = _positive_int("T", T, owner)
        self.num_classes = _positive_int("num_classes", num_classes, owner)
        self.input_shape: Tuple[int, int, int] = _input_shape(in_channels, input_shape, owner)
        in_channels = self.input_shape[0]
        make_neuron = neuron_factory(neuron, surrogate=surrogate, v_threshold=v_threshold)

        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.sn1 = make_neuron()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        expansion = getattr(self.block_type, "expansion", 1)
        channels = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), layers)):
            stage = []
            for j in range(count):
                stage.append(self.block_type(channels, planes * expansion, 2 if (i > 0 and j == 0) else 1,
                                             neuron=make_neuron, g=g, zero_init=zero_init, fuse=fuse))
                channels = planes * expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, self.num_classes)
        self.num_features = channels
        self._init_weights(zero_init)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def memory(self) -> str:
        """How activations are kept for backward: "compact", "dense" or "recompute" (settable)."""
        return self._memory

    @memory.setter
    def memory(self, value: str) -> None:
        self._memory = check_memory_mode(value)

    @torch.no_grad()
    def _init_weights(self, zero_init: bool) -> None:
        """torchvision's initialisation (as the paper's code), then each block's zero-init."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init:
            for b in self.blocks():
                b.zero_init_()

    @property
    def fuse(self) -> bool:
        """Whether the SEW blocks run their last neuron and g as one kernel; set False so that
        forward hooks on ``block.sn_last`` see A (see also :func:`sewforge.blocks.unfused`)."""
        return all(b.fuse for b in self.blocks())

    @fuse.setter
    def fuse(self, value: bool) -> None:
        for b in self.blocks():
            b.fuse = bool(value)

    def blocks(self) -> List[nn.Module]:
        """The residual blocks in forward order (``layer1[0]`` ... ``layer4[-1]``)."""
        return [b for stage in (self.layer1, self.layer2, self.layer3, self.layer4) for b in stage]

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """Input ``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> stem spikes after max pooling,
        ``[T, B, 64, H/4, W/4]``."""
        if not isinstance(x, torch.Tensor) or x.dim() not in (4, 5):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: expected an image batch [B, C, H, W] or a sequence "
                             f"[T, B, C, H, W], got {got}")
        channels = x.shape[-3]
        if channels != self.conv1.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {channels} channels (shape {tuple(x.shape)}) but "
                             f"the model expects {self.conv1.in_channels}")
        if x.dim() == 4:
            # the stem is not spiking: on a static image it gives the same result at every step
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = repeat_steps(self.bn1(self.conv1(x)), self.T, channels_last=self.channels_last)
        else:
            if self.channels_last:
                x = steps_channels_last(x)
            x = conv_bn(self.conv1, self.bn1, x)
        return seq_fold(self.maxpool, self.sn1(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output spikes ``[T, B, C, H', W']``."""
        x = self.stem(x)
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            if self.memory == "recompute":
                for block in stage:
                    x = recompute(block, x)
            else:
                x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Pool, flatten, average over T, classify: ``[T, B, C, H, W] -> [B, num_classes]``."""
        x = seq_fold(lambda y: torch.flatten(self.avgpool(y), 1), x)
        return self.fc(x.mean(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with memory_context(self.memory):
            return self.forward_head(self.forward_features(x))


_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
           101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}
_BLOCK_NAMES = {("sew", "basic"): "SEW", ("sew", "bottleneck"): "SEWBottleneck",
                ("spiking", "basic"): "SpikingResNet", ("spiking", "bottleneck"): "SpikingBottleneck"}
#: torchvision's parameter counts, which these models match with parameter-free neurons.
PARAM_COUNTS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}


def _build(family: str, depth: int, *, num_classes: Optional[int] = None, T: Optional[int] = None, g: Any = None,
           neuron: Any = None, surrogate: Any = None, zero_init: Optional[bool] = None,
           v_threshold: Optional[float] = None, fuse: Optional[bool] = None, **kwargs: Any) -> ResNet:
    kind, layers = _DEPTHS[depth]
    return ResNet(_BLOCK_NAMES[family, kind], layers,
                  num_classes=1000 if num_classes is None else num_classes,
                  T=4 if T is None else T,
                  g="ADD" if g is None else g,
                  neuron="IF" if neuron is None else neuron,
                  surrogate=surrogate,
                  zero_init=False if zero_init is None else zero_init,
                  v_threshold=v_threshold,
                  fuse=True if fuse is None else fuse,
                  **kwargs)


def _register(family: str, depth: int) -> Callable[..., ResNet]:
    name = f"{family}_resnet{depth}"
    title = "SEW ResNet" if family == "sew" else "Spiking ResNet"

    def factory(num_classes: Optional[int] = 1000, T: Optional[int] = 4, g: Any = "ADD", neuron: Any = "IF",
                surrogate: Any = None, zero_init: Optional[bool] = False, v_threshold: Optional[float] = None,
                fuse: Optional[bool] = True, input_shape: Optional[Sequence[int]] = None,
                **kwargs: Any) -> ResNet:
        return _build(family, depth, num_classes=num_classes, T=T, g=g, neuron=neuron, surrogate=surrogate,
                      zero_init=zero_init, v_threshold=v_threshold, fuse=fuse, input_shape=input_shape,
                      **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (f"{title}-{depth} for 3x224x224 images (torchvision v1.5 layout, IF neurons, T=4 "
                       f"by default); {PARAM_COUNTS[depth]:,} parameters with IF neurons. Arguments left at "
                       "None take their defaults.")
    description = f"{title}-{depth}, ImageNet layout, {PARAM_COUNTS[depth] / 1e6:.2f}M params"
    MODELS.add(name, factory, description=description, family=family, depth=depth,
               params=PARAM_COUNTS[depth], input_shape=(3, 224, 224), default_T=4)
    return factory


sew_resnet18 = _register("sew", 18)
sew_resnet34 = _register("sew", 34)
sew_resnet50 = _register("sew", 50)
sew_resnet101 = _register("sew", 101)
sew_resnet152 = _register("sew", 152)
spiking_resnet18 = _register("spiking", 18)
spiking_resnet34 = _register("spiking", 34)
spiking_resnet50 = _register("spiking", 50)
spiking_resnet101 = _register("spiking", 101)
spiking_resnet152 = _register("spiking", 152)
