"""channels_last end to end: the multi-step input converted per step, weights and the folded layers'
outputs in channels_last, and the same results as the contiguous network with the same weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import sewforge
from sewforge.blocks import SEWBlock
from sewforge.layers import repeat_steps, seq_fold, steps_channels_last
from sewforge.models.resnet import build_resnet, resnet_spec
from sewforge.neurons import BaseNeuron
from sewforge.spec import SpecError

CL = torch.channels_last


def per_step_channels_last(x):
    """The oracle: folding T*B is a view (the steps follow each other in memory) and the folded
    ``[T*B, C, H, W]`` is channels_last."""
    steps, batch, c, h, w = x.shape
    try:
        folded = x.view(steps * batch, c, h, w)
    except RuntimeError:
        return False
    return folded.is_contiguous(memory_format=CL) and (c * h * w == 1 or not folded.is_contiguous())


def record_layouts(model):
    """Output layout of every convolution and batch norm (4-D, i.e. folded over T*B)."""
    seen = []

    def hook(module, args, out):
        if out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1 and out.shape[1] > 1:
            seen.append((type(module).__name__, out.is_contiguous(memory_format=CL)))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.register_forward_hook(hook)
    return seen


def _neuron_keeps_layout() -> bool:
    x = steps_channels_last(torch.rand(2, 2, 3, 4, 5))
    return per_step_channels_last(sewforge.create_neuron("IF")(x))


def test_steps_channels_last_converts_once_and_keeps_values():
    x = torch.rand(3, 2, 4, 5, 6)
    y = steps_channels_last(x)
    assert per_step_channels_last(y) and torch.equal(x, y)
    assert steps_channels_last(y) is y  # already so: no copy
    assert y.flatten(0, 1).is_contiguous(memory_format=CL) and y.flatten(0, 1)._base is not None
    t = steps_channels_last(torch.rand(2, 3, 4, 5, 6).transpose(0, 1))  # a batch-major loader's [B, T] -> [T, B]
    assert per_step_channels_last(t)
    r = repeat_steps(torch.rand(2, 4, 5, 6), 3, channels_last=True)
    assert r.shape == (3, 2, 4, 5, 6) and per_step_channels_last(r)


def test_channels_last_on_a_tensor_that_is_not_4d_per_step_names_the_option_and_shape():
    with pytest.raises(ValueError) as info:
        steps_channels_last(torch.rand(3, 2, 10))
    msg = str(info.value)
    assert "channels_last=True" in msg and "(3, 2, 10)" in msg and "\n" not in msg
    with pytest.raises(SpecError, match=r"channels_last=True needs image inputs \(C, H, W\), but input_shape=\(10,\)"):
        sewforge.build("FC4", input_shape=(10,), T=2, channels_last=True)
    with pytest.raises(SpecError, match="channels_last='yes': must be True or False"):
        sewforge.build("c4k3s1-BN-IF-FC4", input_shape=(2, 8, 8), T=2, channels_last="yes")


def test_seq_fold_keeps_channels_last():
    conv = nn.Conv2d(3, 5, 3, padding=1).to(memory_format=CL)
    x = steps_channels_last(torch.rand(2, 4, 3, 6, 6))
    y = seq_fold(nn.Sequential(conv, nn.BatchNorm2d(5), nn.MaxPool2d(2)), x)
    assert y.shape == (2, 4, 5, 3, 3) and per_step_channels_last(y)


def test_sew_block_keeps_channels_last_and_gives_the_same_output():
    torch.manual_seed(0)
    block = SEWBlock(4, 8, stride=2, neuron="IF").double()
    cl = SEWBlock(4, 8, stride=2, neuron="IF").double().to(memory_format=CL)
    cl.load_state_dict(block.state_dict())
    assert cl.conv1.weight.is_contiguous(memory_format=CL)
    layouts = record_layouts(cl)
    x = (torch.rand(3, 2, 4, 10, 10) < 0.4).double() * 1.5
    out, ref = cl(steps_channels_last(x)), block(x)
    torch.testing.assert_close(out, ref)
    assert layouts and all(ok for _, ok in layouts), layouts


def _pair(name, **kw):
    """The network and its channels_last twin with the same weights, in float64: in float32 the
    two summation orders of a convolution differ by rounding, which flips the odd spike near the
    threshold, and a flip anywhere changes everything after it."""
    torch.manual_seed(0)
    dense = sewforge.create_model(name, **kw).double()
    cl = sewforge.create_model(name, channels_last=True, **kw).double()
    cl.load_state_dict(dense.state_dict())
    return dense, cl


def test_whole_7b_net_in_channels_last_equals_the_contiguous_network():
    dense, cl = _pair("sew7b_gesture", T=2)
    assert cl.channels_last and all(p.is_contiguous(memory_format=CL) for p in cl.parameters() if p.dim() == 4)
    layouts = record_layouts(cl)
    x = (torch.rand(2, 2, 2, 128, 128) < 0.1).double()
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = dense(xa), cl(xb)
    torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
    assert len(layouts) >= 2 * 7 and all(ok for _, ok in layouts), layouts
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-9, atol=1e-10)


def test_static_image_resnet_in_channels_last_equals_the_contiguous_network():
    torch.manual_seed(0)
    dense = build_resnet(resnet_spec("SEW", (1, 1, 1, 1), 5), T=2, input_shape=(3, 32, 32)).double()
    cl = build_resnet(resnet_spec("SEW", (1, 1, 1, 1), 5), T=2, input_shape=(3, 32, 32),
                      channels_last=True).double()
    cl.load_state_dict(dense.state_dict())
    layouts = record_layouts(cl)
    for x in (torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(2, 2, 3, 32, 32, dtype=torch.float64)):
        torch.testing.assert_close(cl(x), dense(x), rtol=1e-9, atol=1e-10)
    assert layouts and all(ok for _, ok in layouts), layouts


def test_static_input_of_a_spec_network_in_channels_last():
    dense, cl = _pair("c8k3s1-BN-IF-{SEW(c8)-MPk2s2}*2-FC3", input_shape=(2, 16, 16), T=3)
    x = torch.rand(4, 2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(cl(x), dense(x), rtol=1e-9, atol=1e-10)


@pytest.mark.skipif(not _neuron_keeps_layout(), reason="the neurons do not keep the input's strides yet")
def test_neurons_keep_channels_last_through_a_sew_block_and_the_network():
    block = SEWBlock(4, 4, neuron="IF").to(memory_format=CL)
    outs = []
    for m in block.modules():
        if isinstance(m, BaseNeuron):
            m.register_forward_hook(lambda mod, args, out: outs.append(per_step_channels_last(out)))
    y = block(steps_channels_last(torch.rand(2, 2, 4, 6, 6) * 2))
    assert outs and all(outs) and per_step_channels_last(y)
    net = sewforge.create_model("sew7b_gesture", T=2, channels_last=True)
    kept = []
    for layer in net.layers:
        layer.register_forward_hook(lambda m, a, o: kept.append(o.dim() != 5 or o.shape[-1] == 1
                                                               or per_step_channels_last(o)))
    net(torch.rand(2, 1, 2, 128, 128).lt(0.1).float())
    assert kept and all(kept), kept
    resnet = build_resnet(resnet_spec("SEW", (1, 1, 1, 1), 5), T=2, input_shape=(3, 32, 32), channels_last=True)
    stem = []
    resnet.blocks()[0].register_forward_pre_hook(lambda m, args: stem.append(args[0]))
    resnet(torch.randn(2, 3, 32, 32))
    assert per_step_channels_last(stem[0])


@pytest.mark.parametrize("channels_last", [False, True])
def test_repeat_steps_gives_every_step_the_input_and_sums_the_gradient_over_steps(channels_last):
    x = torch.rand(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    r = repeat_steps(x, 3, channels_last=channels_last)
    assert r.shape == (3, 2, 4, 5, 6) and all(torch.equal(r[t], x) for t in range(3))
    assert per_step_channels_last(r) if channels_last else r.is_contiguous()
    g = torch.rand(3, 2, 4, 5, 6, dtype=torch.float64)
    (got,) = torch.autograd.grad(r, x, g)
    (want,) = torch.autograd.grad(x.unsqueeze(0).expand(3, *x.shape), x, g)  # autograd's own rule
    torch.testing.assert_close(got, want, rtol=1e-15, atol=1e-15)
