"""What every residual block shares: argument checks, the neuron factory, conv-BN helpers, shapes.

Blocks take and return multi-step tensors ``[T, B, C, H, W]``. Convolutions and batch norms run
folded over T*B (:func:`sewforge.layers.seq_fold`); neurons loop over T. Layer names follow
torchvision (``conv1``, ``bn1``, ..., ``downsample.0`` / ``downsample.1``) so that parameter counts
and state-dict keys of the non-spiking layers line up with torchvision's ResNets.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

import torch
from torch import nn

from ..checks import positive_int
from ..elementwise import ElementwiseFunction, create_elementwise
from ..layers import Conv2d, seq_fold
from ..memory import combined_bound, mark_spikes, recompute_chain, recomputes_bn_neuron, spike_kind
from ..neurons import BaseNeuron, check_neuron_module, create_neuron, neuron_needs_channels
from ..registry import ELEMENTWISE

__all__ = ["ResidualBlock", "NeuronFactory", "neuron_factory", "conv_bn", "conv_bn_sn", "iter_blocks", "unfused",
           "counts_spikes", "spike_counting"]

NeuronFactory = Callable[[], nn.Module]


def neuron_factory(neuron: Union[str, Callable[..., nn.Module], None] = "IF", *, owner: str = "neuron",
                   **overrides: Any) -> NeuronFactory:
    """A zero-argument factory of fresh neurons from a registered name ("PLIF") or a callable
    (a neuron class, ``functools.partial(sewforge.create_neuron, ...)``), with shared overrides
    such as ``surrogate=`` or ``v_threshold=``; None-valued overrides mean "the neuron's default"."""
    kw = {k: v for k, v in overrides.items() if v is not None}
    if neuron is None:
        neuron = "IF"
    if isinstance(neuron, str):
        # fail now, with the registry's or the neuron's message, not mid-build (a per-channel neuron
        # gets its channels from each layer)
        probe = {"channels": 1} if neuron_needs_channels(functools.partial(create_neuron, neuron, **kw)) else {}
        create_neuron(neuron, **probe, **kw)
        return functools.partial(create_neuron, neuron, **kw)
    if isinstance(neuron, nn.Module):  # callable too, but calling it runs forward() without input
        raise TypeError(f"{owner}: got a neuron module {type(neuron).__name__}; pass a factory that makes a "
                        f"fresh one per layer, e.g. functools.partial(sewforge.create_neuron, "
                        f"{type(neuron).__name__.replace('Node', '')!r}), or a registered name")
    if not callable(neuron):
        raise TypeError(f"{owner}: neuron must be a zero-argument factory returning a neuron module "
                        f"(e.g. functools.partial(sewforge.create_neuron, 'PLIF')) or a neuron name, "
                        f"got {type(neuron).__name__}")
    return functools.partial(neuron, **kw) if kw else neuron


def conv_bn(conv: nn.Module, bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``BN(conv(x))`` on ``[T, B, C, H, W]``, folded once over T*B."""
    return seq_fold(lambda y: bn(conv(y)), x)


