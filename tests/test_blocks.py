"""Residual blocks and layer folding: structure, shapes, zero-init, fusion switch, errors."""
import copy
import functools
import pickle

import pytest
import torch
from torch import nn

import sewforge
from sewforge.blocks import (PlainBlock, SEWBlock, SEWBottleneck, SpikingBottleneck, SpikingResNetBlock,
                             iter_blocks, unfused)
from sewforge.layers import SeqFold, seq_fold

IF = functools.partial(sewforge.create_neuron, "IF")
ALL_BLOCKS = ["SEW", "SpikingResNet", "Plain", "SEWBottleneck", "SpikingBottleneck"]


def spikes(*shape, p=0.4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=gen) < p).float()


# ---- layer folding -------------------------------------------------------------------------
def test_seq_fold_takes_batch_norm_statistics_over_time_and_batch():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 4, 5, 5) + torch.arange(3.0).view(3, 1, 1, 1, 1)  # each step has its own mean
    bn = nn.BatchNorm2d(4)
    folded = seq_fold(bn, x)
    want = nn.functional.batch_norm(x.reshape(6, 4, 5, 5), None, None, training=True).reshape(3, 2, 4, 5, 5)
    torch.testing.assert_close(folded, want)
    # a per-step BN would normalise every step to mean 0; folding keeps the differences between steps
    assert folded[0].mean() < -0.5 < 0.5 < folded[2].mean()
    torch.testing.assert_close(bn.running_mean, 0.1 * x.mean(dim=(0, 1, 3, 4)))


def test_seq_fold_module_wraps_several_layers_and_keeps_time_and_batch():
    x = torch.randn(4, 3, 2, 8, 8)
    layer = SeqFold(nn.Conv2d(2, 5, 3, stride=2, padding=1), nn.MaxPool2d(2), nn.Flatten())
    y = layer(x)
    assert y.shape == (4, 3, 5 * 2 * 2)
    torch.testing.assert_close(y[2, 1], layer.module(x[2, 1:2])[0])


def test_seq_fold_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\[T, B, \.\.\.\]"):
        seq_fold(nn.Identity(), torch.zeros(5))
    with pytest.raises(ValueError, match="T\\*B = 2\\*3 = 6.*returned \\(1, 4\\)"):
        seq_fold(lambda y: y.sum(0, keepdim=True), torch.zeros(2, 3, 4))
    with pytest.raises(TypeError):
        SeqFold(lambda y: y)
    with pytest.raises(ValueError):
        SeqFold()


# ---- structure ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_BLOCKS)
def test_blocks_are_registered_with_the_uniform_constructor(name):
    entry = sewforge.BLOCKS.entry(name)
    cls = entry.factory
    assert entry.meta("expansion") == cls.expansion
    block = cls(8, 16, 2, neuron=IF, zero_init=False, kernel_size=3, fuse=True)
    x = spikes(2, 3, 8, 7, 6)
    y = block(x)
    assert y.shape == (2, 3, 16, 4, 3) and y.shape[2:] == block.out_shape((8, 7, 6))
    assert isinstance(block.sn_last, sewforge.BaseNeuron)
    assert isinstance(block.last_bn, nn.BatchNorm2d) and block.last_bn.num_features == 16


def test_sew_block_layout_matches_fig1_and_fig2():
    block = SEWBlock(4, 8, 2, neuron=IF)
    assert [n for n, _ in block.named_children()] == ["conv1", "bn1", "sn1", "conv2", "bn2", "sn2",
                                                      "downsample", "downsample_sn"]
    assert block.conv1.stride == (2, 2) and block.conv1.bias is None and block.conv2.stride == (1, 1)
    assert block.downsample[0].kernel_size == (1, 1) and block.downsample[0].stride == (2, 2)
    assert block.sn_last is block.sn2
    same = SEWBlock(8, 8, neuron=IF)
    assert same.downsample is None and same.downsample_sn is None


