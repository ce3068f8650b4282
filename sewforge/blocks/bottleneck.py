"""Bottleneck blocks for ResNet-50 and deeper (torchvision v1.5 layout: the stride is on the 3x3).

``conv1x1 -> BN -> SN -> conv3x3(stride) -> BN -> SN -> conv1x1 -> BN -> SN``, with the inner
width ``out_channels // 4`` unless ``width`` is given. ``out_channels`` is the block's real output
channel count (``width * expansion`` in torchvision's terms).
"""
from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import nn

from ..registry import BLOCKS
from ..layers import seq_fold
from .base import NeuronFactory, ResidualBlock, _positive_int, conv_bn_sn

__all__ = ["SEWBottleneck", "SpikingBottleneck"]


class _Bottleneck(ResidualBlock):
    expansion = 4
    _last_bn_name = "bn3"
    _sn_last_name = "sn3"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 neuron: Union[str, NeuronFactory], g: Any = "ADD", zero_init: bool = False,
                 kernel_size: int = 3, fuse: bool = True, width: Optional[int] = None, groups: int = 1):
        super().__init__(in_channels, out_channels, stride, neuron=neuron, g=g, zero_init=zero_init,
                         kernel_size=kernel_size, fuse=fuse)
        owner = type(self).__name__
        self.groups = _positive_int("groups", groups, owner)
        if width is None:
            if self.out_channels % self.expansion:
                raise ValueError(f"{owner}: out_channels={out_channels} is not a multiple of the expansion "
                                 f"{self.expansion}; pass width= for the inner channels or use a multiple")
            width = self.out_channels // self.expansion
        self.width = _positive_int("width", width, owner)
        if self.width % self.groups:
            raise ValueError(f"{owner}: width={self.width} must be divisible by groups={self.groups}")
        self.conv1 = self.conv(self.in_channels, self.width, 1)
        self.bn1 = nn.BatchNorm2d(self.width)
        self.sn1 = self.new_neuron(self.width)
        self.conv2 = self.conv(self.width, self.width, self.kernel_size, self.stride, groups=self.groups)
        self.bn2 = nn.BatchNorm2d(self.width)
        self.sn2 = self.new_neuron(self.width)
        self.conv3 = self.conv(self.width, self.out_channels, 1)
        self.bn3 = nn.BatchNorm2d(self.out_channels)
        self.sn3 = self.new_neuron(self.out_channels)
        self._add_shortcut()

    def residual_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last batch norm: ``conv1x1(SN(BN(conv3x3(SN(BN(conv1x1(x)))))))``."""
        out = conv_bn_sn(self.conv1, self.bn1, self.sn1, x)
        out = conv_bn_sn(self.conv2, self.bn2, self.sn2, out)
        return seq_fold(self.conv3, out)

    def extra_repr(self) -> str:
        extra = f", width={self.width}" + (f", groups={self.groups}" if self.groups != 1 else "")
        return super().extra_repr() + extra


@BLOCKS.register("SEWBottleneck", description="SEW bottleneck (expansion 4): g(SN(BN(conv1x1(SN(BN(conv3x3("
                                              "SN(BN(conv1x1(S))))))))), S)", expansion=4, uses_g=True)
class SEWBottleneck(_Bottleneck):
    """SEW form of the bottleneck: ``O = g(A, S)`` after the third conv-BN-SN; downsample
    shortcut conv1x1-BN-SN."""

    uses_g = True


@BLOCKS.register("SpikingBottleneck", description="Spiking ResNet bottleneck (expansion 4): SN(S + BN(conv1x1("
                                                  "...))); downsample shortcut conv1x1-BN without SN",
                 expansion=4, uses_g=False)
class SpikingBottleneck(_Bottleneck):
    """Spiking ResNet form of the bottleneck: ``O = SN(S + F(S))``; ``fuse`` has no effect."""

    join = "add_before_sn"
