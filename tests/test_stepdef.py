"""Neurons from one step function: the derived kernels equal autograd on the author's own function,
the derived derivatives equal finite differences, and bad step functions are refused at definition."""
import math
import types

import pytest
import torch
from hypothesis import assume, given, settings, strategies as st

import sewforge
from sewforge import testing
from sewforge.kernels import multistep_neuron
from sewforge.kernels.charge import ChargeEquation
from sewforge.neurons import Param, StepFunctionError, StepNeuron, charge_from_step


# ---- step functions, as a neuron author writes them -------------------------------------------
def lif(v, x, p):
    return v + (x - (v - p.v_rest)) * p.k


def gain_lif(v, x, p):  # two learnable parameters
    return v + (p.gain * x - (v - p.v_rest)) * p.k


def qif(v, x, p):
    return v + (x + p.a0 * (v - p.v_rest) * (v - p.v_c)) * p.k


def exp_if(v, x, p):  # exponential integrate-and-fire: reads x in no derivative, exp in dH/dV
    return v + (x - (v - p.v_rest) + p.delta * torch.exp((v - p.theta) / p.delta)) / p.tau


def squashed(v, x, p):  # non-linear in x: the backward must read x
    return v * p.decay + torch.tanh(x) * p.gain + abs(v) ** 2 * p.c - torch.sigmoid(x - v) * p.c


def kinked(v, x, p):  # abs: the derivatives carry sign()
    return v * p.c + abs(x - v) * (1 - p.c) + torch.sqrt(x * x + 1) * 0.25 - torch.log(abs(v) + 2) * p.c


STEPS = {
    "lif": (lif, {"k": 0.5}),
    "gain_lif": (gain_lif, {"k": 0.4, "gain": 1.3}),
    "qif": (qif, {"k": 0.5, "a0": 0.5, "v_c": 0.8}),
    "exp_if": (exp_if, {"tau": 2.0, "delta": 0.5, "theta": 0.6}),
    "squashed": (squashed, {"decay": 0.7, "gain": 1.1, "c": 0.2}),
    "kinked": (kinked, {"c": 0.3}),
}


def _user_reference(step, names):
    """A charge whose PyTorch form is the author's function itself (not the derived one)."""
    def charge(v, x, p, v_rest):
        ns = types.SimpleNamespace(v_rest=v_rest, **{n: p[i] for i, n in enumerate(names)})
        return step(v, x, ns)
    return ChargeEquation(name=f"user {step.__name__}", torch_charge=charge, triton_charge=None, triton_dh_dv=None,
                          triton_dh_dx=None, num_params=len(names))


