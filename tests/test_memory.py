"""Memory modes: compact storage of saved spikes (bit-exact, smaller), per-block recompute (same
gradients and BN statistics), the ``memory=`` option and firing rates from the neurons' own counts."""
from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from torch import nn

import sewforge
from sewforge.blocks import SEWBlock
from sewforge.memory import (MEMORY_MODES, PackedSpikes, compact_spikes, mark_spikes, pack_saved, recompute,
                             spike_kind, unpack_saved)
from sewforge.models.resnet import build_resnet, resnet_spec
from sewforge.neurons import BaseNeuron, IFNode
from sewforge.spec import SpecError

SPEC = "c8k3s1-BN-PLIF-{SEW(c8)-MPk2s2}*2-SEW(c16)-FC5"


def binary(*shape, p=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < p).float()


def stored_bytes(obj):
    """Bytes that autograd keeps for one saved tensor: the packed data, or the tensor's storage."""
    if isinstance(obj, PackedSpikes):
        return obj.data.untyped_storage().nbytes()
    return obj.untyped_storage().nbytes()


def marking(model):
    """Mark every neuron output as the neuron engine does (binary spikes, or the fused g(A, S))."""
    def hook(module, args, kwargs, out):
        if spike_kind(out) is None:
            mark_spikes(out, binary=kwargs.get("shortcut") is None and len(args) == 1)
    for m in model.modules():
        if isinstance(m, BaseNeuron):
            m.register_forward_hook(hook, with_kwargs=True)
    return model


# ---------------------------------------------------------------------------------------------
# compact storage: round trip and size
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(3, 5, 7, 9, 11), (4, 2, 3, 8, 8), (13,), (8,), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_binary_spikes_round_trip_bit_exact_in_one_bit(shape, dtype):
    x = mark_spikes(binary(*shape).to(dtype), binary=True)
    packed = pack_saved(x)
    assert isinstance(packed, PackedSpikes)
    assert stored_bytes(packed) == math.ceil(x.numel() / 8)
    y = unpack_saved(packed)
    assert y.dtype == dtype and y.shape == x.shape and y.stride() == x.stride()
    assert torch.equal(y.view(torch.uint8 if dtype != torch.float64 else torch.int64).flatten(),
                       x.view(torch.uint8 if dtype != torch.float64 else torch.int64).flatten())


def test_layout_is_kept_channels_last_and_permuted():
    x = binary(6, 3, 5, 7).contiguous(memory_format=torch.channels_last)
    mark_spikes(x, True)
    y = unpack_saved(pack_saved(x))
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(x, y)
    z = mark_spikes(binary(4, 5, 6, 7).permute(2, 0, 3, 1), True)  # a dense tensor in another order
    w = unpack_saved(pack_saved(z))
    assert w.stride() == z.stride() and torch.equal(w, z)


def test_views_of_marked_spikes_are_packed_through_their_base():
    s = mark_spikes(binary(3, 4, 2, 5, 5), True)
    v = s.flatten(0, 1)  # what a folded convolution saves
    assert spike_kind(v) == "binary"
    y = unpack_saved(pack_saved(v))
    assert torch.equal(y, v) and y.shape == (12, 2, 5, 5)


def test_add_outputs_with_integers_above_one_are_stored_in_one_byte():
    g = torch.Generator().manual_seed(1)
    x = mark_spikes(torch.randint(0, 4, (3, 4, 5, 6), generator=g).float(), binary=False)  # 0..3, as ADD gives
    assert x.max() == 3
    packed = pack_saved(x)
    assert isinstance(packed, PackedSpikes) and stored_bytes(packed) == x.numel()
    assert torch.equal(unpack_saved(packed), x)
    big = mark_spikes(torch.full((7,), 255.0), binary=False)
    assert torch.equal(unpack_saved(pack_saved(big)), big)


def test_integer_output_that_is_binary_gets_one_bit():
    x = mark_spikes(binary(2, 3, 8, 8), binary=False)  # AND / IAND of spikes: 0/1 though not marked binary
    packed = pack_saved(x)
    assert stored_bytes(packed) == x.numel() // 8 and torch.equal(unpack_saved(packed), x)


