"""The fused Triton kernels (interpreted on CPU) equal the PyTorch reference."""
import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings

import sewforge
from sewforge import testing
from sewforge._triton import jit, tl  # noqa: F401  (the interpreter needs tl beside jit functions)
from sewforge.kernels.multistep import specializations
from sewforge.neurons import LIF_CHARGE

from neuron_cases import neuron_cases

@settings(max_examples=100)
@given(neuron_cases())
def test_kernel_equals_reference(device, case):
    name, kw, shape, dtype, g, scale, seed = case
    if kw["v_reset"] is not None and kw["v_reset"] >= kw["v_threshold"]:
        kw["v_reset"] = 0.0
    neuron = sewforge.create_neuron(name, **kw)
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen) * scale + 0.2).to(device=device, dtype=dtype)
    sc = (torch.rand(shape, generator=gen) > 0.5).to(device=device, dtype=dtype) if g else None
    go = torch.randn(shape, generator=gen).to(device)
    testing.compare_to_reference(neuron, x, shortcut=sc, g=g, grad_out=go)


@pytest.mark.parametrize("name", sewforge.list_neurons())
def test_every_registered_neuron_conforms(device, name):
    factory = sewforge.NEURONS.get(name)
    per_channel = any(getattr(p, "per_channel", False) for p in getattr(factory, "params", {}).values())
    kw = {"channels": 3} if per_channel else {}  # inputs [T, B, C, ...] with C = 3
    assert testing.check_neuron(name, device=device, **kw) > 0


@pytest.mark.parametrize("name", sewforge.list_surrogates())
def test_every_registered_surrogate_conforms(device, name):
    testing.check_surrogate(name, device=device)


@pytest.mark.parametrize("g", sewforge.list_elementwise())
def test_every_elementwise_function_conforms(device, g):
    testing.check_elementwise(g, device=device)


def test_plif_tau_gradient_is_reduced_over_the_whole_tensor(device):
    # many programs: the gradient of 1/tau must sum every block's partial sum (the 2021 race)
    n = sewforge.create_neuron("PLIF")
    x = torch.randn(4, 3 * 4096 + 17, device=device) * 2
    testing.compare_to_reference(n, x)


def test_streaming_state_matches_one_long_sequence(device):
    x = torch.randn(8, 3, 5, device=device) * 2
    whole = sewforge.create_neuron("LIF", backend="triton")(x)
    stream = sewforge.create_neuron("LIF", backend="triton", stateful=True)
    parts = torch.cat([stream(x[:3]), stream(x[3:5]), stream(x[5:])])
    assert torch.equal(whole, parts)
    stream.reset()
    assert torch.equal(stream(x), whole)


def test_autocast_runs_the_fused_kernel_in_half_precision(device):
    n = sewforge.create_neuron("PLIF", backend="triton")
    conv = torch.nn.Linear(6, 6).to(device)
    x = torch.randn(4, 2, 6, device=device)
    dtype = torch.bfloat16
    with torch.autocast(device_type=device.type, dtype=dtype):
        y = conv(x)
        s = n(y)
    assert y.dtype == dtype and s.dtype == dtype
    s.float().sum().backward()
    assert n.w.grad is not None and math.isfinite(n.w.grad.item())
    assert conv.weight.grad is not None


def test_specialisations_are_cached_per_combination(device):
    x = torch.randn(2, 3, device=device)
    for sg in ("ATan", "Sigmoid"):
        sewforge.create_neuron("IF", surrogate=sg, backend="triton")(x)
    seen = specializations()
    assert any("IF + ATan" in k for k in seen) and any("IF + Sigmoid" in k for k in seen)


def test_empty_sequences_and_tensors(device):
    for shape in [(0, 3), (3, 0)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        out = sewforge.create_neuron("PLIF", backend="triton")(x)
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad.shape == x.shape


def test_second_backward_through_retained_graph_is_identical(device):
    n = sewforge.create_neuron("PLIF", backend="triton")
    x = torch.randn(5, 7, device=device, requires_grad=True)
    out = n(x)
    g1 = torch.autograd.grad(out.sum(), x, retain_graph=True)[0]
    g2 = torch.autograd.grad(out.sum(), x)[0]
    assert torch.equal(g1, g2)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("g", [None, "AND"])
def test_zero_step_sequence_gives_empty_output_and_rest_state(backend, g):
    n = sewforge.create_neuron("PLIF", backend=backend, stateful=True, v_reset=-0.25)
    x = torch.randn(0, 3, requires_grad=True)
    s = torch.ones(0, 3, dtype=torch.float64) if g else None
    out = n(x, shortcut=s, g=g)
    assert out.shape == (0, 3) and out.dtype == (torch.float64 if g else torch.float32)
    assert torch.equal(n.v, torch.full((3,), -0.25))
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_double_backward_through_the_kernel_is_refused_not_silently_zero(device):
    x = torch.randn(4, 6, device=device, requires_grad=True)
    out = sewforge.create_neuron("LIF", backend="triton")(x)
    weights = torch.arange(24.0, device=device).reshape(4, 6)
    (gx,) = torch.autograd.grad((out * weights).sum(), x, create_graph=True)
    # a gradient penalty next to another term must not silently contribute nothing
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (gx.pow(2).sum() + x.sum()).backward()


@jit
def _charge_ignoring_v_rest(v, x, P, v_rest):
    return v + (x - v) * tl.load(P)  # wrong: decays toward 0 instead of v_rest


class _NeuronIgnoringVRest(sewforge.neurons.LIFNode):
    def charge_equation(self):
        return dataclasses.replace(LIF_CHARGE, name="LIF(ignores v_rest)", triton_charge=_charge_ignoring_v_rest)


def test_conformance_check_catches_a_kernel_that_ignores_the_reset_potential():
    with pytest.raises(AssertionError, match="differs from the reference"):
        testing.check_neuron(_NeuronIgnoringVRest, dtypes=(torch.float32,), surrogates=("ATan",))


@pytest.mark.parametrize("g", [None, "ADD", "IAND"])
def test_every_fused_path_keeps_channels_last_and_counts_spikes(device, g):
    """Through the public neuron API on the test device (CPU: C and interpreted Triton; CUDA: Triton)."""
    gen = torch.Generator().manual_seed(5)
    T, B, C, H, W = 3, 2, 4, 5, 3
    x = (torch.randn(T * B, C, H, W, generator=gen) * 1.5).to(memory_format=torch.channels_last)
    x = x.unflatten(0, (T, B)).to(device)
    sc = None
    if g:
        sc = torch.empty_like(x).copy_((torch.rand(x.shape, generator=gen) > 0.5).to(device))
    ref_neuron = sewforge.create_neuron("PLIF", backend="torch")
    a_ref = ref_neuron(x.contiguous())
    for backend in testing.fused_backends(device):
        plif = sewforge.create_neuron("PLIF", backend=backend)
        plif.count_spikes = True
        xb = x.detach().clone().requires_grad_(True)
        out = plif(xb, shortcut=sc, g=g) if g else plif(xb)
        assert out.stride() == x.stride(), backend
        assert plif.spike_count.item() == a_ref.sum().item(), backend
        testing.compare_to_reference(plif, x, shortcut=sc, g=g, backend=backend)