@pytest.mark.parametrize("key", sorted(STEPS))
def test_derived_derivatives_equal_finite_differences(key):
    step, values = STEPS[key]
    names = tuple(values)
    eq = charge_from_step(step, names)
    g = torch.Generator().manual_seed(1)
    v = torch.rand(64, generator=g, dtype=torch.float64) * 1.6 - 0.6
    x = torch.randn(64, generator=g, dtype=torch.float64)
    p = torch.tensor(list(values.values()), dtype=torch.float64)
    for v_rest in (0.0, -0.25):
        h = eq.torch_charge(v, x, p, v_rest)
        dv, dx, dps = eq.torch_derivatives
        eps = 1e-6

        def fd(fn):
            return (fn(eps) - fn(-eps)) / (2 * eps)

        torch.testing.assert_close(dv(v, x, h, p, v_rest), fd(lambda e: eq.torch_charge(v + e, x, p, v_rest)),
                                   rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(dx(v, x, h, p, v_rest), fd(lambda e: eq.torch_charge(v, x + e, p, v_rest)),
                                   rtol=1e-6, atol=1e-7)
        for i, d in enumerate(dps(v, x, h, p, v_rest)):
            bump = torch.zeros_like(p)
            bump[i] = 1.0
            want = fd(lambda e: eq.torch_charge(v, x, p + e * bump, v_rest))
            torch.testing.assert_close(d, want, rtol=1e-6, atol=1e-7, msg=f"dH/d{names[i]}")
        # the derived PyTorch charge is the author's function, operation for operation
        ns = types.SimpleNamespace(v_rest=v_rest, **{n: p[i] for i, n in enumerate(names)})
        assert torch.equal(h, step(v, x, ns))


def test_the_backward_reads_x_only_when_no_derivative_can_do_without_it():
    assert not charge_from_step(lif, ("k",)).needs_input_in_backward  # dH/dk = (h - v) / k
    assert not charge_from_step(gain_lif, ("k", "gain")).needs_input_in_backward
    assert charge_from_step(squashed, ("decay", "gain", "c")).needs_input_in_backward


@pytest.mark.parametrize("key", sorted(STEPS))
@pytest.mark.parametrize("v_reset, detach, g, dtype", [
    (0.0, True, None, torch.float32), (None, False, "ADD", torch.float32), (-0.25, False, "IAND", torch.float64),
    (0.0, False, "AND", torch.float16)])
def test_fused_paths_equal_autograd_on_the_authors_function(device, key, v_reset, detach, g, dtype):
    if key == "exp_if" and v_reset is None:
        pytest.skip("the exponential term runs away when a soft reset keeps v above theta")
    _compare_with_the_authors_function(device, key, v_reset, detach, g, dtype, (6, 3, 7), "Sigmoid", 3)


@given(key=st.sampled_from(sorted(STEPS)), v_reset=st.sampled_from([0.0, -0.25, None]), detach=st.booleans(),
       g=st.sampled_from([None, "ADD", "AND", "IAND"]), dtype=st.sampled_from([torch.float32, torch.bfloat16]),
       shape=st.lists(st.sampled_from([1, 2, 3, 5, 7]), min_size=1, max_size=3).map(tuple),
       T=st.integers(1, 7), surrogate=st.sampled_from(["ATan", "Sigmoid", "PiecewiseQuadratic"]),
       seed=st.integers(0, 2 ** 16))
@settings(max_examples=12)
def test_fused_paths_equal_the_authors_function_anywhere(key, v_reset, detach, g, dtype, shape, T, surrogate, seed):
    assume(not (key == "exp_if" and v_reset is None))
    _compare_with_the_authors_function(torch.device("cpu"), key, v_reset, detach, g, dtype, (T,) + shape,
                                       surrogate, seed)


def _compare_with_the_authors_function(device, key, v_reset, detach, g, dtype, shape, surrogate, seed):
    step, values = STEPS[key]
    names = tuple(values)
    eq = charge_from_step(step, names)
    user = _user_reference(step, names)
    gen = torch.Generator().manual_seed(seed)
    x0 = (torch.randn(shape, generator=gen) * 1.5 + 0.3).to(device=device, dtype=dtype)
    sc0 = (torch.rand(shape, generator=gen) > 0.5).to(device=device, dtype=dtype) if g else None
    go = torch.randn(shape, generator=gen).to(device)
    results = {}
    for backend in ("torch",) + testing.fused_backends(device):
        x = x0.clone().requires_grad_(True)
        p = torch.tensor(list(values.values()), device=device, requires_grad=True)
        sc = sc0.clone().requires_grad_(True) if g else None
        out, _, _ = multistep_neuron(x, user if backend == "torch" else eq, p, surrogate, 1.0, v_reset, detach,
                                     shortcut=sc, g=g, backend=backend)
        out.backward(go.to(out.dtype))
        results[backend] = (out.detach(), x.grad, p.grad, sc.grad if g else None)
    o_ref, gx_ref, gp_ref, gs_ref = results.pop("torch")
    rtol, atol = testing.TOLERANCES[dtype]
    for backend, (o, gx, gp, gs) in results.items():
        assert torch.equal(o, o_ref), backend
        torch.testing.assert_close(gx.double(), gx_ref.double(), rtol=rtol, atol=atol, msg=backend)
        scale = max(1.0, gx_ref.double().abs().sum().item())
        for i, n in enumerate(names):
            assert abs(gp[i].item() - gp_ref[i].item()) <= atol * scale + rtol * abs(gp_ref[i].item()), \
                (backend, n, gp[i].item(), gp_ref[i].item())
        if g:
            torch.testing.assert_close(gs.double(), gs_ref.double(), rtol=rtol, atol=atol, msg=backend)


class GainLIF(StepNeuron):
    params = {"k": Param(0.5, learnable=True), "gain": Param(1.0, learnable=True), "bias": Param(0.1)}

    @staticmethod
    def step(v, x, p):
        return v + (p.gain * x + p.bias - (v - p.v_rest)) * p.k


def test_step_neuron_module_learns_every_learnable_parameter(device):
    n = GainLIF(k=0.4, gain=1.2, surrogate="ATan").to(device)
    assert sorted(name for name, _ in n.named_parameters()) == ["gain", "k"]
    assert n.bias.item() == pytest.approx(0.1) and not n.bias.requires_grad
    x = torch.randn(5, 4, 3, device=device) * 2
    n(x).sum().backward()
    assert n.k.grad is not None and n.gain.grad is not None and n.k.grad.item() != 0
    assert testing.check_neuron(GainLIF, device=device, dtypes=(torch.float32,), gs=(None, "ADD"), k=0.4) > 0


def test_step_neuron_works_as_a_plugin_neuron_by_name(device):
    from sewforge.registry import NEURONS

    name = "TestGainLIF"
    NEURONS.register(name, description="test")(GainLIF)
    try:
        out = sewforge.create_neuron(name, gain=2.0)(torch.ones(3, 2, device=device))
    finally:
        NEURONS.unregister(name)
    assert out.flatten().tolist() == [1.0, 1.0] * 3  # h = (2 + 0.1) / 2 = 1.05 >= 1 at every step


# ---- bad step functions: refused where they are written ------------------------------------------
def _line_of(fn, text):
    import inspect

    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def branchy(v, x, p):
    h = v + x
    if h > p.k:
        return h
    return v


def uses_math(v, x, p):
    return v + math.exp(x) * p.k


def clamps(v, x, p):
    return torch.clamp(v + x, max=p.k)


def reads_undeclared(v, x, p):
    return v + x * p.tau


def tensor_constant(v, x, p):
    return v + x * torch.tensor(0.5)


def two_states(v, x, p):
    return v + x, v


@pytest.mark.parametrize("fn, text, what", [
    (branchy, "if h > p.k", "comparison"),
    (uses_math, "math.exp", "math.* functions"),
    (clamps, "torch.clamp", "torch.clamp"),
    (reads_undeclared, "p.tau", "p.tau, which is not declared"),
    (tensor_constant, "torch.tensor(0.5)", "declare it as a parameter"),
])
def test_bad_step_function_names_the_function_the_line_and_what_is_allowed(fn, text, what):
    with pytest.raises(StepFunctionError) as info:
        charge_from_step(fn, ("k",))
    msg = str(info.value)
    assert fn.__name__ in msg and f":{_line_of(fn, text)}" in msg and what in msg, msg
    assert "declared" in msg or "allowed" in msg


def test_wrong_number_of_states_is_refused():
    with pytest.raises(StepFunctionError, match=r"two_states .*returns 2 values"):
        charge_from_step(two_states)


def test_a_step_neuron_with_a_bad_step_is_refused_at_class_definition():
    with pytest.raises(StepFunctionError, match=r"step.*p\.gain.*not declared"):
        class Bad(StepNeuron):  # noqa: F841
            params = {"k": Param(0.5)}

            @staticmethod
            def step(v, x, p):
                return v + x * p.gain


def test_derived_sources_are_readable():
    eq = charge_from_step(lif, ("k",))
    assert eq.c_charge == "v + (x - (v - v_rest)) * p0"
    assert eq.sources["c"]["dh_dp"] == {"k": "(h - v) / p0"}
    assert "def charge(v, x, P, v_rest)" in eq.sources["triton"]


def atan_charge(v, x, p):
    return v + torch.atan(x)


def tanh_charge(v, x, p):
    return v + torch.tanh(x)


@pytest.mark.skipif("triton" not in testing.fused_backends("cpu"), reason="needs Triton (or its interpreter)")
@pytest.mark.parametrize("step", [atan_charge, tanh_charge])
@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 4e-7), (torch.float64, 4e-15)])
def test_triton_tanh_and_atan_match_pytorch(step, dtype, rtol):
    """Triton has no tanh/atan without libdevice: the generated ones must be as good as PyTorch's."""
    from sewforge.kernels.multistep import triton_forward
    from sewforge.kernels.spec import specialize
    from sewforge.surrogates import create_surrogate

    eq = charge_from_step(step)
    x = torch.cat([torch.linspace(-8, 8, 2001), torch.logspace(-8, 0, 200)]).to(dtype).reshape(1, -1)
    spec = specialize(eq, create_surrogate("ATan"), None, True, True)
    _, h, _, _ = triton_forward(x, None, torch.zeros(1, dtype=dtype), None, spec, 1e9, 0.0, save_h=True,
                                need_vt=False, count=False)
    want = eq.torch_charge(torch.zeros_like(x[0]), x[0], torch.zeros(1, dtype=dtype), 0.0)
    torch.testing.assert_close(h[0], want, rtol=rtol, atol=0)


