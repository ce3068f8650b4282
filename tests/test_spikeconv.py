"""Event-driven convolution of sparse spikes (CPU): the same outputs and gradients as PyTorch's
dense convolution, taken only where it applies, and transparent to networks, hooks and analyses."""
from __future__ import annotations

import contextlib
import gc
import warnings
import weakref

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from torch import nn

import sewforge
from sewforge.kernels import spikeconv
from sewforge.layers import Conv2d
from sewforge.memory import PackedSpikes, Recomputable, compact_spikes, mark_spikes

pytestmark = pytest.mark.skipif(not spikeconv.available(), reason="no working C compiler: the convolution runs dense")

CL = torch.channels_last


@pytest.fixture(autouse=True, scope="module")
def small_layers_too():
    """The tests' layers are small: let them run event-driven (the size rule is tested on its own)."""
    old, spikeconv.MIN_WORK = spikeconv.MIN_WORK, 1
    yield
    spikeconv.MIN_WORK = old


def spikes(shape, density, *, binary=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=g) < density).to(dtype)
    if not binary:  # a SEW ADD output: small integers
        x = x * torch.randint(1, 4, shape, generator=g).to(dtype)
    return x.contiguous(memory_format=CL)


#: the kernels' loop orders (:func:`spikeconv._order`): position-major, and channel-major over
#: blocks of one image or of every image (large weights take it; here forced on small ones)
ORDERS = {"position-major": (1 << 40, 512 << 10), "channel-major, 1 image": (0, 1),
          "channel-major, all images": (0, 1 << 40)}


@contextlib.contextmanager
def loop_order(name):
    old = spikeconv.CHANNEL_MAJOR_BYTES, spikeconv.OUTPUT_BLOCK_BYTES
    spikeconv.CHANNEL_MAJOR_BYTES, spikeconv.OUTPUT_BLOCK_BYTES = ORDERS[name]
    try:
        yield
    finally:
        spikeconv.CHANNEL_MAJOR_BYTES, spikeconv.OUTPUT_BLOCK_BYTES = old


def check_against_dense(x, w, b, stride, padding, dilation, *, binary, rtol=1e-12, atol=1e-12, same_bits=False):
    x = x.detach().requires_grad_(True)
    w = w.detach().requires_grad_(True)
    b = b.detach().requires_grad_(True) if b is not None else None
    y = spikeconv.spike_conv2d(x, w, b, stride, padding, dilation, binary=binary)
    # a tensor that is contiguous in both layouts (one channel, or one pixel) has no known layout;
    # above the density limit, and for kernels that reach few outputs per input, dense is faster
    sparse = int((x != 0).sum()) <= spikeconv.density_limit() * x.numel()
    reach = w.shape[2] * w.shape[3] >= 2 * stride * stride
    assert spikeconv.ran_event_driven(y) == (sparse and reach and not x.is_contiguous())
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    br = b.detach().requires_grad_(True) if b is not None else None
    ref = F.conv2d(xr, wr, br, stride, padding, dilation)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert y.is_contiguous(memory_format=CL) or not spikeconv.ran_event_driven(y)
    torch.testing.assert_close(y, ref, rtol=rtol, atol=atol)
    gy = torch.randn_like(ref)
    got = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], gy)
    want = torch.autograd.grad(ref, [t for t in (xr, wr, br) if t is not None], gy)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=rtol, atol=atol)
    assert got[0].is_contiguous(memory_format=CL) or not spikeconv.ran_event_driven(y)
    assert got[1].stride() == w.stride() or not spikeconv.ran_event_driven(y)  # the weight's own layout
    if same_bits:  # the input's gradient is PyTorch's own transposed convolution: the dense one's bits
        assert torch.equal(got[0], want[0])


@settings(max_examples=60)
@given(n=st.integers(1, 3), c=st.sampled_from([2, 5, 64, 70]), hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       co=st.sampled_from([1, 3, 8]), k=st.sampled_from([1, 2, 3]), stride=st.sampled_from([1, 2, 3]),
       padding=st.integers(0, 2), dilation=st.sampled_from([1, 2]), density=st.sampled_from([0.0, 0.05, 0.2]),
       binary=st.booleans(), bias=st.booleans(), seed=st.integers(0, 3), order=st.sampled_from(sorted(ORDERS)),
       weight_layout=st.sampled_from([torch.contiguous_format, CL]))