@pytest.mark.parametrize("values", [[0.0, 1.0, 0.5], [0.0, -1.0, 2.0], [0.0, 256.0, 1.0], [0.0, float("nan"), 1.0],
                                    [0.0, 1.0, 2.0000002]])
def test_values_that_are_not_small_integers_stay_dense(values):
    x = mark_spikes(torch.tensor(values * 5).reshape(3, 5), binary=False)  # a non-binary shortcut's g(A, S)
    kept = pack_saved(x)
    assert kept is x and kept.dtype == torch.float32


def test_unmarked_and_non_dense_tensors_are_untouched():
    x = binary(4, 8)
    assert pack_saved(x) is x
    gappy = mark_spikes(binary(4, 8), True)[:, ::2]
    assert pack_saved(gappy) is gappy
    ints = mark_spikes(torch.ones(4, dtype=torch.int64), True)
    assert pack_saved(ints) is ints


def test_a_conv_under_compact_spikes_keeps_one_bit_per_input_element_and_same_gradients():
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=False)
    x = binary(3, 2, 4, 10, 10).requires_grad_()

    def loss():
        s = mark_spikes(x * 1.0, True)  # a neuron output that requires grad
        return (conv(s.flatten(0, 1)) ** 2).sum()

    loss().backward()
    gx, gw = x.grad.clone(), conv.weight.grad.clone()
    x.grad = conv.weight.grad = None
    kept = []

    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(pack_saved(t)) or kept[-1], unpack_saved):
        loss().backward()
    assert torch.equal(x.grad, gx) and torch.equal(conv.weight.grad, gw)
    spikes = [k for k in kept if isinstance(k, PackedSpikes)]
    assert [stored_bytes(k) for k in spikes] == [3 * 2 * 4 * 10 * 10 // 8]

    x.grad = conv.weight.grad = None
    with compact_spikes():
        out = loss()
    out.backward()
    assert torch.equal(x.grad, gx) and torch.equal(conv.weight.grad, gw)


def _saved(model, x, pack):
    """What autograd keeps for ``model(x)`` when saved tensors go through ``pack``: bytes in all
    and bytes kept for the marked spike tensors, each storage counted once."""
    kept, spikes, alive = {}, {}, []

    def probe(t):
        obj = pack(t)
        alive.append(obj)  # storages saved by graphs that are dropped early must not be reused meanwhile
        data = obj.data if isinstance(obj, PackedSpikes) else obj
        key = data.untyped_storage().data_ptr()
        kept[key] = stored_bytes(obj)
        if spike_kind(t) is not None:
            spikes[key] = kept[key]
        return obj

    with torch.autograd.graph.saved_tensors_hooks(probe, unpack_saved):
        out = model(x)
    out.sum().backward()
    return sum(kept.values()), sum(spikes.values())


def test_compact_mode_keeps_much_less_for_a_sew_network():
    torch.manual_seed(0)
    net = marking(sewforge.create_model(SPEC, input_shape=(2, 16, 16), T=4, memory="dense"))
    x = binary(4, 8, 2, 16, 16)
    dense, dense_spikes = _saved(net, x, lambda t: t)
    compact, compact_spikes = _saved(net, x, pack_saved)
    # conv inputs of 3 blocks (2 of them block outputs after max pooling) and 2 max-pool inputs at least
    assert dense_spikes >= 4 * (32 * 8 * 16 * 16) + 2 * (32 * 8 * 8 * 8) * 4
    assert compact_spikes <= dense_spikes / 8  # 1 bit for spikes, 1 byte for ADD outputs 0..3
    assert compact == dense - dense_spikes + compact_spikes  # nothing else changes


def test_compact_mode_of_the_network_packs_what_it_saves(monkeypatch):
    import sewforge.memory as memory

    torch.manual_seed(0)
    net = marking(sewforge.create_model(SPEC, input_shape=(2, 16, 16), T=3))
    assert net.memory == "compact"
    packed = []
    real = memory.pack_saved
    monkeypatch.setattr(memory, "pack_saved", lambda t: packed.append(real(t)) or packed[-1])
    x = binary(3, 2, 2, 16, 16)
    dense = copy.deepcopy(net)
    dense.memory = "dense"
    a, b = net(x), dense(x)
    assert torch.equal(a, b)
    assert sum(isinstance(p, PackedSpikes) for p in packed) >= 5  # conv inputs of every block, max-pool inputs
    with torch.no_grad():
        packed.clear()
        net(x)
        assert not packed  # nothing is saved without autograd


# ---------------------------------------------------------------------------------------------
# recompute
# ---------------------------------------------------------------------------------------------
def _run(model, x, mode, steps=1):
    model = copy.deepcopy(model)
    model.memory = mode
    model.train()
    calls = []
    for b in model.blocks():  # counts the runs of each block (forward hooks do not see reruns)
        b.forward = functools.partial(lambda f, *a, **k: calls.append(1) or f(*a, **k), b.forward)
    xg = x.clone().requires_grad_()
    for _ in range(steps):
        out = model(xg)
    (out.square().sum() + out.sum()).backward()
    grads = {k: p.grad for k, p in model.named_parameters()}
    return out.detach(), xg.grad, grads, {k: b.clone() for k, b in model.named_buffers()}, len(calls)


def _same(a, b):
    assert torch.equal(a[0], b[0])
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    for k in a[2]:
        assert (a[2][k] is None) == (b[2][k] is None), k
        if a[2][k] is not None:
            torch.testing.assert_close(a[2][k], b[2][k], rtol=1e-6, atol=1e-7, msg=k)
    assert a[3].keys() == b[3].keys()
    for k in a[3]:
        assert torch.equal(a[3][k], b[3][k]), k  # BN running statistics updated once


@pytest.mark.parametrize("g", ["ADD", "IAND"])
def test_recompute_gives_the_same_gradients_and_bn_statistics_as_no_recompute(g):
    torch.manual_seed(0)
    net = marking(sewforge.create_model(SPEC, input_shape=(2, 16, 16), T=3, g=g))
    x = binary(3, 4, 2, 16, 16)
    dense = _run(net, x, "dense")
    again = _run(net, x, "recompute")
    _same(dense, again)
    assert again[4] == 2 * dense[4]  # every block did run again in backward
    _same(dense, _run(net, x, "compact"))


def test_recompute_in_the_imagenet_resnet_and_on_a_static_image():
    torch.manual_seed(0)
    net = marking(build_resnet(resnet_spec("SEW", (1, 1, 1, 1), 7), T=2, input_shape=(3, 32, 32)))
    x = torch.randn(2, 3, 32, 32)
    dense = _run(net, x, "dense")
    again = _run(net, x, "recompute")
    _same(dense, again)
    assert again[4] == 2 * dense[4]


def test_recompute_with_stateful_neurons_reruns_from_the_state_of_the_first_forward():
    torch.manual_seed(0)
    block = SEWBlock(4, 4, neuron=functools.partial(IFNode, stateful=True))
    x = binary(3, 2, 4, 6, 6) * 1.5

    def run(again):
        b = copy.deepcopy(block)
        xg = x.clone().requires_grad_()
        b(xg)  # the state after this call is where the next starts
        out = recompute(b, xg) if again else b(xg)
        out.sum().backward()
        return out.detach(), xg.grad, b.conv1.weight.grad, b.sn1.v, b.bn1.running_mean

    for u, v in zip(run(False), run(True)):
        assert torch.equal(u, v)


def test_recompute_without_autograd_is_the_plain_forward():
    block = SEWBlock(4, 4, neuron="IF")
    x = binary(2, 2, 4, 5, 5)
    with torch.no_grad():
        assert torch.equal(recompute(block, x), block(x))


# ---------------------------------------------------------------------------------------------
# the option
# ---------------------------------------------------------------------------------------------
def test_memory_option_of_create_model_and_its_errors():
    assert MEMORY_MODES == ("compact", "dense", "recompute", "lean")
    assert sewforge.create_model("sew7b_gesture", T=2).memory == "compact"
    assert sewforge.create_model("sew7b_gesture", T=2, memory="recompute").memory == "recompute"
    assert sewforge.create_model("sew_resnet18", memory="dense").memory == "dense"
    with pytest.raises(SpecError) as info:
        sewforge.create_model("sew7b_gesture", memory="fast")
    msg = str(info.value)
    assert "memory='fast'" in msg and "'compact', 'dense', 'recompute', 'lean'" in msg and "\n" not in msg.strip()
    with pytest.raises(ValueError, match=r"memory='tiny' is not a memory mode; use one of 'compact', 'dense'"):
        sewforge.create_model("sew_resnet18", memory="tiny")
    net = sewforge.create_model("sew7b_gesture", T=2)
    with pytest.raises(ValueError, match="memory=None is not a memory mode"):
        net.memory = None
    assert "memory='compact'" in net.extra_repr()


# ---------------------------------------------------------------------------------------------
# firing rates from the neurons' own counts
# ---------------------------------------------------------------------------------------------
class CountingIF(IFNode):
    """An IF neuron with the spike-count contract of the neuron engine: with ``count_spikes``,
    ``spike_count`` / ``spike_numel`` of its own spikes A after each forward, fused or not."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.count_spikes = False
        self.fused_calls = 0

    def forward(self, x, shortcut=None, g=None):
        a = IFNode.forward(self, x)
        if self.count_spikes:
            self.spike_count = a.detach().sum(dtype=torch.float64).reshape(1)
            self.spike_numel = a.numel()
        if shortcut is None:
            return a
        self.fused_calls += 1
        return g(a, shortcut)


def _with_neurons(model, make):
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, BaseNeuron):
                new = make()
                new.load_state_dict(child.state_dict(), strict=False)
                setattr(m, child_name, new)
    return model


def _unfused_rate(model, x):
    """The oracle: every neuron's output spikes, with every block unfused."""
    total, count = 0.0, 0

    def hook(module, args, out):
        nonlocal total, count
        total += float(out.double().sum())
        count += out.numel()

    model = copy.deepcopy(model)
    model.fuse = False
    for m in model.modules():
        if isinstance(m, BaseNeuron):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(x)
    return total / count


def _check_counted_rates(net, x):
    from sewforge.analysis.rates import firing_rates
    from sewforge.train.meters import FiringRateMeter

    expected = _unfused_rate(net, x)
    meter = FiringRateMeter(net)
    with torch.no_grad(), meter.measuring():
        net(x)
    spikes, outputs = meter.totals()
    assert spikes / outputs == pytest.approx(expected, rel=1e-12)
    assert net.fuse  # restored (and, with counting neurons, never switched off)
    oracle = copy.deepcopy(net)
    oracle.fuse = False
    rows = firing_rates(net, x)
    for r, o in zip(rows, firing_rates(oracle, x)):
        assert r.rate_a == pytest.approx(o.rate_a, rel=1e-12) and r.rate_o == pytest.approx(o.rate_o, rel=1e-12)


def test_firing_rates_from_in_op_counts_equal_the_unfused_network():
    torch.manual_seed(0)
    net = _with_neurons(sewforge.create_model(SPEC, input_shape=(2, 16, 16), T=3, neuron="IF"),
                        lambda: CountingIF(v_threshold=0.5))
    net.eval()
    x = binary(3, 4, 2, 16, 16, p=0.5) * 2
    _check_counted_rates(net, x)
    last = [b.sn_last for b in net.blocks()]
    assert all(n.fused_calls > 0 for n in last)  # measured while running fused
    assert not any(n.count_spikes for n in net.modules() if isinstance(n, CountingIF))  # switched back off


@pytest.mark.skipif(not hasattr(sewforge.create_neuron("IF"), "count_spikes"),
                    reason="the neurons do not count their own spikes yet (BaseNeuron.count_spikes)")
def test_firing_rates_from_the_real_neurons_counts_equal_the_unfused_network():
    torch.manual_seed(0)
    net = sewforge.create_model(SPEC, input_shape=(2, 16, 16), T=3).eval()
    _check_counted_rates(net, binary(3, 4, 2, 16, 16, p=0.5) * 2)


def test_large_tensors_packed_piecewise_round_trip_and_are_checked_to_the_end():
    x = mark_spikes(binary(3, 70001, p=0.5), True)  # more than one piece, and not a multiple of 8
    packed = pack_saved(x)
    assert stored_bytes(packed) == math.ceil(x.numel() / 8) and torch.equal(unpack_saved(packed), x)
    g = torch.Generator().manual_seed(2)
    ints = torch.randint(0, 200, (5, 40003), generator=g).float()
    packed = pack_saved(mark_spikes(ints, binary=False))
    assert stored_bytes(packed) == ints.numel() and torch.equal(unpack_saved(packed), ints)
    late = ints.clone()
    late[-1, -1] = 2.5  # the last element of the last piece
    assert pack_saved(mark_spikes(late, binary=False)) is late


def test_fused_sew_outputs_carry_a_value_bound_so_compacting_needs_no_check():
    torch.manual_seed(0)
    x = torch.randn(3, 2, 40) * 2
    s = sewforge.create_neuron("IF")(torch.randn(3, 2, 40) * 2)  # binary, marked by the neuron
    assert spike_kind(s) == "binary"
    add = sewforge.create_neuron("IF")(x, shortcut=s, g="ADD")
    assert spike_kind(add) == "int:2" and float(add.max()) <= 2
    assert spike_kind(sewforge.create_neuron("IF")(x, shortcut=add, g="ADD")) == "int:3"
    assert spike_kind(sewforge.create_neuron("IF")(x, shortcut=s, g="IAND")) == "binary"
    # an unmarked shortcut: values unknown, checked when packed
    assert spike_kind(sewforge.create_neuron("IF")(x, shortcut=torch.rand(3, 2, 40), g="ADD")) == "integer"
    packed = pack_saved(add)
    assert isinstance(packed, PackedSpikes) and not packed.bits
    assert torch.equal(unpack_saved(packed), add)


@pytest.mark.parametrize("channels_last", [False, True])
def test_max_pooling_of_spikes_keeps_no_indices_and_gives_the_same_gradient(channels_last):
    from sewforge.layers import seq_fold

    gen = torch.Generator().manual_seed(3)
    a = sum((torch.rand(4, 3, 8, 16, 16, generator=gen) > 0.6).float() for _ in range(2))
    if channels_last:
        a = a.flatten(0, 1).to(memory_format=torch.channels_last).unflatten(0, (4, 3))
    pool = nn.MaxPool2d(2, 2)
    grad = torch.randn(4, 3, 8, 8, 8, generator=gen)
    plain = a.clone().requires_grad_(True)
    native = pool(plain.flatten(0, 1)).unflatten(0, (4, 3))  # the oracle: PyTorch's pooling with indices
    native.backward(grad)
    spikes = mark_spikes(a.clone().requires_grad_(True), bound=2)  # many ties: 0/1/2 values
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
        out = seq_fold(pool, spikes)
    assert torch.int64 not in saved  # no int64 indices
    node = out.grad_fn
    while type(node).__name__ != "_SpikeMaxPoolBackward":
        node = node.next_functions[0][0]
    assert isinstance(node.rest, PackedSpikes) and not node.rest.bits  # the input only, 1 byte per value
    assert [t.dtype for t in node.saved_tensors] == [torch.uint8]
    out.backward(grad)
    assert torch.equal(out, native) and torch.equal(spikes.grad, plain.grad)


def test_a_thin_stem_convolution_is_recomputed_with_the_same_gradients_and_statistics():
    """7B-Net's stem (a 1x1 conv from 2 channels into BN) keeps its input instead of the BN input."""
    from sewforge.memory import thin_conv

    torch.manual_seed(0)
    spec = "c8k1s1-BN-PLIF-{SEW Block (c8)-MPk2s2}*2-FC4"
    nets = {mode: sewforge.build(spec, input_shape=(2, 16, 16), T=3, memory=mode) for mode in ("dense", "compact")}
    nets["compact"].load_state_dict(nets["dense"].state_dict())
    assert thin_conv(nets["compact"].layers[0]) and not thin_conv(nn.Conv2d(8, 8, 3))
    x = torch.rand(3, 2, 2, 16, 16).round()
    grads = {}
    for mode, net in nets.items():
        net(x).square().sum().backward()
        grads[mode] = {k: p.grad for k, p in net.named_parameters()}
    for k, g in grads["dense"].items():
        assert torch.allclose(grads["compact"][k], g, rtol=1e-5, atol=1e-6), k
    for (k, a), (_, b) in zip(nets["dense"].named_buffers(), nets["compact"].named_buffers()):
        assert torch.equal(a, b), k  # running statistics updated once, not twice