def test_an_unwritable_cache_folder_still_derives(monkeypatch, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("SEWFORGE_KERNEL_CACHE", str(blocker))

    def fresh(v, x, p):
        return v * 0.8125 + x * p.w

    eq = charge_from_step(fresh, ("w",))
    assert eq.c_dh_dp == "(h - (real)0.8125 * v) / p0" and not eq.needs_input_in_backward
    out = GainLIF()(torch.ones(2, 3))
    assert out.shape == (2, 3)


def test_a_step_neuron_subclass_keeps_or_replaces_its_parents_equation():
    class Same(GainLIF):
        pass

    class Other(GainLIF):
        @staticmethod
        def step(v, x, p):
            return v + (p.gain * x + p.bias - (v - p.v_rest)) * p.k * 0.5

    assert Same._charge is GainLIF._charge and Other._charge is not GainLIF._charge
    assert Other().charge_equation().c_charge.endswith("* (real)0.5")


def test_fixed_parameters_are_not_rounded_by_half_models():
    n = GainLIF(bias=0.1).half()
    p = n.charge_params()
    assert p.dtype == torch.float32 and p[2].item() == torch.tensor(0.1).item()
    assert GainLIF(bias=0.1).double().charge_params()[2].item() == 0.1
    src = GainLIF(bias=0.3)
    dst = GainLIF(bias=0.1)
    dst.load_state_dict(src.state_dict())
    assert dst.double().charge_params()[2].item() == 0.30000001192092896  # the saved fp32 value