def test_spiking_resnet_downsample_has_no_neuron_and_adds_before_the_last_neuron():
    block = SpikingResNetBlock(4, 8, 2, neuron=IF)
    assert isinstance(block.downsample, nn.Sequential) and len(block.downsample) == 2
    assert not any(isinstance(m, sewforge.BaseNeuron) for m in block.downsample.modules())
    assert block.downsample_sn is None


def test_plain_block_has_no_shortcut():
    block = PlainBlock(4, 8, 2, neuron=IF)
    assert block.downsample is None


# ---- forward against the paper's equations, written out independently ----------------------------
def if_neurons(x, v_th=1.0):
    """IF, Eqs. (1)-(3) with a hard reset to 0: H[t] = V[t-1] + X[t], S[t] = (H[t] >= V_th),
    V[t] = H[t] (1 - S[t])."""
    v, out = torch.zeros_like(x[0]), []
    for step in x:
        h = v + step
        s = (h >= v_th).to(x.dtype)
        v = h * (1 - s)
        out.append(s)
    return torch.stack(out)


def conv_bn_eval(conv, bn, x):
    """Convolution and inference-mode batch norm on every step of ``[T, B, C, H, W]``."""
    y = torch.stack([nn.functional.conv2d(step, conv.weight, None, conv.stride, conv.padding) for step in x])
    shape = (-1, 1, 1)
    return ((y - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps)
            * bn.weight.view(shape) + bn.bias.view(shape))


G = {"ADD": lambda a, s: a + s, "AND": lambda a, s: a * s, "IAND": lambda a, s: (1 - a) * s}


def randomise_bn(block, seed):
    gen = torch.Generator().manual_seed(seed)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen, dtype=m.weight.dtype) + 0.5
            m.bias.data = torch.rand(n, generator=gen, dtype=m.bias.dtype) * 1.5 - 0.25
            m.running_mean.data = torch.randn(n, generator=gen, dtype=m.running_mean.dtype) * 0.1
            m.running_var.data = torch.rand(n, generator=gen, dtype=m.running_var.dtype) + 0.5


