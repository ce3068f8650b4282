"""Property tests of the residual blocks: the identity mappings and gradients of section 3.

* Eq. 9 / Table 1: with zero-init, SEW ADD, IAND and AND blocks are exact identities for binary
  input, whatever the neuron, threshold and T.
* Eq. 11: through k stacked identity SEW blocks, dO/dS is exactly 1 (no vanishing or exploding).
* Eq. 8: a zero-init Spiking ResNet block is SN(S) (with IF and 0 < V_th <= 1 an identity);
  its gradient over all time steps, IF, LIF and PLIF, equals SpikingJelly 2.0's neuron's, and a
  two-step case is checked by hand.

Every property runs through the fused CPU kernel (the default on the CPU) and through the Triton
kernels in Triton's interpreter (``backend="triton"``).
"""
import functools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sewforge
from sewforge.blocks import SEWBlock, SEWBottleneck, SpikingBottleneck, SpikingResNetBlock

NEURONS = ["IF", "LIF", "PLIF"]
SURROGATES = ["ATan", "Sigmoid", "Rectangular", "PiecewiseQuadratic"]
BACKENDS = [None, "triton"]  # None: the default fused path (the C kernel on the CPU)


@st.composite
def spike_trains(draw, channels=None):
    """A binary tensor [T, B, C, H, W] with a random firing rate (including all-0 and all-1)."""
    t = draw(st.integers(1, 4))
    b = draw(st.integers(1, 2))
    c = channels if channels is not None else draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 4)), draw(st.integers(2, 4))  # >= 2 values per channel for BN in training
    rate = draw(st.sampled_from([0.0, 0.2, 0.5, 0.8, 1.0]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    return (torch.rand(t, b, c, h, w, generator=gen) < rate).float()


def neuron(name, **kw):
    return functools.partial(sewforge.create_neuron, name, **kw)


def sew_block(kind, channels, **kw):
    if kind == "bottleneck":
        return SEWBottleneck(channels, channels, width=2, **kw)
    return SEWBlock(channels, channels, **kw)


@given(x=spike_trains(), name=st.sampled_from(NEURONS), g=st.sampled_from(["ADD", "IAND", "AND"]),
       fuse=st.booleans(), v_threshold=st.sampled_from([0.3, 1.0, 2.0]), training=st.booleans(),
       kind=st.sampled_from(["basic", "bottleneck"]), backend=st.sampled_from(BACKENDS))
def test_zero_init_sew_block_is_identity(x, name, g, fuse, v_threshold, training, kind, backend):
    block = sew_block(kind, x.shape[2], neuron=neuron(name, v_threshold=v_threshold, backend=backend), g=g,
                      zero_init=True, fuse=fuse)
    block.train(training)
    assert torch.equal(block(x), x)


@given(x=spike_trains(), k=st.integers(1, 4), name=st.sampled_from(NEURONS),
       g=st.sampled_from(["ADD", "IAND", "AND"]), fuse=st.booleans(), backend=st.sampled_from(BACKENDS))
def test_gradient_through_identity_sew_blocks_is_exactly_one(x, k, name, g, fuse, backend):
    """Eq. 11: d sum(O^k) / dS = 1 everywhere (ADD as in the paper; IAND and AND at their identity
    also give 1, since dg/dS = 1 - A = 1 and A = 1 respectively)."""
    blocks = nn.Sequential(*[SEWBlock(x.shape[2], x.shape[2], neuron=neuron(name, backend=backend), g=g,
                                      zero_init=True, fuse=fuse) for _ in range(k)])
    x = x.requires_grad_()
    out = blocks(x)
    assert torch.equal(out, x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))


def sj_neuron(name, v_threshold, surrogate):
    """SpikingJelly 2.0's neuron with sewforge's defaults (hard reset to 0, detached reset): the
    independent implementation the Eq. 8 checks compare with."""
    from spikingjelly.activation_based import neuron as sjn, surrogate as sjs

    fn = {"ATan": lambda: sjs.ATan(alpha=2.0), "Sigmoid": lambda: sjs.Sigmoid(alpha=4.0)}[surrogate]()
    cls = {"IF": sjn.IFNode, "LIF": sjn.LIFNode, "PLIF": sjn.ParametricLIFNode}[name]
    return cls(v_threshold=v_threshold, v_reset=0.0, detach_reset=True, surrogate_function=fn, step_mode="m")


@given(x=spike_trains(), k=st.integers(1, 3), name=st.sampled_from(NEURONS),
       v_threshold=st.sampled_from([0.25, 0.5, 1.0]), surrogate=st.sampled_from(["ATan", "Sigmoid"]),
       bottleneck=st.booleans(), backend=st.sampled_from(BACKENDS), seed=st.integers(0, 1000))
def test_eq8_zero_init_spiking_resnet_blocks_across_time_steps(x, k, name, v_threshold, surrogate, bottleneck,
                                                                backend, seed):
    """Eq. 8 with the membrane: a zero-init Spiking ResNet block is ``O = SN(S)`` (its residual is
    0), so k blocks are SN applied k times. Output and the gradient with respect to S at every
    step (the same-step term sigma'(...) and the earlier steps' terms through the membrane) equal
    SpikingJelly's neuron applied k times, for IF, LIF and PLIF, through the fused kernels."""
    c = x.shape[2]
    sn = neuron(name, v_threshold=v_threshold, surrogate=surrogate, backend=backend)
    make = (lambda: SpikingBottleneck(c, c, neuron=sn, zero_init=True, width=2)) if bottleneck else \
        (lambda: SpikingResNetBlock(c, c, neuron=sn, zero_init=True))
    blocks = nn.Sequential(*[make() for _ in range(k)])
    ours_in = x.clone().requires_grad_()
    theirs_in = x.clone().requires_grad_()
    out = blocks(ours_in)
    ref = theirs_in
    for _ in range(k):
        ref = sj_neuron(name, v_threshold, surrogate)(ref)
    assert torch.equal(out, ref)
    if name == "IF" and v_threshold <= 1.0:
        assert torch.equal(out, x)  # IF with V_th <= 1 passes binary spikes on unchanged (section 3.1)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (grad,) = torch.autograd.grad(out, ours_in, weight)
    (want,) = torch.autograd.grad(ref, theirs_in, weight)
    torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)