def test_matches_dense_convolution_and_its_gradients(n, c, hw, co, k, stride, padding, dilation, density, binary,
                                                     bias, seed, order, weight_layout):
    h, w_ = hw
    if (h + 2 * padding - dilation * (k - 1) - 1) < 0 or (w_ + 2 * padding - dilation * (k - 1) - 1) < 0:
        return  # no output pixel: the dense convolution's own error (tested below)
    x = spikes((n, c, h, w_), density, binary=binary, seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    w = torch.randn(co, c, k, k, dtype=torch.float64, generator=g).contiguous(memory_format=weight_layout)
    b = torch.randn(co, dtype=torch.float64, generator=g) if bias else None
    with loop_order(order):
        check_against_dense(x, w, b, stride, padding, dilation, binary=binary)


@pytest.mark.parametrize("binary", [True, False])
def test_float32_on_a_7b_net_layer_within_float_rounding(binary):
    x = spikes((4, 32, 32, 32), 0.04, binary=binary, dtype=torch.float32)
    w = torch.randn(32, 32, 3, 3).contiguous(memory_format=CL) * 0.1
    check_against_dense(x, w, None, 1, 1, 1, binary=binary, rtol=1e-4, atol=1e-4, same_bits=True)


def test_a_large_weight_runs_channel_major_by_default():
    # SEW ResNet's deep layers: 128 -> 256 channels, 3x3, 1.2 MB of float32 weight on a 4x4 image
    x = spikes((3, 128, 4, 4), 0.15, binary=False, dtype=torch.float32)
    w = torch.randn(256, 128, 3, 3) * 0.05
    geo = spikeconv.ConvGeometry(256, (3, 3), (1, 1), (1, 1), (1, 1), False, torch.float32)
    assert w.numel() * 4 > spikeconv.CHANNEL_MAJOR_BYTES and spikeconv._order(geo, 128, 4, 4) >= 3  # one block
    check_against_dense(x, w, torch.randn(256), 1, 1, 1, binary=False, rtol=1e-4, atol=1e-4, same_bits=True)


def test_hand_computed_values():
    # one active input at (row 1, col 2) of a 3x4 image, 3x3 kernel, padding 1: each output around it
    # gets the one weight tap that reaches it; with value 2 (an ADD output) twice that
    x = torch.zeros(1, 2, 3, 4, dtype=torch.float64)  # (channel 1 silent: two channels give a layout)
    x[0, 0, 1, 2] = 2.0
    w = torch.cat([torch.arange(9.0), torch.full((9,), 100.0)]).to(torch.float64).view(1, 2, 3, 3)
    y = spikeconv.spike_conv2d(x.contiguous(memory_format=CL).requires_grad_(), w, None, 1, 1, 1, binary=False)
    # output (i, j) sees input (1, 2) at tap (1 - i + 1, 2 - j + 1)
    want = torch.zeros(3, 4, dtype=torch.float64)
    for i in range(3):
        for j in range(4):
            kh, kw = 1 - i + 1, 2 - j + 1
            if 0 <= kh < 3 and 0 <= kw < 3:
                want[i, j] = 2.0 * (3 * kh + kw)
    assert spikeconv.ran_event_driven(y)
    assert torch.equal(y[0, 0], want)


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_several_threads_give_the_one_thread_weight_gradient(order):
    with loop_order(order):
        _check_threads()


def _check_threads():
    x = spikes((6, 16, 12, 12), 0.05)  # (under density_limit() with 3 threads too)
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64)
    gy = torch.randn(6, 8, 12, 12, dtype=torch.float64).contiguous(memory_format=CL)
    grads = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            wr = w.clone().requires_grad_(True)
            y = spikeconv.spike_conv2d(x, wr, None, 1, 1, 1, binary=True)
            assert spikeconv.ran_event_driven(y)
            grads.append(torch.autograd.grad(y, wr, gy)[0])
    finally:
        torch.set_num_threads(old)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)