@pytest.mark.parametrize("stride, cout", [(1, 4), (2, 8)])
@pytest.mark.parametrize("kind", ["SEW-ADD", "SEW-AND", "SEW-IAND", "SpikingResNet", "Plain"])
@pytest.mark.parametrize("fuse", [True, False])
def test_basic_blocks_compute_the_equations_of_fig1_and_fig2(kind, stride, cout, fuse):
    """SEW: O = g(SN(BN(conv(SN(BN(conv(S)))))), S') with S' = S or SN(BN(conv1x1(S))) (Fig. 2b);
    Spiking ResNet: O = SN(F(S) + BN(conv1x1(S))) (Fig. 2a); plain: O = SN(F(S)). Checked
    against the equations written out here, with the IF neuron of Eqs. (1)-(3)."""
    torch.manual_seed(0)
    name, _, g = kind.partition("-")
    cls = sewforge.BLOCKS.get(name)
    block = (cls(4, cout, stride, neuron=IF, g=g, fuse=fuse) if g else cls(4, cout, stride, neuron=IF)).double()
    randomise_bn(block, seed=stride + cout)
    block.eval()
    x = spikes(3, 2, 4, 6, 6, p=0.5).double()
    inner = if_neurons(conv_bn_eval(block.conv1, block.bn1, x))
    residual = conv_bn_eval(block.conv2, block.bn2, inner)
    shortcut = x if block.downsample is None else conv_bn_eval(block.downsample[0], block.downsample[1], x)
    if name == "SEW":
        if block.downsample is not None:
            shortcut = if_neurons(shortcut)
        a = if_neurons(residual)
        assert 0 < a.mean() < 1  # the check is not vacuous
        want = G[g](a, shortcut)
    elif name == "SpikingResNet":
        want = if_neurons(residual + shortcut)
    else:
        want = if_neurons(residual)
    with torch.no_grad():
        got = block(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bottleneck_is_torchvision_v15_layout():
    block = SEWBottleneck(64, 256, 2, neuron=IF)
    assert block.width == 64 and block.expansion == 4
    assert block.conv1.kernel_size == (1, 1) and block.conv1.stride == (1, 1)
    assert block.conv2.kernel_size == (3, 3) and block.conv2.stride == (2, 2)
    assert block.conv3.out_channels == 256 and block.sn_last is block.sn3 and block.last_bn is block.bn3
    wide = SpikingBottleneck(16, 16, neuron=IF, width=12, groups=3)
    assert wide.conv2.groups == 3 and wide.conv1.out_channels == 12 and wide.downsample is None
    assert wide(spikes(2, 1, 16, 3, 3)).shape == (2, 1, 16, 3, 3)


def test_neurons_are_fresh_modules_from_the_factory():
    made = []

    def factory():
        made.append(sewforge.create_neuron("PLIF"))
        return made[-1]

    block = SEWBlock(4, 8, 2, neuron=factory)
    assert len(made) == 3 and len({id(n) for n in made}) == 3
    assert {id(block.sn1), id(block.sn2), id(block.downsample_sn)} == {id(n) for n in made}
    # PLIF's learnable w is a parameter of the block
    assert sum(1 for n, _ in block.named_parameters() if n.endswith(".w")) == 3


class _Heaviside(nn.Module):
    """A user's own neuron module: spikes only, no fused SEW op, no firing_input."""

    def forward(self, x):
        return (x >= 1).to(x.dtype)


@pytest.mark.parametrize("g", ["ADD", "AND"])
def test_a_plain_neuron_module_runs_unfused_even_with_fuse_on(g):
    block = SEWBlock(4, 4, neuron=_Heaviside, g=g).double()
    assert block.fuse
    randomise_bn(block, seed=5)
    block.eval()
    x = spikes(3, 2, 4, 5, 5).double()
    heaviside = lambda t: (t >= 1).double()  # noqa: E731
    a = heaviside(conv_bn_eval(block.conv2, block.bn2, heaviside(conv_bn_eval(block.conv1, block.bn1, x))))
    with torch.no_grad():
        assert torch.equal(block(x), G[g](a, x))


def test_zero_init_and_needs_a_neuron_with_firing_input():
    with pytest.raises(ValueError, match="firing_input"):
        SEWBlock(4, 4, neuron=_Heaviside, g="AND", zero_init=True)


def test_neuron_may_be_given_by_name():
    block = SEWBlock(4, 4, neuron="LIF")
    assert type(block.sn1).__name__ == "LIFNode"


# ---- zero init ------------------------------------------------------------------------------
@pytest.mark.parametrize("g", ["ADD", "IAND"])
def test_zero_init_sets_last_bn_weight_to_zero(g):
    block = SEWBlock(4, 4, neuron=IF, g=g, zero_init=True)
    assert torch.equal(block.bn2.weight, torch.zeros(4)) and torch.equal(block.bn2.bias, torch.zeros(4))
    assert torch.equal(block.bn1.weight, torch.ones(4))


@pytest.mark.parametrize("neuron", ["IF", "LIF", "PLIF"])
def test_zero_init_and_makes_the_last_neuron_fire_every_step(neuron):
    block = SEWBottleneck(8, 8, neuron=functools.partial(sewforge.create_neuron, neuron), g="AND", zero_init=True,
                          width=4)
    assert torch.equal(block.bn3.weight, torch.zeros(8))
    assert torch.allclose(block.bn3.bias, torch.full((8,), block.sn3.firing_input()))
    seen = []
    block.sn_last.register_forward_hook(lambda m, i, o: seen.append(o))
    x = spikes(5, 2, 8, 3, 3)
    with unfused(block):
        out = block(x)
    assert torch.equal(seen[0], torch.ones_like(x)) and torch.equal(out, x)


def test_zero_init_spiking_resnet_sets_last_bn_weight_only():
    block = SpikingResNetBlock(4, 4, neuron=IF, zero_init=True)
    assert torch.equal(block.bn2.weight, torch.zeros(4)) and torch.equal(block.bn2.bias, torch.zeros(4))


def test_spiking_resnet_identity_needs_threshold_at_most_one():
    """Section 3.1: with V_th > 1 a single input spike no longer crosses the threshold."""
    x = torch.ones(3, 1, 2, 2, 2)
    ok = SpikingResNetBlock(2, 2, neuron=functools.partial(sewforge.create_neuron, "IF", v_threshold=1.0),
                            zero_init=True)
    high = SpikingResNetBlock(2, 2, neuron=functools.partial(sewforge.create_neuron, "IF", v_threshold=1.5),
                              zero_init=True)
    assert torch.equal(ok(x), x)
    assert torch.equal(high(x), torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1, 1, 1).expand_as(x))


