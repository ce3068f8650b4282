"""Basic (two-convolution) blocks of Fig. 1 and Fig. 2: SEW, Spiking ResNet and plain."""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from ..registry import BLOCKS
from ..layers import seq_fold
from .base import NeuronFactory, ResidualBlock, conv_bn_sn

__all__ = ["SEWBlock", "SpikingResNetBlock", "PlainBlock"]


class _TwoConvBlock(ResidualBlock):
    """``[conv(k, stride) -> BN -> SN] -> [conv(k) -> BN -> (SN)]``; the subclass decides where the
    shortcut joins. ``downsample`` (conv1x1(stride)-BN) exists when stride or channels change."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 neuron: Union[str, NeuronFactory], g: Any = "ADD", zero_init: bool = False,
                 kernel_size: int = 3, fuse: bool = True):
        super().__init__(in_channels, out_channels, stride, neuron=neuron, g=g, zero_init=zero_init,
                         kernel_size=kernel_size, fuse=fuse)
        k = self.kernel_size
        self.conv1 = self.conv(self.in_channels, self.out_channels, k, self.stride)
        self.bn1 = nn.BatchNorm2d(self.out_channels)
        self.sn1 = self.new_neuron(self.out_channels)
        self.conv2 = self.conv(self.out_channels, self.out_channels, k)
        self.bn2 = nn.BatchNorm2d(self.out_channels)
        self.sn2 = self.new_neuron(self.out_channels)
        self._add_shortcut()

    def residual_input(self, x: torch.Tensor) -> torch.Tensor:
        """``conv(SN(BN(conv(x))))``: the input of the last batch norm."""
        return seq_fold(self.conv2, conv_bn_sn(self.conv1, self.bn1, self.sn1, x))


@BLOCKS.register("SEW", description="SEW block (Fig. 1c, 2b): O = g(SN(BN(conv(SN(BN(conv(S)))))), S); "
                                    "downsample shortcut conv1x1-BN-SN", expansion=1, uses_g=True)
class SEWBlock(_TwoConvBlock):
    """Spike-element-wise residual block: ``A = SN(BN(conv(SN(BN(conv(S))))))``, ``O = g(A, S)``.

    When stride or channels change, the shortcut becomes ``SN(BN(conv1x1(S)))`` so that it still
    carries spikes (Fig. 2b). With ``fuse=True`` the last neuron and g run as one kernel.
    """

    uses_g = True


@BLOCKS.register("SpikingResNet", description="Spiking ResNet basic block (Fig. 1b, 2a): "
                                              "SN(S + BN(conv(SN(BN(conv(S)))))); downsample shortcut "
                                              "conv1x1-BN without SN", expansion=1, uses_g=False)
class SpikingResNetBlock(_TwoConvBlock):
    """The ResNet basic block with ReLU replaced by spiking neurons: ``O = SN(S + F(S))``.

    The downsample shortcut is ``BN(conv1x1(S))`` without a neuron (Fig. 2a). ``fuse`` has no
    effect: the addition comes before the last neuron, not after it.
    """

    join = "add_before_sn"


@BLOCKS.register("Plain", description="plain block: the SEW block without its shortcut, "
                                      "SN(BN(conv(SN(BN(conv(S))))))", expansion=1, uses_g=False)
class PlainBlock(_TwoConvBlock):
    """Two conv-BN-SN layers and no shortcut: the baseline that shows what the shortcut buys.
    ``fuse`` has no effect (there is nothing to combine)."""

    join = "none"
