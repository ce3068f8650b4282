"""memory="lean": every batch norm -> neuron (-> SEW g) chain keeps only the batch norm's input and
runs again in backward. Oracles: the same network with memory="dense" (plain autograd) for
outputs, gradients and running statistics; forward pre-hooks on the batch norms for what a
saved fp32 activation may be."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from torch import nn

import sewforge
import sewforge.memory as memory
from sewforge.blocks import SEWBlock
from sewforge.memory import PackedSpikes, memory_context, recomputes_bn_neuron, segments, thin_conv
from sewforge.models.resnet import build_resnet, resnet_spec
from sewforge.neurons import BaseNeuron, IFNode

SPEC = "c8k1s1-BN-PLIF-{SEW(c8)-MPk2s2}*2-SEW(c16)-FC5"


def binary(*shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


def _train_step(net, x, mode, grad_scale=None):
    net = copy.deepcopy(net)
    net.memory = mode
    net.train()
    xg = x.clone().requires_grad_()
    out = net(xg)
    (out.square().sum() + out.sum()).backward()
    grads = {k: p.grad for k, p in net.named_parameters()}
    return out.detach(), xg.grad, grads, {k: b.clone() for k, b in net.named_buffers()}, net


def _same(a, b, rtol=1e-6, atol=1e-7):
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=atol)
    assert a[2].keys() == b[2].keys()
    for k in a[2]:
        assert (a[2][k] is None) == (b[2][k] is None), k
        if a[2][k] is not None:
            torch.testing.assert_close(a[2][k], b[2][k], rtol=rtol, atol=atol, msg=k)
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert torch.equal(a[3][k], b[3][k]), k  # running statistics updated once, as plain autograd does


# ---------------------------------------------------------------------------------------------
# same results as plain autograd
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("g", ["ADD", "IAND", "AND"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_gives_the_gradients_and_statistics_of_plain_autograd(g, channels_last):
    torch.manual_seed(0)
    net = sewforge.build(SPEC, input_shape=(2, 16, 16), T=3, g=g, channels_last=channels_last, zero_init=False)
    x = binary(3, 4, 2, 16, 16)
    dense = _train_step(net, x, "dense")
    lean = _train_step(net, x, "lean")
    _same(dense, lean)
    for m in lean[4].modules():
        if isinstance(m, nn.BatchNorm2d):
            assert int(m.num_batches_tracked) == 1  # one update per forward, none in the rerun
    assert sum(g is not None for g in lean[2].values()) == len(lean[2])  # every parameter got a gradient


@pytest.mark.parametrize("block", ["SEW", "Plain", "SpikingResNet"])
@pytest.mark.parametrize("fuse", [True, False])
def test_lean_for_every_basic_block_fused_or_not(block, fuse):
    torch.manual_seed(1)
    net = sewforge.build(f"c8k3s1-BN-LIF-{block}(c8)-{block}(c16s2)-FC5", input_shape=(2, 12, 12), T=3, fuse=fuse)
    x = binary(3, 2, 2, 12, 12, p=0.5) * 1.5
    _same(_train_step(net, x, "dense"), _train_step(net, x, "lean"))


def test_lean_in_the_imagenet_resnet_with_bottlenecks_and_a_static_image():
    torch.manual_seed(0)
    net = build_resnet(resnet_spec("SEWBottleneck", (1, 1, 1, 1), 7), T=2, input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    _same(_train_step(net, x, "dense"), _train_step(net, x, "lean"), rtol=1e-5, atol=1e-6)


def test_lean_in_eval_mode_with_autograd():
    """Batch norms on running statistics (e.g. gradients of a frozen network): the same too."""
    torch.manual_seed(0)
    net = sewforge.build(SPEC, input_shape=(2, 16, 16), T=3)
    net(binary(3, 4, 2, 16, 16, seed=1))  # running statistics away from their initial values
    x = binary(3, 2, 2, 16, 16)
    results = []
    for mode in ("dense", "lean"):
        n = copy.deepcopy(net).eval()
        n.memory = mode
        xg = x.clone().requires_grad_()
        out = n(xg)
        out.square().sum().backward()
        results.append((out.detach(), xg.grad, {k: p.grad for k, p in n.named_parameters()},
                        {k: b.clone() for k, b in n.named_buffers()}))
    _same(*results)


def test_lean_under_autocast():
    torch.manual_seed(0)
    net = sewforge.build(SPEC, input_shape=(2, 16, 16), T=3)
    x = binary(3, 2, 2, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = _train_step(net, x, "dense")
        lean = _train_step(net, x, "lean")
    _same(dense, lean)


def test_lean_with_stateful_neurons_reruns_from_the_state_the_forward_started_from():
    torch.manual_seed(0)
    block = SEWBlock(4, 4, neuron=functools.partial(IFNode, stateful=True), g="IAND")
    x = binary(3, 2, 4, 6, 6) * 1.5

    def run(mode):
        b = copy.deepcopy(block)
        xg = x.clone().requires_grad_()
        with memory_context(mode):
            b(xg)  # the state after this call is where the next starts
            out = b(xg)
        out.sum().backward()
        return out.detach(), xg.grad, b.conv1.weight.grad, b.bn2.weight.grad, b.sn1.v, b.sn2.v, b.bn1.running_mean

    for u, v in zip(run("dense"), run("lean")):
        assert torch.equal(u, v)


def test_lean_counts_spikes_and_runs_forward_hooks_once():
    torch.manual_seed(0)
    net = sewforge.build(SPEC, input_shape=(2, 16, 16), T=3)
    x = binary(3, 2, 2, 16, 16)

    def run(mode):
        n = copy.deepcopy(net)
        n.memory = mode
        calls = []
        for m in n.modules():
            if isinstance(m, BaseNeuron):
                m.count_spikes = True
                m.register_forward_hook(lambda mod, a, o: calls.append(1))
        n(x.clone().requires_grad_()).sum().backward()  # the rerun happens here
        return [(m.spike_count, m.spike_numel) for m in n.modules() if isinstance(m, BaseNeuron)], len(calls)

    dense, lean = run("dense"), run("lean")
    assert dense[1] == lean[1] > 0
    for (c0, n0), (c1, n1) in zip(dense[0], lean[0]):
        assert n0 == n1 and torch.equal(c0, c1)


def test_lean_without_autograd_or_under_compilation_reruns_nothing(monkeypatch):
    torch.manual_seed(0)
    net = sewforge.build(SPEC, input_shape=(2, 16, 16), T=3, memory="lean")
    x = binary(3, 2, 2, 16, 16)
    with memory_context("lean"):
        assert recomputes_bn_neuron()
        with torch.no_grad():
            assert not recomputes_bn_neuron()
        monkeypatch.setattr(memory, "_compiling", lambda: True)
        assert not recomputes_bn_neuron()
        monkeypatch.undo()
    assert not recomputes_bn_neuron()  # only inside a network's forward
    with memory_context("compact"), memory_context("dense"):
        assert not recomputes_bn_neuron()
    with torch.no_grad():
        a = net.eval()(x)
        net.memory = "dense"
        assert torch.equal(a, net(x))


# ---------------------------------------------------------------------------------------------
# what is kept
# ---------------------------------------------------------------------------------------------
def _kept(net, x, monkeypatch):
    """Distinct storages that the network's saved-tensor hooks keep for backward: the fp32 ones of
    activation size (above the FC input's; not the network's input or parameters), and the bytes of the packed ones; plus every batch
    norm's input storage."""
    bn_inputs = set()
    handles = [m.register_forward_pre_hook(lambda mod, a: bn_inputs.add(a[0].untyped_storage().data_ptr()))
               for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    fp32, packed = {}, {}
    skip = {x.untyped_storage().data_ptr()} | {p.untyped_storage().data_ptr() for p in net.parameters()}
    first = next(m for m in net.modules() if isinstance(m, nn.Conv2d))  # its input: x in the network's layout
    handles.append(first.register_forward_pre_hook(lambda mod, a: skip.add(a[0].untyped_storage().data_ptr())))
    real = memory.compact_spikes._pack

    def probe(self, t):
        out = real(self, t)
        if isinstance(out, PackedSpikes):
            packed[out.data.data_ptr()] = out.nbytes
        elif (isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.untyped_storage().nbytes() > 4096
              and t.untyped_storage().data_ptr() not in skip):
            fp32[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return out

    monkeypatch.setattr(memory.compact_spikes, "_pack", probe)
    out = net(x)
    monkeypatch.undo()
    for h in handles:
        h.remove()
    out.sum().backward()
    return fp32, packed, bn_inputs


@pytest.mark.parametrize("channels_last", [False, True])
def test_lean_keeps_no_fp32_potential_only_batch_norm_inputs(monkeypatch, channels_last):
    torch.manual_seed(0)
    net = sewforge.build("c8k3s1-BN-PLIF-{SEW(c8)-MPk2s2}*2-SEW(c16)-FC5", input_shape=(2, 16, 16), T=4,
                         channels_last=channels_last)
    x = binary(4, 4, 2, 16, 16)
    with pytest.MonkeyPatch.context() as env:
        # the tally counts what the memory modes keep of dense convolutions (an event-driven one
        # keeps its own bit mask: tests/test_spikeconv.py)
        env.setenv("SEWFORGE_SPIKE_CONV", "dense")
        net.memory = "compact"
        fp32_c, packed_c, bn_c = _kept(net, x, monkeypatch)
        net.memory = "lean"
        fp32_l, packed_l, bn_l = _kept(net, x, monkeypatch)
    potentials = set(fp32_c) - bn_c
    assert potentials  # the oracle sees the neurons' H in compact memory ...
    assert fp32_l and set(fp32_l) <= bn_l  # ... and only batch norm inputs in lean memory
    # every neuron (stem, 2 per block, 1 downsample neuron) kept H, one BN input's size: no more
    h_bytes = sum(fp32_c[p] for p in potentials)
    assert sum(fp32_l.values()) == sum(fp32_c.values()) - h_bytes
    # spikes still 1 bit, SEW outputs 1 byte, each once; a downsample neuron's output (the shortcut S
    # of g, which ADD's backward does not read) is now kept, 1 bit per element, for the rerun of g
    shortcut_bits = 4 * 4 * 16 * 4 * 4 // 8
    assert sum(packed_l.values()) == sum(packed_c.values()) + shortcut_bits


def test_the_7b_net_stem_reruns_conv_bn_and_neuron_keeping_only_its_input(monkeypatch):
    torch.manual_seed(0)
    net = sewforge.create_model("sew7b_gesture", T=2, memory="lean")
    kinds = net._kinds
    assert kinds[:3] == ["conv", "bn", "neuron"] and thin_conv(net.layers[0])
    assert segments(kinds, net.layers, "lean")[0] == (0, 3)
    assert segments(kinds, net.layers, "compact")[0] == (0, 2)
    x = binary(2, 1, 2, 128, 128)
    stem_bn = net.layers[1].module
    stem_input = []
    # the tensor itself is held, so that its memory cannot be reused by a kept tensor meanwhile
    stem_bn.register_forward_pre_hook(lambda mod, a: stem_input.append(a[0]))
    fp32, _, bn_inputs = _kept(net, x, monkeypatch)
    assert set(fp32) <= bn_inputs
    assert len(stem_input) == 1  # forward hooks do not see the rerun in backward
    assert stem_input[0].untyped_storage().data_ptr() not in fp32  # the stem keeps its (2-channel) input only
    assert int(stem_bn.num_batches_tracked) == 1


# ---------------------------------------------------------------------------------------------
# the policy
# ---------------------------------------------------------------------------------------------
def test_segments_policy():
    thin, wide = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 4, 3)
    bn, sn = nn.BatchNorm2d(4), IFNode()
    kinds = ["conv", "bn", "neuron", "conv", "bn", "neuron", "block", "pool", "bn", "neuron"]
    layers = [thin, bn, sn, wide, bn, sn, nn.Identity(), nn.Identity(), bn, sn]
    assert segments(kinds, layers, "dense") == []
    assert segments(kinds, layers, "compact") == [(0, 2)]
    assert segments(kinds, layers, "recompute") == [(0, 2)]
    assert segments(kinds, layers, "lean") == [(0, 3), (4, 6), (8, 10)]
    assert segments(kinds, layers, "lean", start=1, end=9) == [(1, 3), (4, 6)]
    assert thin_conv(thin) and not thin_conv(wide) and not thin_conv(bn)


def test_lean_is_a_memory_mode_everywhere():
    assert "lean" in memory.MEMORY_MODES
    assert sewforge.create_model("sew7b_gesture", T=2, memory="lean").memory == "lean"
    assert sewforge.create_model("sew_resnet18", memory="lean").memory == "lean"
    from sewforge.train.recipe import ModelConfig

    assert "lean" in ModelConfig.__dataclass_fields__["memory"].metadata.get("choices", ())


@pytest.mark.parametrize("neuron", ["ALIF", "CUBALIF", "Izhikevich", "ChannelLIF"])
@pytest.mark.parametrize("mode", ["lean", "recompute"])
@pytest.mark.parametrize("stateful", [False, True])
def test_neurons_with_several_states_or_per_channel_parameters_rerun_exactly(neuron, mode, stateful):
    """A rerun chain restores every state of a multi-state neuron (and a per-channel neuron's
    parameters take their gradient once): outputs, gradients and running statistics equal plain
    autograd's, also for a stateful network called twice."""
    from sewforge.spec import build

    spec = f"c8k3s1-BN-{neuron}-{{SEW Block (c8)}}*2-MPk2s2-FC4"
    results = []
    for memory_mode in ("dense", mode):
        torch.manual_seed(1)
        net = build(spec, input_shape=(2, 16, 16), T=4, memory=memory_mode)
        for m in net.modules():
            if isinstance(m, BaseNeuron):
                m.stateful = stateful
        x = binary(4, 3, 2, 16, 16, seed=2).requires_grad_()
        first = net(x)
        second = net(x) if stateful else first
        (second.square().sum() + first.sum()).backward()
        results.append((second.detach(), x.grad, [p.grad for p in net.parameters()], list(net.buffers())))
    (out0, gx0, gp0, b0), (out1, gx1, gp1, b1) = results
    assert torch.equal(out0, out1)
    torch.testing.assert_close(gx0, gx1, rtol=1e-4, atol=1e-5)
    assert len(gp0) == len(gp1)
    for a, b in zip(gp0, gp1):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(b0, b1):
        assert torch.equal(a, b)