# ---- fusion switch and hooks ------------------------------------------------------------------
def test_unfused_hook_on_sn_last_sees_a_and_fused_sees_o():
    torch.manual_seed(1)
    block = SEWBlock(3, 3, neuron=IF, g="IAND")
    nn.init.constant_(block.bn2.bias, 0.5)  # make A fire sometimes
    x = spikes(4, 2, 3, 5, 5)
    seen = []
    block.sn_last.register_forward_hook(lambda m, i, o: seen.append(o))
    fused_out = block(x)
    block.fuse = False
    unfused_out = block(x)
    a = seen[1]
    assert set(a.unique().tolist()) <= {0.0, 1.0} and 0 < a.mean() < 1
    assert torch.equal(seen[0], fused_out)  # the fused neuron returns g(A, S)
    assert torch.equal(unfused_out, (1 - a) * x) and torch.equal(fused_out, unfused_out)


def test_unfused_context_restores_settings_and_finds_nested_blocks():
    model = nn.Sequential(SEWBlock(2, 2, neuron=IF), nn.Sequential(SEWBlock(2, 2, neuron=IF, fuse=False)),
                          SpikingResNetBlock(2, 2, neuron=IF))
    blocks = list(iter_blocks(model))
    assert len(blocks) == 3
    with unfused(model) as inside:
        assert inside == blocks and not any(b.fuse for b in blocks)
    assert [b.fuse for b in blocks] == [True, False, True]


