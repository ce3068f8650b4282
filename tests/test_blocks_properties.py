"""Property tests of the residual blocks: the identity mappings and gradients of section 3.

* Eq. 9 / Table 1: with zero-init, SEW ADD, IAND and AND blocks are exact identities for binary
  input, whatever the neuron, threshold and T.
* Eq. 11: through k stacked identity SEW blocks, dO/dS is exactly 1 (no vanishing or exploding).
* Eq. 8: a zero-init Spiking ResNet block with IF and 0 < V_th <= 1 is an identity whose input
  gradient is sigma'(S - V_th), so k blocks give sigma'(S - V_th)^k.
"""
import functools

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sewforge
from sewforge.blocks import SEWBlock, SEWBottleneck, SpikingBottleneck, SpikingResNetBlock

NEURONS = ["IF", "LIF", "PLIF"]
SURROGATES = ["ATan", "Sigmoid", "Rectangular", "PiecewiseQuadratic"]


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
       kind=st.sampled_from(["basic", "bottleneck"]))
def test_zero_init_sew_block_is_identity(x, name, g, fuse, v_threshold, training, kind):
    block = sew_block(kind, x.shape[2], neuron=neuron(name, v_threshold=v_threshold), g=g, zero_init=True,
                      fuse=fuse)
    block.train(training)
    assert torch.equal(block(x), x)


@given(x=spike_trains(), k=st.integers(1, 4), name=st.sampled_from(NEURONS),
       g=st.sampled_from(["ADD", "IAND", "AND"]), fuse=st.booleans())
def test_gradient_through_identity_sew_blocks_is_exactly_one(x, k, name, g, fuse):
    """Eq. 11: d sum(O^k) / dS = 1 everywhere (ADD as in the paper; IAND and AND at their identity
    also give 1, since dg/dS = 1 - A = 1 and A = 1 respectively)."""
    blocks = nn.Sequential(*[SEWBlock(x.shape[2], x.shape[2], neuron=neuron(name), g=g, zero_init=True,
                                      fuse=fuse) for _ in range(k)])
    x = x.requires_grad_()
    out = blocks(x)
    assert torch.equal(out, x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))


@given(x=spike_trains(), k=st.integers(1, 3), v_threshold=st.sampled_from([0.25, 0.5, 0.9, 1.0]),
       surrogate=st.sampled_from(SURROGATES), bottleneck=st.booleans(), data=st.data())
def test_zero_init_spiking_resnet_block_is_identity_with_gradient_sigma_prime(x, k, v_threshold, surrogate,
                                                                              bottleneck, data):
    """Eq. 8: dO^k[t] / dS[t] = prod over blocks of sigma'(S[t] - V_th), and O[t] never depends on a
    later S. (Earlier S reach O[t] through the membrane: the paper's per-step Eq. 8 is the
    same-step part.)"""
    c = x.shape[2]
    sn = neuron("IF", v_threshold=v_threshold, surrogate=surrogate)
    make = (lambda: SpikingBottleneck(c, c, neuron=sn, zero_init=True, width=2)) if bottleneck else \
        (lambda: SpikingResNetBlock(c, c, neuron=sn, zero_init=True))
    blocks = nn.Sequential(*[make() for _ in range(k)])
    x = x.requires_grad_()
    out = blocks(x)
    assert torch.equal(out, x)
    t = data.draw(st.integers(0, x.shape[0] - 1), label="t")
    weight = torch.zeros_like(out)
    weight[t] = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(t))
    (grad,) = torch.autograd.grad(out, x, weight)
    derivative = sewforge.create_surrogate(surrogate).derivative(x[t].detach() - v_threshold)
    want = weight[t]
    for _ in range(k):
        want = want * derivative
    torch.testing.assert_close(grad[t], want)
    assert torch.equal(grad[t + 1:], torch.zeros_like(grad[t + 1:]))


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
