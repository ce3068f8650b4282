"""Max pooling of spikes: the outputs and input gradients of PyTorch's own pooling, bit for bit,
with the input kept packed and (on the CPU) the backward computed from the packed values."""
from __future__ import annotations

import gc
import warnings
import weakref

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

from sewforge.kernels import spikepool
from sewforge.memory import PackedSpikes, mark_spikes

CL = torch.channels_last


@pytest.fixture
def ran(monkeypatch):
    """Records, per backward pass, whether the compiled loop computed the input gradient."""
    seen = []
    orig = spikepool._backward_c

    def spy(*args):
        out = orig(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(spikepool, "_backward_c", spy)
    return seen


def values(shape, kind, dtype, seed, layout):
    g = torch.Generator().manual_seed(seed)
    if kind == "binary":
        x = (torch.rand(shape, generator=g) < 0.3).to(dtype)
    elif kind == "int:3":  # a SEW ADD output after three blocks: many ties between 0, 1, 2, 3
        x = torch.randint(0, 4, shape, generator=g).to(dtype)
    else:  # real values (not packable): kept as they are, NaN and ties included
        x = torch.randint(-2, 3, shape, generator=g).to(dtype) / 2
        x.view(-1)[::7] = float("nan")
    return x.contiguous(memory_format=layout)


def check(x, kind, pool, grad_seed=0):
    """Pool ``x`` marked as ``kind`` through :func:`pool_spikes` and natively: same bits."""
    native_in = x.clone().requires_grad_(True)
    native = pool(native_in)
    g = torch.randn(native.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=x.dtype)
    native.backward(g)
    marked = mark_spikes(x.clone().requires_grad_(True), kind="integer" if kind == "real" else kind)
    out = spikepool.pool_spikes(pool, marked)
    out.backward(g)
    assert torch.equal(out.nan_to_num(), native.nan_to_num()) and torch.equal(out.isnan(), native.isnan())
    assert torch.equal(marked.grad, native_in.grad)
    assert marked.grad.stride() == native_in.grad.stride()
    return out


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 3), c=st.sampled_from([1, 3, 8]), h=st.integers(1, 9), w=st.integers(1, 9),
       k=st.integers(1, 3), stride=st.integers(1, 3), dilation=st.integers(1, 2), data=st.data(),
       ceil=st.booleans(), kind=st.sampled_from(["binary", "int:3", "real"]),
       layout=st.sampled_from([torch.contiguous_format, CL]), dtype=st.sampled_from([torch.float32, torch.float64]),
       seed=st.integers(0, 3))
