"""SpikingJelly 2.0 counterparts of the benchmarked layers and networks (``pip install sewforge[bench]``).

SpikingJelly 2.0 has no per-module ``backend`` attribute: each multi-step neuron call dispatches
on the input's device to a registered implementation (CPU: its PyTorch reference; CUDA: its
native CUDA extension, else Triton, else PyTorch, overridable with ``SJ_<NEURON>_CUDA_IMPLEMENTATION``
read at import). :func:`implementation` asks it which one runs.
"""
from __future__ import annotations

import os
import sys
from typing import Optional

import torch
from torch import nn

#: SpikingJelly's neuron op namespaces whose CUDA implementation the --sj-backend flag sets.
_NAMESPACES = ("IF", "LIF", "PLIF")
_TYPES = {"PLIF": "plif", "LIF": "lif", "IF": "if"}


def request_backend(backend: Optional[str]) -> None:
    """Ask SpikingJelly for a CUDA implementation (``cuda``, ``triton``, ``torch``; ``auto`` = its
    own priority). Must happen before SpikingJelly is imported."""
    if not backend or backend == "auto":
        return
    if any(m.startswith("spikingjelly._ops") for m in sys.modules):
        print(f"warning: spikingjelly is already imported; --sj-backend {backend} may not apply", file=sys.stderr)
    for ns in _NAMESPACES:
        os.environ[f"SJ_{ns}_CUDA_IMPLEMENTATION"] = backend


def implementation(neuron: str, device: torch.device) -> str:
    """The implementation SpikingJelly binds for this neuron on this device (eager mode)."""
    try:
        from spikingjelly.activation_based import functional

        return str(functional.neuron_implementation(_TYPES[neuron.upper()], device)["implementation"])
    except Exception as exc:  # noqa: BLE001 - diagnostics only
        return f"unknown ({type(exc).__name__})"


def make_neuron(neuron: str = "PLIF") -> nn.Module:
    """SpikingJelly's multi-step neuron matching ``sewforge.create_neuron(neuron)``: ATan surrogate,
    hard reset to 0, threshold 1, detach_reset=True, tau 2."""
    from spikingjelly.activation_based import neuron as sjn, surrogate

    kw = dict(surrogate_function=surrogate.ATan(), detach_reset=True, step_mode="m")
    name = neuron.upper()
    if name == "PLIF":
        return sjn.ParametricLIFNode(init_tau=2.0, **kw)
    if name == "LIF":
        return sjn.LIFNode(tau=2.0, **kw)
    if name == "IF":
        return sjn.IFNode(**kw)
    raise ValueError(f"no SpikingJelly counterpart for neuron {neuron!r} (PLIF, LIF or IF)")


def reset(net: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(net)


class SEWBlock(nn.Module):
    """conv3x3-BN-SN-conv3x3-BN-SN, then ``g = ADD`` with the shortcut (7B-Net's SEW block)."""

    def __init__(self, channels: int, neuron: str = "PLIF"):
        super().__init__()
        from spikingjelly.activation_based import layer

        self.conv1 = layer.Conv2d(channels, channels, 3, padding=1, bias=False, step_mode="m")
        self.bn1 = layer.BatchNorm2d(channels, step_mode="m")
        self.sn1 = make_neuron(neuron)
        self.conv2 = layer.Conv2d(channels, channels, 3, padding=1, bias=False, step_mode="m")
        self.bn2 = layer.BatchNorm2d(channels, step_mode="m")
        self.sn2 = make_neuron(neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn1(self.bn1(self.conv1(x)))
        out = self.sn2(self.bn2(self.conv2(out)))
        return out + x


class SEW7BNet(nn.Module):
    """7B-Net as sewforge's ``sew7b_gesture`` builds it (``c32k1s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11``;
    the stem is 1x1 as in the paper's code, see ``sewforge/models/dvs.py``), in SpikingJelly layers.
    Input ``[T, B, 2, H, W]``, output ``[T, B, classes]`` (the caller averages over T)."""

    def __init__(self, in_channels: int = 2, channels: int = 32, blocks: int = 7, num_classes: int = 11,
                 stem_kernel: int = 1, neuron: str = "PLIF", input_size: int = 128):
        super().__init__()
        from spikingjelly.activation_based import layer

        mods = [layer.Conv2d(in_channels, channels, stem_kernel, padding=stem_kernel // 2, bias=False, step_mode="m"),
                layer.BatchNorm2d(channels, step_mode="m"), make_neuron(neuron)]
        size = input_size
        for _ in range(blocks):
            mods += [SEWBlock(channels, neuron), layer.MaxPool2d(2, 2, step_mode="m")]
            size //= 2
        if size < 1:
            raise ValueError(f"7B-Net needs inputs of at least {2 ** blocks} pixels a side, got {input_size}")
        mods += [layer.Flatten(start_dim=1, step_mode="m"),
                 layer.Linear(channels * size * size, num_classes, step_mode="m")]
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def sew7b(input_size: int = 128, num_classes: int = 11) -> nn.Module:
    return SEW7BNet(input_size=input_size, num_classes=num_classes)


def sew_resnet18(num_classes: int = 1000) -> nn.Module:
    """SpikingJelly's own SEW ResNet-18 (ADD, IF, ATan, detach_reset) in multi-step mode."""
    from spikingjelly.activation_based import functional, neuron as sjn, surrogate
    from spikingjelly.activation_based.model import sew_resnet

    net = sew_resnet.sew_resnet18(cnf="ADD", spiking_neuron=sjn.IFNode, detach_reset=True,
                                  surrogate_function=surrogate.ATan(), num_classes=num_classes)
    functional.set_step_mode(net, "m")  # 2.0 has no set_backend: each neuron call dispatches by device
    return net