def conv_bn_sn(conv: nn.Module, bn: nn.Module, sn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``SN(BN(conv(x)))`` on ``[T, B, C, H, W]``; in "lean" memory the batch norm and the neuron
    run again in backward instead of keeping the neuron's charged potential
    (:func:`sewforge.memory.recompute_chain`)."""
    if not recomputes_bn_neuron():
        return sn(conv_bn(conv, bn, x))
    return recompute_chain(functools.partial(_bn_then, bn, sn), seq_fold(conv, x), modules=(bn, sn))


def _bn_then(bn: nn.Module, fn: Callable[..., torch.Tensor], y: torch.Tensor, *rest: Any) -> torch.Tensor:
    """``fn(BN(y), *rest)``: a chain that :func:`sewforge.memory.recompute_chain` reruns."""
    return fn(seq_fold(bn, y), *rest)


def _bn_add_then(bn: nn.Module, fn: Callable[..., torch.Tensor], y: torch.Tensor, shortcut: torch.Tensor
                 ) -> torch.Tensor:
    return fn(seq_fold(bn, y) + shortcut)


def _positive_int(name: str, value: Any, owner: str) -> int:
    return positive_int(value, f"{owner}: {name}")


class ResidualBlock(nn.Module):
    """Base of the blocks: holds the common arguments and implements the shared checks.

    Subclasses build the residual branch in ``__init__`` (after calling this one), name the last
    batch norm and the last neuron in ``_last_bn_name`` / ``_sn_last_name``, implement ``residual``
    (the input of ``sn_last`` before any shortcut), call :meth:`_add_shortcut` last, and say how
    the shortcut joins with the class attribute ``join``; ``forward`` is shared.
    ``sn_last`` is the neuron whose output is A (SEW, plain) or the block output (Spiking ResNet).
    A subclass may implement :meth:`residual_input` (the last batch norm's input) instead of
    ``residual``: then "lean" memory reruns its last batch norm, ``sn_last`` and g in backward too.
    """

    #: how the shortcut joins the branch: "sew" (``O = g(SN(F(S)), S)``, a downsample shortcut
    #: ends in a neuron, Fig. 2b), "add_before_sn" (Spiking ResNet, ``O = SN(F(S) + S)``, downsample
    #: conv-BN without neuron, Fig. 2a) or "none" (plain block).
    join: str = "sew"

    #: output channels of the block = ``width * expansion`` in the torchvision sense.
    expansion: int = 1
    #: whether the block combines its branches with an element-wise function ``g``.
    uses_g: bool = False
    _last_bn_name: str = "bn2"
    _sn_last_name: str = "sn2"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *,
                 neuron: Union[str, NeuronFactory], g: Any = "ADD", zero_init: bool = False,
                 kernel_size: int = 3, fuse: bool = True):
        super().__init__()
        owner = type(self).__name__
        self.in_channels = _positive_int("in_channels", in_channels, owner)
        self.out_channels = _positive_int("out_channels", out_channels, owner)
        self.stride = _positive_int("stride", stride, owner)
        self.kernel_size = _positive_int("kernel_size", kernel_size, owner)
        if self.kernel_size % 2 == 0:
            raise ValueError(f"{owner}: kernel_size must be odd so that padding kernel_size // 2 keeps the "
                             f"spatial size, got {kernel_size}")
        self._neuron_factory = neuron_factory(neuron, owner=owner)
        if self.uses_g:
            fn = create_elementwise(g if g is not None else "ADD")
            # Keep the registered name rather than the object: the object holds Triton functions and
            # lambdas, which neither pickle nor deepcopy; the name resolves through the registry.
            registered = fn.name in ELEMENTWISE and ELEMENTWISE.get(fn.name) is fn
            self._g: Union[str, ElementwiseFunction] = fn.name if registered else fn
        else:
            if g is not None and not (isinstance(g, str) and g.upper() == "ADD"):
                name = g.name if isinstance(g, ElementwiseFunction) else g
                raise ValueError(f"{owner}: got g={name!r}, but this block has no element-wise function "
                                 "(g applies to SEW blocks only); leave g at its default")
            self._g = "ADD"
        self.zero_init = bool(zero_init)
        self.fuse = bool(fuse)

    # -- construction helpers -------------------------------------------------------------
    def new_neuron(self, channels: Optional[int] = None) -> nn.Module:
        """A fresh neuron for a layer of ``channels`` channels (passed on to neurons with
        per-channel parameters)."""
        kw = {"channels": channels} if channels is not None and neuron_needs_channels(self._neuron_factory) else {}
        return check_neuron_module(self._neuron_factory(**kw), type(self).__name__)

    def conv(self, cin: int, cout: int, kernel_size: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
        return Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups,
                         bias=False)

    def _add_shortcut(self) -> None:
        """The downsample shortcut (conv1x1(stride)-BN, plus SN for SEW blocks) where stride or
        channels change, then zero-init; called at the end of the subclasses' ``__init__``."""
        self.downsample = None
        if self.join != "none" and self.has_downsample:
            self.downsample = nn.Sequential(self.conv(self.in_channels, self.out_channels, 1, self.stride),
                                            nn.BatchNorm2d(self.out_channels))
        self.downsample_sn = (self.new_neuron(self.out_channels) if self.join == "sew" and self.downsample is not None
                              else None)
        if self.zero_init:
            self.zero_init_()

    def residual_input(self, x: torch.Tensor) -> torch.Tensor:
        """The input of the last batch norm (``last_bn``): the residual branch up to its last
        convolution."""
        raise NotImplementedError

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The input of ``sn_last`` before any shortcut: ``last_bn`` of :meth:`residual_input`."""
        return seq_fold(self.last_bn, self.residual_input(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if recomputes_bn_neuron() and type(self).residual is ResidualBlock.residual:
            return self._forward_lean(x)
        y = self.residual(x)
        if self.join == "none":
            return self.sn_last(y)
        shortcut = x if self.downsample is None else seq_fold(self.downsample, x)
        if self.join == "add_before_sn":
            return self.sn_last(y + shortcut)
        if self.downsample_sn is not None:
            shortcut = self.downsample_sn(shortcut)
        return self.combine(y, shortcut)

    def _forward_lean(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` with every batch norm -> neuron chain (the last one with the shortcut's
        addition or g) rerun in backward: "lean" memory."""
        y = self.residual_input(x)
        bn, sn = self.last_bn, self.sn_last
        if self.join == "none":
            return recompute_chain(functools.partial(_bn_then, bn, sn), y, modules=(bn, sn))
        down = self.downsample
        if down is None:
            shortcut = x
        elif (self.downsample_sn is not None and isinstance(down, nn.Sequential) and len(down) == 2
              and isinstance(down[1], nn.modules.batchnorm._BatchNorm)):
            shortcut = conv_bn_sn(down[0], down[1], self.downsample_sn, x)
        else:
            shortcut = seq_fold(down, x)
            if self.downsample_sn is not None:
                shortcut = self.downsample_sn(shortcut)
        if self.join == "add_before_sn":
            if spike_kind(shortcut) is None:  # kept for the rerun, an fp32 shortcut would cost what H does
                return sn(seq_fold(bn, y) + shortcut)
            return recompute_chain(functools.partial(_bn_add_then, bn, sn), y, shortcut, modules=(bn, sn))
        return recompute_chain(functools.partial(_bn_then, bn, self.combine), y, shortcut, modules=(bn, sn))

    # -- public API -----------------------------------------------------------------------
    @property
    def g(self) -> ElementwiseFunction:
        """The element-wise function ``g(A, S)`` (SEW blocks); ADD for the others."""
        return create_elementwise(self._g)

    @property
    def sn_last(self) -> nn.Module:
        """The last neuron: its output is A (SEW, plain blocks) or the block output (Spiking ResNet).
        With ``fuse=True`` a SEW block's ``sn_last`` returns ``g(A, S)`` instead of A."""
        return getattr(self, self._sn_last_name)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm feeding ``sn_last`` (the one zero-init sets)."""
        return getattr(self, self._last_bn_name)

    @property
    def has_downsample(self) -> bool:
        return self.stride != 1 or self.in_channels != self.out_channels

    @torch.no_grad()
    def zero_init_(self) -> "ResidualBlock":
        """Make the residual branch start as an identity (section 3.3): last BN weight 0, and for
        g = AND its bias set so that ``sn_last`` fires at every step (A = 1, AND(1, S) = S)."""
        bn = self.last_bn
        self.zero_init = True
        if bn.weight.is_meta:  # shapes only (parameter counting, profiling): no values to set
            return self
        bn.weight.zero_()
        bias = 0.0
        if self.uses_g and self.g.identity_a == 1.0:
            if not callable(getattr(self.sn_last, "firing_input", None)):
                raise ValueError(
                    f"{type(self).__name__}: zero_init with g={self.g.name} sets the last BN bias to "
                    f"sn_last.firing_input(), but the neuron {type(self.sn_last).__name__} has no firing_input(); "
                    "use a sewforge neuron (BaseNeuron), give yours a firing_input(), or use zero_init=False")
            bias = self.sn_last.firing_input()
        bn.bias.fill_(bias)
        return self

    def out_shape(self, in_shape: Tuple[int, int, int]) -> Tuple[int, int, int]:
        """``(C, H, W)`` of the output for an input of ``(C, H, W)``; ValueError if it does not fit."""
        owner = type(self).__name__
        try:
            c, h, w = (int(v) for v in in_shape)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: input shape must be (C, H, W), got {in_shape!r}") from None
        if c != self.in_channels:
            raise ValueError(f"{owner}: input has {c} channels but the block expects in_channels="
                             f"{self.in_channels}")
        if h < 1 or w < 1:
            raise ValueError(f"{owner}: input spatial size {h}x{w} is empty; height and width must be >= 1")
        # every conv pads kernel_size // 2 with an odd kernel, so each stride-s layer gives ceil(n / s)
        return self.out_channels, (h - 1) // self.stride + 1, (w - 1) // self.stride + 1

    def check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{type(self).__name__}: expected a multi-step input [T, B, C, H, W], got {got}")
        if x.shape[2] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: input has {x.shape[2]} channels (shape {tuple(x.shape)}) "
                             f"but the block expects in_channels={self.in_channels}")

    def combine(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``g(sn_last(x), shortcut)``: one fused kernel, or two steps so hooks on sn_last see A."""
        g = self.g
        if self.fuse and isinstance(self.sn_last, BaseNeuron):  # other neuron modules have no fused op
            return self.sn_last(x, shortcut=shortcut, g=g)
        a = self.sn_last(x)
        out = g(a, shortcut)
        if isinstance(out, torch.Tensor) and spike_kind(a) is not None and spike_kind(shortcut) is not None:
            mark_spikes(out, bound=combined_bound(g.name, shortcut))  # as the fused op marks it
        return out

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}", f"stride={self.stride}"]
        if self.kernel_size != 3:
            parts.append(f"kernel_size={self.kernel_size}")
        if self.uses_g:
            parts.append(f"g={self.g.name}")
        parts += [f"zero_init={self.zero_init}", f"fuse={self.fuse}"]
        return ", ".join(parts)


def iter_blocks(module: nn.Module) -> Iterator[nn.Module]:
    """The residual blocks inside ``module`` in registration order, which is the forward order of
    sequential networks (any module with ``sn_last`` and ``fuse`` counts, so plugin blocks do too)."""
    for m in module.modules():
        if isinstance(m, ResidualBlock) or (hasattr(m, "sn_last") and hasattr(m, "fuse")):
            yield m


@contextlib.contextmanager
def unfused(module: nn.Module) -> Iterator[List[nn.Module]]:
    """Run the blocks of ``module`` with ``fuse=False`` inside the ``with`` body, so forward hooks
    on each ``block.sn_last`` see A rather than ``g(A, S)``; restores the previous settings."""
    blocks = list(iter_blocks(module))
    with _fuse_off(blocks):
        yield blocks


@contextlib.contextmanager
def _fuse_off(blocks: List[nn.Module]) -> Iterator[None]:
    """``fuse=False`` on ``blocks`` inside the ``with`` body; their settings restored after."""
    before = [b.fuse for b in blocks]
    try:
        for b in blocks:
            b.fuse = False
        yield
    finally:
        for b, f in zip(blocks, before):
            b.fuse = f


def counts_spikes(neuron: nn.Module) -> bool:
    """Whether ``neuron`` can count its own output spikes inside its op (``count_spikes`` switch,
    then ``spike_count`` / ``spike_numel`` after each forward; a fused SEW call counts A)."""
    return isinstance(getattr(neuron, "count_spikes", None), bool)


@contextlib.contextmanager
def spike_counting(module: nn.Module) -> Iterator[List[nn.Module]]:
    """Inside the ``with`` body every neuron of ``module`` that can count its spikes does
    (:func:`counts_spikes`), and the blocks whose last neuron cannot run with ``fuse=False`` so a
    forward hook on their ``sn_last`` sees A; yields the counting neurons, restores the settings."""
    counting = [m for m in module.modules() if counts_spikes(m)]
    before = [m.count_spikes for m in counting]
    try:
        for m in counting:
            m.count_spikes = True
        with _fuse_off([b for b in iter_blocks(module) if not counts_spikes(b.sn_last)]):
            yield counting
    finally:
        for m, c in zip(counting, before):
            m.count_spikes = c
