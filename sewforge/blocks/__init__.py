"""Residual blocks of the paper (Fig. 1, Fig. 2), registered in ``sewforge.BLOCKS``.

Every block has the same constructor,
``Block(in_channels, out_channels, stride=1, *, neuron, g="ADD", zero_init=False, kernel_size=3,
fuse=True, **extra)``, takes and returns ``[T, B, C, H, W]``, and exposes ``out_shape((C, H, W))``,
``sn_last``, ``last_bn``, a run-time switch ``fuse`` and the class attribute ``expansion``.

==================  =====================================================  =========
name                output                                                 expansion
==================  =====================================================  =========
SEW                 ``g(SN(BN(conv(SN(BN(conv(S)))))), S)``                1
SpikingResNet       ``SN(S + BN(conv(SN(BN(conv(S))))))``                  1
Plain               ``SN(BN(conv(SN(BN(conv(S))))))``                      1
SEWBottleneck       ``g(A, S)``, A from conv1x1-conv3x3-conv1x1            4
SpikingBottleneck   ``SN(S + F(S))``, F = conv1x1-conv3x3-conv1x1          4
==================  =====================================================  =========
"""
from __future__ import annotations

from .base import (NeuronFactory, ResidualBlock, conv_bn, counts_spikes, iter_blocks, neuron_factory, spike_counting,
                   unfused)
from .basic import PlainBlock, SEWBlock, SpikingResNetBlock
from .bottleneck import SEWBottleneck, SpikingBottleneck

__all__ = ["ResidualBlock", "NeuronFactory", "neuron_factory", "conv_bn", "iter_blocks", "unfused", "counts_spikes",
           "spike_counting",
           "SEWBlock", "SpikingResNetBlock", "PlainBlock", "SEWBottleneck", "SpikingBottleneck"]