def test_matches_pytorch_pooling_bit_for_bit(n, c, h, w, k, stride, dilation, data, ceil, kind, layout, dtype, seed):
    padding = data.draw(st.integers(0, k // 2))
    if (k - 1) * dilation + 1 > h + 2 * padding or (k - 1) * dilation + 1 > w + 2 * padding:
        return  # no output: PyTorch's own error
    pool = nn.MaxPool2d(k, stride, padding, dilation, ceil_mode=ceil)
    check(values((n, c, h, w), kind, dtype, seed, layout), kind, pool, seed)


@pytest.mark.skipif(not spikepool.available(), reason="no working C compiler")
@pytest.mark.parametrize("kind", ["binary", "int:3", "real"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_the_compiled_backward_runs_on_the_cpu_from_the_packed_input(kind, layout, ran):
    pool = nn.MaxPool2d(3, 2, 1)  # SEW ResNet's stem pooling: overlapping windows, padding
    x = values((4, 16, 14, 14), kind, torch.float32, 0, layout)
    out = check(x, kind, pool)
    assert ran == [True]
    node = out.grad_fn
    if kind == "real":
        assert node.rest is None  # not small integers: kept as it is
    else:
        assert isinstance(node.rest, PackedSpikes) and node.rest.bits == (kind == "binary")


def test_keeps_the_packed_input_only_until_its_backward_pass():
    x = mark_spikes(values((2, 16, 8, 8), "binary", torch.float32, 0, CL).requires_grad_(True), binary=True)
    out = spikepool.pool_spikes(nn.MaxPool2d(2), x)
    (data,) = out.grad_fn.saved_tensors
    assert data.dtype == torch.uint8 and data.numel() * 8 == x.numel()  # 1 bit per element, no indices
    ref = weakref.ref(data)
    del data
    out.sum().backward()
    gc.collect()
    assert ref() is None  # freed by the backward pass while the graph (out) still exists


def test_hand_computed_gradient_goes_to_the_first_maximum():
    x = torch.tensor([[[[0., 1., 1., 0.],
                        [1., 0., 0., 0.],
                        [0., 0., 0., 0.],
                        [0., 0., 0., 0.]]]])
    marked = mark_spikes(x.clone().requires_grad_(True), binary=True)
    out = spikepool.pool_spikes(nn.MaxPool2d(2), marked)
    out.backward(torch.tensor([[[[10., 20.], [30., 40.]]]]))
    # window (0, 0): first 1 in row-major order is (0, 1); window (0, 1): (0, 2); the silent windows
    # (1, 0) and (1, 1): their first element
    want = torch.zeros(4, 4)
    want[0, 1], want[0, 2], want[2, 0], want[2, 2] = 10, 20, 30, 40
    assert torch.equal(out[0, 0], torch.tensor([[1., 1.], [0., 0.]]))
    assert torch.equal(marked.grad[0, 0], want)


@pytest.mark.skipif(not spikepool.available(), reason="no working C compiler")
def test_several_threads_give_the_one_thread_gradient(ran):
    x = values((6, 8, 12, 12), "int:3", torch.float64, 1, CL)
    grads = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 3):
            torch.set_num_threads(threads)
            marked = mark_spikes(x.clone().requires_grad_(True), kind="int:3")
            spikepool.pool_spikes(nn.MaxPool2d(2), marked).sum().backward()
            grads.append(marked.grad)
    finally:
        torch.set_num_threads(old)
    assert ran == [True, True] and torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("case", ["no compiler", "1-D pooling", "create_graph"])
def test_falls_back_to_pytorch_pooling(case, monkeypatch, ran):
    x = values((2, 4, 8, 8), "binary", torch.float64, 2, CL)
    pool = nn.MaxPool2d(2)
    if case == "no compiler":
        from sewforge.kernels import cpu
        monkeypatch.setattr(cpu, "_compiler", lambda: None)
        monkeypatch.setattr(cpu, "_CACHED", {})
        monkeypatch.setattr(cpu, "_WARNED", [])
    if case == "1-D pooling":
        x = x.flatten(2)
        pool = nn.MaxPool1d(2)
    native_in = x.clone().requires_grad_(True)
    marked = mark_spikes(x.clone().requires_grad_(True), binary=True)
    create = case == "create_graph"
    want = torch.autograd.grad(pool(native_in).square().sum(), native_in, create_graph=create)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = torch.autograd.grad(spikepool.pool_spikes(pool, marked).square().sum(), marked, create_graph=create)[0]
    # without a compiler, one line says what runs instead
    assert [str(w.message) for w in caught if "no C compiler" in str(w.message)] == (
        ["sewforge: no C compiler found (set CC or install gcc); max pooling of spikes recomputes PyTorch's "
         "pooling in backward (slower)"] if case == "no compiler" else [])
    assert ran == [False] and torch.equal(got, want)
    if create:  # the graph of the gradient is PyTorch's own: differentiable again, same second derivative
        second = torch.autograd.grad(got.square().sum(), marked)[0]
        assert torch.equal(second, torch.autograd.grad(want.square().sum(), native_in)[0]) and second.abs().sum() > 0


def test_the_module_call_and_its_hooks_are_kept():
    pool = nn.MaxPool2d(2)
    seen = []
    pool.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    x = mark_spikes(values((2, 3, 4, 4), "binary", torch.float32, 0, CL).requires_grad_(True), binary=True)
    spikepool.pool_spikes(pool, x).sum().backward()
    assert seen == [(2, 3, 2, 2)]