def test_the_mask_pass_stops_once_the_input_is_too_dense():
    x = spikes((8, 40, 6, 6), 0.9, dtype=torch.float32)  # 40 channels: two mask words per position
    lib = spikeconv._library(spikeconv.ConvGeometry(4, (3, 3), (1, 1), (1, 1), (1, 1), True, torch.float32))
    nonzero = int((x != 0).sum())
    mask, counted = spikeconv._mask(lib, x, float("inf"))
    bits = mask.view(8, 6, 6, 2).numpy().view("uint32")
    want = (x.permute(0, 2, 3, 1) != 0).reshape(8, 6, 6, 40)  # the mask, bit c % 32 of word c // 32
    for c in range(40):
        assert ((bits[..., c // 32] >> (c % 32)) & 1 == want[..., c].numpy()).all()
    assert counted == nonzero
    budget = 0.2 * x.numel()  # one image holds 0.9 / 8 of the elements: the pass stops after the second
    _, counted = spikeconv._mask(lib, x, budget)
    assert budget < counted < nonzero / 3


def test_fewer_inputs_may_fire_with_more_threads():
    # oneDNN's dense convolution gains from a second thread, the event-driven kernels less
    x = spikes((4, 16, 12, 12), 0.15)
    w = torch.randn(8, 16, 3, 3, dtype=torch.float64, requires_grad=True)  # (autograd records which path ran)
    old = torch.get_num_threads()
    ran = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert spikeconv.density_limit() == spikeconv.DENSITY_LIMIT / threads
            y = spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=True)
            ran[threads] = spikeconv.ran_event_driven(y)
            torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1), rtol=1e-12, atol=1e-12)
    finally:
        torch.set_num_threads(old)
    assert ran == {1: True, 2: False}


@pytest.mark.parametrize("case", ["dense input", "NCHW layout", "float16", "groups", "env off", "no output",
                                  "1x1 kernel", "little work"])
def test_runs_dense_where_event_driven_does_not_apply(case, monkeypatch):
    x = spikes((2, 4, 8, 8), 0.1, dtype=torch.float32)
    w = torch.randn(6, 4, 3, 3)
    kw = dict(stride=1, padding=1, dilation=1)
    if case == "dense input":
        x = spikes((2, 4, 8, 8), 0.9, dtype=torch.float32)
    elif case == "NCHW layout":
        x = x.contiguous()
    elif case == "float16":
        x, w = x.half(), w.half()
    elif case == "env off":
        monkeypatch.setenv("SEWFORGE_SPIKE_CONV", "dense")
    elif case == "1x1 kernel":
        w, kw = torch.randn(6, 4, 1, 1), dict(stride=1, padding=0, dilation=1)
    elif case == "little work":  # 2 x 8 x 8 outputs x 6 x 4 x 3 x 3 multiply-adds: the mask would not pay
        monkeypatch.setattr(spikeconv, "MIN_WORK", 2 * 8 * 8 * 6 * 4 * 3 * 3 + 1)
    elif case == "no output":
        x = spikes((2, 4, 2, 2), 0.1, dtype=torch.float32)
        kw = dict(stride=1, padding=0, dilation=1)
        with pytest.raises(RuntimeError):  # PyTorch's own message about the kernel size
            spikeconv.spike_conv2d(x.requires_grad_(), w, None, **kw, binary=True)
        return
    if case == "groups":
        layer = Conv2d(4, 6, 3, padding=1, groups=2, bias=False)
        y = layer(mark_spikes(x.requires_grad_(), binary=True))
    else:
        y = spikeconv.spike_conv2d(x.requires_grad_(), w, None, **kw, binary=True)
    assert not spikeconv.ran_event_driven(y)
    if case != "groups":
        torch.testing.assert_close(y, F.conv2d(x, w, None, **kw))


def test_layer_takes_marked_spikes_only_and_keeps_hooks():
    layer = Conv2d(8, 4, 3, padding=1, bias=True).double()
    seen = []
    layer.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = spikes((2, 8, 10, 10), 0.1).requires_grad_(True)
    assert not spikeconv.ran_event_driven(layer(x))  # not marked: nothing says it is sparse
    y = layer(mark_spikes(x, binary=True))
    assert spikeconv.ran_event_driven(y)
    assert len(seen) == 2
    assert isinstance(layer, nn.Conv2d)
    plain = nn.Conv2d(8, 4, 3, padding=1).double()
    plain.load_state_dict(layer.state_dict())
    torch.testing.assert_close(y, plain(x), rtol=1e-12, atol=1e-12)


def test_double_backward_is_refused_clearly():
    x = spikes((1, 2, 8, 8), 0.1).requires_grad_(True)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    y = spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=True)
    assert spikeconv.ran_event_driven(y)
    (gw,) = torch.autograd.grad(y.sum(), w, create_graph=True)
    with pytest.raises(RuntimeError, match="SEWFORGE_SPIKE_CONV=dense"):
        gw.sum().backward()


def small_cl_net(monkeypatch):
    """A channels_last 7B-Net-like network in float64, a spike input, and the list that each
    event-driven convolution appends to."""
    torch.manual_seed(0)
    net = sewforge.build("c8k3s1-BN-PLIF-{SEW Block (c8)-MPk2s2}*2-FC5", input_shape=(2, 16, 16), T=4,
                         channels_last=True).double()
    x = (torch.rand(4, 2, 2, 16, 16) < 0.2).double()
    ran = []
    orig = spikeconv._SpikeConv2d.apply
    monkeypatch.setattr(spikeconv._SpikeConv2d, "apply", lambda *a: ran.append(a[0].shape) or orig(*a))
    return net, x, ran


