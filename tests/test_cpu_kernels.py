"""The fused CPU path (compiled C, and its plain-PyTorch fallback) equals the PyTorch reference."""
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st

import sewforge
from sewforge import testing
from sewforge.kernels import cpu
from sewforge.kernels.charge import ChargeEquation
from sewforge.neurons import BaseNeuron

from neuron_cases import neuron_cases

DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
LONG = dict(max_T=64, sizes=(1, 2, 3, 5, 7, 11, 13, 517), max_dims=2, dtypes=DTYPES)


def _case_tensors(shape, dtype, g, scale, seed, integer_shortcut=False):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * scale + 0.2).to(dtype)
    sc = None
    if g:
        sc = (torch.rand(shape, generator=gen) > 0.5).to(dtype)
        if integer_shortcut:  # ADD's outputs feed later blocks: small integers above 1
            sc = sc + (torch.rand(shape, generator=gen) > 0.5).to(dtype)
    go = torch.randn(shape, generator=gen)
    return x, sc, go


@settings(max_examples=100)
@given(neuron_cases(**LONG), st.booleans())
def test_cpu_kernel_equals_reference(case, integer_shortcut):
    name, kw, shape, dtype, g, scale, seed = case
    neuron = sewforge.create_neuron(name, **kw)
    x, sc, go = _case_tensors(shape, dtype, g, scale, seed, integer_shortcut)
    assert cpu.cpu_impl(_spec_of(neuron, g), dtype) == "c"  # the compiled kernel, not the fallback
    testing.compare_to_reference(neuron, x, shortcut=sc, g=g, grad_out=go, backend="cpu")


@settings(max_examples=30)
@given(neuron_cases(**LONG))
def test_pytorch_fallback_equals_reference(case):
    name, kw, shape, dtype, g, scale, seed = case
    neuron = sewforge.create_neuron(name, **kw)
    x, sc, go = _case_tensors((min(shape[0], 9),) + shape[1:], dtype, g, scale, seed)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEWFORGE_CPU_KERNEL", "torch")
        assert cpu.cpu_impl(_spec_of(neuron, g), dtype) == "torch"
        testing.compare_to_reference(neuron, x, shortcut=sc, g=g, grad_out=go, backend="cpu")


def _spec_of(neuron, g):
    from sewforge.elementwise import create_elementwise
    from sewforge.kernels.spec import specialize

    return specialize(neuron.charge_equation(), neuron.surrogate, create_elementwise(g) if g else None,
                      neuron.v_reset is not None, neuron.detach_reset)


def test_hand_computed_lif_sequence():
    """LIF, tau = 2, V_th = 1, hard reset to 0, input 1.5, 0.5, 1.5: H = 0.75, 0.625, 1.0625."""
    x = torch.tensor([[1.5], [0.5], [1.5]], requires_grad=True)
    lif = sewforge.create_neuron("LIF", tau=2.0, surrogate="Constant", backend="cpu")
    s = lif(x)
    assert s.flatten().tolist() == [0.0, 0.0, 1.0]
    s.sum().backward()
    # Constant surrogate, detached reset: dS[t]/dX[t] = 1/2, and dH[t+1]/dH[t] = (1 - 1/2) while
    # no spike resets the path: dL/dX[0] = 1/2 (1 + 1/2 + 1/4), dL/dX[1] = 1/2 (1 + 1/2), dL/dX[2] = 1/2
    assert x.grad.flatten().tolist() == pytest.approx([0.875, 0.75, 0.5])


def test_spike_count_equals_the_neurons_own_spikes():
    torch.manual_seed(0)
    x = torch.randn(7, 3, 33) * 2
    sc = (torch.rand(7, 3, 33) > 0.5).float()
    plif = sewforge.create_neuron("PLIF", backend="cpu")
    plif.count_spikes = True
    a = sewforge.create_neuron("PLIF", backend="torch")(x)
    out = plif(x, shortcut=sc, g="IAND")
    assert torch.equal(out, (1 - a) * sc)
    assert plif.spike_count.dtype == torch.float64 and plif.spike_count.item() == a.sum().item()
    assert plif.spike_numel == x.numel()


def test_channels_last_layout_is_kept_without_copy():
    torch.manual_seed(0)
    T, B, C, H, W = 3, 2, 5, 4, 6
    x = (torch.randn(T * B, C, H, W) * 2).to(memory_format=torch.channels_last).unflatten(0, (T, B))
    sc = (torch.rand(T * B, C, H, W) > 0.5).float().to(memory_format=torch.channels_last).unflatten(0, (T, B))
    assert not x.is_contiguous()
    x.requires_grad_(True)
    lif = sewforge.create_neuron("LIF", backend="cpu")
    out = lif(x, shortcut=sc, g="ADD")
    assert out.stride() == x.stride()
    ref = sewforge.create_neuron("LIF", backend="torch")(x.detach().contiguous(), shortcut=sc.contiguous(), g="ADD")
    assert torch.equal(out, ref)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_stateful_streaming_equals_one_long_sequence():
    torch.manual_seed(1)
    x = torch.randn(12, 4, 9) * 1.5
    whole = sewforge.create_neuron("PLIF", backend="cpu")(x)
    stream = sewforge.create_neuron("PLIF", backend="cpu", stateful=True)
    parts = torch.cat([stream(x[:5]), stream(x[5:])])
    assert torch.equal(parts, whole)