def test_eq8_by_hand_for_one_if_block_over_two_steps():
    """A hand-computed case of Eq. 8 across steps: IF, V_th = 1, ATan (sigma'(x) = 1 / (1 + (pi x)^2)),
    input S = [0, 1] at one position. H[0] = 0 (no spike, V[0] = 0); H[1] = 1 (spike).
    dO[1]/dS[1] = sigma'(0) = 1; dO[1]/dS[0] = sigma'(0) * dH[1]/dV[0] * dV[0]/dH[0] = 1 * 1 * (1 - 0);
    dO[0]/dS[0] = sigma'(-1) = 1 / (1 + pi^2); dO[0]/dS[1] = 0 (no influence backwards in time)."""
    for backend in BACKENDS:
        block = SpikingResNetBlock(1, 1, neuron=neuron("IF", backend=backend), zero_init=True)
        x = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1, 1).expand(2, 1, 1, 2, 2).contiguous().requires_grad_()
        out = block(x)
        assert out.flatten(1)[:, 0].tolist() == [0.0, 1.0]
        (d1,) = torch.autograd.grad(out[1].sum(), x, retain_graph=True)
        (d0,) = torch.autograd.grad(out[0].sum(), x)
        assert d1[:, 0, 0, 0, 0].tolist() == pytest.approx([1.0, 1.0])
        assert d0[:, 0, 0, 0, 0].tolist() == pytest.approx([1.0 / (1.0 + math.pi ** 2), 0.0])


@given(cin=st.integers(1, 6), cout=st.integers(1, 6), stride=st.integers(1, 3), h=st.integers(1, 7),
       w=st.integers(1, 7), t=st.integers(1, 3), name=st.sampled_from(
           ["SEW", "SpikingResNet", "Plain", "SEWBottleneck", "SpikingBottleneck"]),
       kernel_size=st.sampled_from([1, 3, 5]))
def test_block_output_shape_matches_out_shape(cin, cout, stride, h, w, t, name, kernel_size):
    cls = sewforge.BLOCKS.get(name)
    cout = cout * cls.expansion
    block = cls(cin, cout, stride, neuron=neuron("IF"), kernel_size=kernel_size)
    want = (cout, -(-h // stride), -(-w // stride))  # ceil(n / stride)
    assert block.out_shape((cin, h, w)) == want
    assert block(torch.ones(t, 2, cin, h, w)).shape == (t, 2) + want
    assert (block.downsample is not None) == (name != "Plain" and (stride != 1 or cin != cout))


@given(x=spike_trains(channels=4), name=st.sampled_from(NEURONS), g=st.sampled_from(["ADD", "IAND", "AND"]),
       stride=st.sampled_from([1, 2]), cout=st.sampled_from([4, 8]), bottleneck=st.booleans(),
       seed=st.integers(0, 1000))
def test_fused_and_unfused_blocks_agree_in_output_and_gradients(x, name, g, stride, cout, bottleneck, seed):
    torch.manual_seed(seed)
    cls = SEWBottleneck if bottleneck else SEWBlock
    block = cls(4, cout, stride, neuron=neuron(name), g=g)
    with torch.no_grad():  # spread the last BN so that A is neither all 0 nor all 1
        block.last_bn.bias.uniform_(-1.0, 2.0)
        block.last_bn.weight.uniform_(0.5, 2.0)
    x = x.requires_grad_()
    weight = torch.randn(block(x).shape, generator=torch.Generator().manual_seed(seed))
    params = [p for p in block.parameters()]

    def run(fuse):
        block.fuse = fuse
        out = block(x)
        return out, torch.autograd.grad((out * weight).sum(), [x] + params, allow_unused=True)

    out_fused, grads_fused = run(True)
    out_unfused, grads_unfused = run(False)
    assert torch.equal(out_fused, out_unfused)
    for a, b in zip(grads_fused, grads_unfused):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