def test_network_gives_the_dense_networks_outputs_and_gradients(monkeypatch):
    """The event-driven convolutions (most of the layers fire sparsely at initialisation) against
    the same network with every convolution dense."""
    net, x, ran = small_cl_net(monkeypatch)
    out = net(x)
    grads = torch.autograd.grad(out.sum(), list(net.parameters()))
    assert len(ran) >= 2
    monkeypatch.setenv("SEWFORGE_SPIKE_CONV", "dense")
    ran.clear()
    dense = net(x)
    dense_grads = torch.autograd.grad(dense.sum(), list(net.parameters()))
    assert not ran
    torch.testing.assert_close(out, dense, rtol=1e-9, atol=1e-9)
    for a, b in zip(grads, dense_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("binary", [True, False])
def test_keeps_one_bit_per_binary_spike_for_backward(binary):
    """Binary spikes are kept as their mask only (1 bit per element for up to 32 channels); a SEW
    output's integers keep the input as well (stored as by the networks' compact memory)."""
    x = spikes((2, 32, 16, 16), 0.05, binary=binary, dtype=torch.float32).requires_grad_(True)
    mark_spikes(x, binary=binary, bound=None if binary else 3)
    w = torch.randn(8, 32, 3, 3, requires_grad=True)
    y = spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=binary)
    assert spikeconv.ran_event_driven(y)
    saved = [t for t in y.grad_fn.saved_tensors if t is not None]
    masks = [t for t in saved if t.dtype == torch.int32]
    assert len(masks) == 1 and masks[0].numel() * 32 == x.numel()
    assert not [t for t in saved if t.shape == x.shape]
    values = [t for t in saved if t.dtype == torch.uint8]
    if binary:
        assert not values and y.grad_fn.rest is None
    else:  # 1 byte per value
        assert isinstance(y.grad_fn.rest, PackedSpikes) and len(values) == 1 and values[0].numel() == x.numel()


def test_what_it_keeps_is_freed_by_its_backward_pass():
    """Not when the graph goes: a network's later layers run their backward with it gone."""
    x = mark_spikes(spikes((2, 32, 16, 16), 0.05, binary=False, dtype=torch.float32).requires_grad_(True), bound=3)
    w = torch.randn(8, 32, 3, 3, requires_grad=True)
    loss = spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=False).sum()  # (sum keeps no input)
    node = loss.grad_fn.next_functions[0][0]
    assert type(node) is spikeconv._SpikeConv2d._backward_cls
    refs = [weakref.ref(t) for t in node.saved_tensors if t is not None]  # mask, weight, 1-byte values
    loss.backward()
    gc.collect()
    assert [r() is None for r in refs] == [True, False, True]  # the weight is the caller's