def test_fused_block_runs_on_the_fused_kernel(device):
    """The fused SEW kernel (Triton; interpreted on CPU) agrees with the reference through a block."""
    torch.manual_seed(2)
    kernel = SEWBlock(4, 4, neuron=functools.partial(sewforge.create_neuron, "PLIF", backend="triton"),
                      g="IAND").to(device)
    reference = copy.deepcopy(kernel)
    for m in reference.modules():
        if isinstance(m, sewforge.BaseNeuron):
            m.backend = "torch"
    nn.init.constant_(kernel.bn2.bias, 0.7)
    nn.init.constant_(reference.bn2.bias, 0.7)
    x = spikes(3, 1, 4, 4, 4).to(device).requires_grad_()
    y_kernel, y_ref = kernel(x), reference(x)
    assert torch.equal(y_kernel, y_ref)
    w = torch.randn_like(y_ref)
    g_kernel = torch.autograd.grad((y_kernel * w).sum(), [x, kernel.sn2.w])
    g_ref = torch.autograd.grad((y_ref * w).sum(), [x, reference.sn2.w])
    for a, b in zip(g_kernel, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---- persistence ----------------------------------------------------------------------------
def test_blocks_deepcopy_and_pickle():
    block = SEWBlock(4, 8, 2, neuron="PLIF", g="AND", zero_init=True)
    clone = pickle.loads(pickle.dumps(copy.deepcopy(block)))
    x = spikes(2, 2, 4, 4, 4)
    assert clone.g.name == "AND" and torch.equal(clone(x), block(x))


# ---- errors ---------------------------------------------------------------------------------
def test_unknown_g_raises_the_registry_key_error():
    with pytest.raises(KeyError, match="unknown element-wise function 'ANDD'.*'AND'"):
        SEWBlock(4, 4, neuron=IF, g="ANDD")


@pytest.mark.parametrize("name", ["SpikingResNet", "Plain", "SpikingBottleneck"])
def test_non_sew_blocks_refuse_a_g(name):
    cls = sewforge.BLOCKS.get(name)
    cls(8, 8, neuron=IF, g="ADD")  # the default is accepted
    cls(8, 8, neuron=IF, g=None)
    with pytest.raises(ValueError, match="g='IAND'.*SEW blocks only"):
        cls(8, 8, neuron=IF, g="IAND")


def test_out_shape_errors():
    block = SEWBlock(4, 8, 2, neuron=IF)
    assert block.out_shape((4, 1, 1)) == (8, 1, 1) and block.out_shape((4, 5, 8)) == (8, 3, 4)
    with pytest.raises(ValueError, match="3 channels.*in_channels=4"):
        block.out_shape((3, 8, 8))
    with pytest.raises(ValueError, match="0x8 is empty"):
        block.out_shape((4, 0, 8))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        block.out_shape((4, 8))


def test_forward_input_errors():
    block = SEWBlock(4, 4, neuron=IF)
    with pytest.raises(ValueError, match="has 3 channels.*in_channels=4"):
        block(torch.zeros(2, 1, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\[T, B, C, H, W\]"):
        block(torch.zeros(1, 4, 4, 4))


def test_constructor_errors():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        SEWBlock(4, 4, neuron=IF, kernel_size=2)
    with pytest.raises(ValueError, match="stride must be a positive integer"):
        SEWBlock(4, 4, 0, neuron=IF)
    with pytest.raises(ValueError, match="out_channels=10 is not a multiple of the expansion 4"):
        SEWBottleneck(4, 10, neuron=IF)
    with pytest.raises(ValueError, match="divisible by groups"):
        SEWBottleneck(4, 8, neuron=IF, width=5, groups=2)
    with pytest.raises(TypeError, match="zero-argument factory"):
        SEWBlock(4, 4, neuron=3)
    with pytest.raises(TypeError, match="returned int"):
        SEWBlock(4, 4, neuron=lambda: 3)
    with pytest.raises(TypeError, match="got a neuron module IFNode; pass a factory"):
        SEWBlock(4, 4, neuron=sewforge.create_neuron("IF"))  # one instance cannot serve every layer
    with pytest.raises(KeyError, match="unknown neuron"):
        SEWBlock(4, 4, neuron="PLIFF")
    with pytest.raises(TypeError):
        SEWBlock(4, 4)  # the neuron factory is required


def test_neuron_factory_applies_overrides_to_names_and_callables():
    from sewforge.blocks import neuron_factory
    from sewforge.neurons import LIFNode

    by_name = neuron_factory("LIF", tau=4.0, v_threshold=None)
    by_class = neuron_factory(LIFNode, tau=4.0, surrogate="Sigmoid")
    a, b = by_name(), by_class()
    assert a is not by_name() and a.tau == b.tau == 4.0 and a.v_threshold == 1.0 and b.surrogate.name == "Sigmoid"
    assert type(neuron_factory(None)()).__name__ == "IFNode"
    with pytest.raises(ValueError, match="tau"):
        neuron_factory("LIF", tau=0.5)


def test_a_plugin_registered_g_is_used_by_name():
    """g resolves through the ELEMENTWISE registry, so a function a plugin registers works in
    blocks (here OR(A, S) = A + S - A*S, run by the PyTorch reference)."""
    from sewforge.elementwise import ElementwiseFunction

    fn = ElementwiseFunction("OR_test", lambda a, s: a + s - a * s, None, None, None, 0.0, "A or S")
    sewforge.ELEMENTWISE.add("OR_test", fn)
    try:
        block = SEWBlock(3, 3, neuron=IF, g="or_test", zero_init=True)
        x = spikes(2, 2, 3, 4, 4)
        assert block.g is fn and torch.equal(block(x), x)
        nn.init.constant_(block.bn2.weight, 1.0)
        nn.init.constant_(block.bn2.bias, 0.5)
        block.fuse = False
        a = block.sn_last(block.residual(x))
        assert torch.equal(block(x), a + x - a * x)
    finally:
        sewforge.ELEMENTWISE.unregister("OR_test")


def test_zero_init_on_the_meta_device_builds_without_values():
    with torch.device("meta"):
        block = SEWBottleneck(8, 8, neuron="PLIF", g="AND", zero_init=True)
    assert block.zero_init and block.bn3.weight.is_meta