def test_empty_sequences():
    lif = sewforge.create_neuron("LIF", backend="cpu")
    x = torch.zeros(0, 3, requires_grad=True)
    out = lif(x)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert x.grad.shape == (0, 3)
    y = torch.zeros(4, 0, requires_grad=True)
    assert lif(y).shape == (4, 0)


_QUAD = ChargeEquation(  # a plugin charge given only in PyTorch: no Triton, no C forms
    name="test-quadratic", torch_charge=lambda v, x, p, v_rest: v + 0.1 * (v - v_rest) ** 2 * p[0] + x,
    triton_charge=None, triton_dh_dv=None, triton_dh_dx=None, num_params=1, needs_input_in_backward=False)


class _QuadNeuron(BaseNeuron):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.a = torch.nn.Parameter(torch.tensor([0.7]))

    def charge_equation(self):
        return _QUAD

    def charge_params(self):
        return self.a


@pytest.mark.parametrize("g", [None, "AND"])
def test_pytorch_only_charge_runs_fused_on_cpu(g):
    neuron = _QuadNeuron(v_reset=None)
    x, sc, go = _case_tensors((9, 4, 5), torch.float32, g, 1.5, 3)
    assert cpu.cpu_impl(_spec_of(neuron, g), torch.float32) == "torch"
    testing.compare_to_reference(neuron, x, shortcut=sc, g=g, grad_out=go, backend="cpu")


def test_missing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_compiler", lambda: None)
    monkeypatch.setattr(cpu, "_LIBS", {})
    monkeypatch.setattr(cpu, "_IMPL", {})
    monkeypatch.setattr(cpu, "_WARNED", [])
    x = torch.randn(5, 8) * 2
    with pytest.warns(RuntimeWarning, match="no C compiler found"):
        out = sewforge.create_neuron("IF", backend="cpu")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = sewforge.create_neuron("IF", backend="cpu")(x)
    ref = sewforge.create_neuron("IF", backend="torch")(x)
    assert torch.equal(out, ref) and torch.equal(again, ref)


def test_failing_compiler_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "_compiler", lambda: "/bin/false")
    monkeypatch.setattr(cpu, "_LIBS", {})
    monkeypatch.setattr(cpu, "_IMPL", {})
    monkeypatch.setattr(cpu, "_BROKEN", {})
    monkeypatch.setattr(cpu, "_WARNED", [])
    monkeypatch.setenv("SEWFORGE_KERNEL_CACHE", str(tmp_path))
    x = torch.randn(5, 8) * 2
    with pytest.warns(RuntimeWarning, match="failed"):
        out = sewforge.create_neuron("LIF", backend="cpu", v_reset=None)(x)
    assert torch.equal(out, sewforge.create_neuron("LIF", backend="torch", v_reset=None)(x))
    assert not list(tmp_path.glob("*.so"))  # nothing half-written left in the cache


def test_compiled_kernels_are_cached_on_disk(monkeypatch, tmp_path):
    monkeypatch.setenv("SEWFORGE_KERNEL_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu, "_LIBS", {})
    monkeypatch.setattr(cpu, "_IMPL", {})
    spec = _spec_of(sewforge.create_neuron("PLIF", surrogate="Sigmoid"), "IAND")
    assert cpu.compiled_library(spec, torch.bfloat16) is not None
    files = list(tmp_path.glob("*.so"))
    assert len(files) == 1
    monkeypatch.setattr(cpu, "_LIBS", {})
    monkeypatch.setattr(cpu, "_IMPL", {})
    assert cpu.compiled_library(spec, torch.bfloat16) is not None
    assert list(tmp_path.glob("*.so")) == files  # the second process-level load reuses the file


def test_auto_backend_on_cpu_is_the_fused_path():
    x = torch.randn(4, 10, requires_grad=True)
    out = sewforge.create_neuron("LIF")(x)
    assert out.grad_fn is not None and "neuron_forward" in type(out.grad_fn).__name__


def test_threads_split_the_work_identically():
    torch.manual_seed(0)
    x = (torch.randn(6, 3 * (1 << 16) + 5) * 1.5).requires_grad_(True)
    plif = sewforge.create_neuron("PLIF", backend="cpu")
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            x.grad = None
            plif.w.grad = None
            out = plif(x)
            out.backward(torch.ones_like(out))
            results.append((out, x.grad.clone(), plif.w.grad.clone()))
    finally:
        torch.set_num_threads(before)
    (o1, g1, w1), (o2, g2, w2) = results
    assert torch.equal(o1, o2) and torch.equal(g1, g2)
    assert torch.allclose(w1, w2, rtol=1e-6)


def test_a_forked_child_runs_the_threaded_kernel():
    """The worker threads of the parent do not exist in a forked child; it must not wait for them."""
    import multiprocessing

    x = torch.randn(3, 3 * (1 << 16)) * 1.5
    lif = sewforge.create_neuron("LIF", backend="cpu")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        expect = lif(x)  # starts the parent's pool
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_spikes_in_child, (x,)).get(timeout=60)
    finally:
        torch.set_num_threads(before)
    assert got == _digest(expect)


def _digest(t):
    import hashlib

    return hashlib.sha256(t.numpy().tobytes()).hexdigest()


def _spikes_in_child(x):
    torch.set_num_threads(2)
    return _digest(sewforge.create_neuron("LIF", backend="cpu")(x))  # plain bytes back, no shared tensor