@pytest.mark.parametrize("compiler", [None, "/bin/false"])
def test_without_a_working_compiler_runs_dense_after_one_warning(monkeypatch, tmp_path, compiler):
    from sewforge.kernels import cpu
    monkeypatch.setattr(cpu, "_compiler", lambda: compiler)
    monkeypatch.setattr(cpu, "_BROKEN", {})
    monkeypatch.setattr(cpu, "_WARNED", [])
    monkeypatch.setattr(cpu, "_CACHED", {})
    monkeypatch.setenv("SEWFORGE_KERNEL_CACHE", str(tmp_path))
    x = spikes((2, 4, 8, 8), 0.1, dtype=torch.float32).requires_grad_(True)
    w = torch.randn(6, 4, 3, 3)
    with pytest.warns(RuntimeWarning, match="no C compiler found" if compiler is None else "failed"):
        y = spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=True)
    assert not spikeconv.ran_event_driven(y)
    torch.testing.assert_close(y, F.conv2d(x, w, None, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spikeconv.spike_conv2d(x, w, None, 1, 1, 1, binary=True)
    assert not list(tmp_path.glob("*.so"))


class _Recording(compact_spikes):
    """The networks' compact memory, listing what it keeps for each saved tensor."""

    def __init__(self):
        self.kept = []
        super().__init__()

    def _pack(self, t):
        out = super()._pack(t)
        self.kept.append(out)
        return out


def _bn_after_event_driven_conv(binary=True, channels=16, density=0.05):
    """A convolution of spikes feeding a batch norm, recorded under the networks' compact memory:
    ``(x, conv, bn, y, kept)``."""
    torch.manual_seed(0)
    conv = Conv2d(channels, 8, 3, padding=1, bias=False).double().to(memory_format=CL)
    bn = nn.BatchNorm2d(8).double()
    x = mark_spikes(spikes((4, channels, 12, 12), density, binary=binary).requires_grad_(True), binary=binary,
                    bound=None if binary else 3)
    memory = _Recording()
    with memory:
        y = bn(conv(x))
    return x, conv, bn, y, memory.kept


@pytest.mark.parametrize("order", sorted(ORDERS))
@pytest.mark.parametrize("binary", [True, False])
def test_batch_norm_input_is_rebuilt_from_the_spikes_bit_for_bit(binary, order):
    with loop_order(order):
        _check_rebuilt_bit_for_bit(binary)


def _check_rebuilt_bit_for_bit(binary):
    x, conv, bn, y, kept = _bn_after_event_driven_conv(binary)
    rebuilt = [k for k in kept if isinstance(k, Recomputable)]
    assert len(rebuilt) == 1  # the batch norm's fp32 input is not kept ...
    assert not [k for k in kept if isinstance(k, torch.Tensor) and k.shape == (4, 8, 12, 12)]
    with torch.no_grad():  # ... it is built again, the same bits as the first forward
        again = rebuilt[0]()
        first = F.conv2d(x.detach(), conv.weight, None, 1, 1)
    torch.testing.assert_close(again, first, rtol=1e-12, atol=1e-12)
    assert torch.equal(again, spikeconv.spike_conv2d(x.detach(), conv.weight.detach(), None, 1, 1, 1, binary=binary))
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, conv.weight), gy)
    xr, wr = x.detach().requires_grad_(True), conv.weight.detach().requires_grad_(True)
    ref = F.batch_norm(F.conv2d(xr, wr, None, 1, 1), None, None, bn.weight, bn.bias, training=True)
    want = torch.autograd.grad(ref, (xr, wr), gy)
    for g1, g2 in zip(got, want):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


def test_an_output_costly_to_rebuild_is_kept():
    # 256 channels at 15%: ~35 active inputs x 9 taps per output position, over REBUILD_LIMIT
    x, conv, bn, y, kept = _bn_after_event_driven_conv(True, channels=256, density=0.15)
    active = int((x != 0).sum())
    assert active * 9 > spikeconv.REBUILD_LIMIT * 4 * 12 * 12
    assert spikeconv.ran_event_driven(conv(x))  # (sparse enough to run event-driven)
    assert not [k for k in kept if isinstance(k, Recomputable)]
    assert [k for k in kept if isinstance(k, torch.Tensor) and k.shape == (4, 8, 12, 12)]  # the conv's output
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, conv.weight), gy)
    xr, wr = x.detach().requires_grad_(True), conv.weight.detach().requires_grad_(True)
    ref = F.batch_norm(F.conv2d(xr, wr, None, 1, 1), None, None, bn.weight, bn.bias, training=True)
    for g1, g2 in zip(got, torch.autograd.grad(ref, (xr, wr), gy)):
        torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


def test_weight_modified_between_forward_and_backward_is_named():
    x, conv, bn, y, kept = _bn_after_event_driven_conv()
    with torch.no_grad():
        conv.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified in place between the forward and the backward"):
        y.sum().backward()


def test_unknown_setting_is_named(monkeypatch):
    monkeypatch.setenv("SEWFORGE_SPIKE_CONV", "sparse")
    x = spikes((2, 4, 8, 8), 0.1, dtype=torch.float32)
    with pytest.raises(ValueError, match="SEWFORGE_SPIKE_CONV='sparse' is not a choice; use one of auto, dense"):
        spikeconv.spike_conv2d(x, torch.randn(6, 4, 3, 3), None, 1, 1, 1, binary=True)


@pytest.mark.parametrize("memory", ["compact", "lean", "recompute"])
def test_every_memory_mode_gives_the_same_gradients_with_event_driven_convolutions(memory, monkeypatch):
    """Batch-norm inputs rebuilt from spikes inside the memory modes' own reruns (lean: the batch
    norm -> neuron chains, recompute: whole blocks) against autograd keeping everything ("dense")."""
    net, x, ran = small_cl_net(monkeypatch)
    results = {}
    for mode in ("dense", memory):
        net.memory = mode
        ran.clear()
        out = net(x)
        results[mode] = (out, torch.autograd.grad(out.sum(), list(net.parameters())))
        assert ran, mode
    (out_a, grads_a), (out_b, grads_b) = results.values()
    torch.testing.assert_close(out_a, out_b, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
