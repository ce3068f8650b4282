"""Neuron modules: the paper's dynamics, SpikingJelly-compatible arguments, and bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

import sewforge
from sewforge.neurons import IF_CHARGE, IFNode, LIFNode, LTLIFNode, PLIFNode


def manual_lif(xs, tau, v_th=1.0, v_reset=0.0, decay_input=True):
    """Eq. 1-5 step by step in fp32 scalars, as the neuron computes them."""
    f = np.float32
    k, v, v_reset, out = f(1.0) / f(tau), f(v_reset), f(v_reset), []
    for xt in map(f, xs):
        h = v + (xt - (v - v_reset)) * k if decay_input else v - (v - v_reset) * k + xt
        s = 1.0 if h >= v_th else 0.0
        v = v_reset if s else h
        out.append(s)
    return out


@given(st.lists(st.floats(-2, 3, allow_nan=False, width=32), min_size=1, max_size=12), st.booleans())
def test_lif_follows_eq_1_to_5(xs, decay_input):
    x = torch.tensor(xs).reshape(-1, 1)
    got = sewforge.create_neuron("LIF", tau=2.0, decay_input=decay_input)(x).flatten().tolist()
    assert got == manual_lif(xs, 2.0, decay_input=decay_input)


def test_if_fires_when_h_reaches_threshold_exactly():
    x = torch.tensor([[0.5], [0.5], [1.0], [0.25]])
    assert IFNode()(x).flatten().tolist() == [0.0, 1.0, 1.0, 0.0]


def test_soft_reset_subtracts_threshold():
    x = torch.tensor([[1.5], [0.0], [0.6]])
    # V: 1.5 -> fire, 0.5 -> 0.5 (no fire) -> 1.1 fire
    assert IFNode(v_reset=None)(x).flatten().tolist() == [1.0, 0.0, 1.0]


def test_plif_initial_tau_and_learnable_parameter():
    n = PLIFNode(init_tau=2.0)
    assert torch.sigmoid(n.w).item() == pytest.approx(0.5)
    assert n.tau == pytest.approx(2.0)
    assert [p for p in n.parameters()] == [n.w]
    n3 = PLIFNode(init_tau=3.0)
    assert n3.tau == pytest.approx(3.0)


def test_plif_decay_keeps_float64_precision_in_a_double_model():
    n = PLIFNode(init_tau=3.0).double()
    k = n.charge_params()
    assert k.dtype == torch.float64 and k.item() == torch.sigmoid(n.w).item()
    (dk,) = torch.autograd.grad(k.sum(), n.w)
    assert dk.item() == pytest.approx(k.item() * (1 - k.item()), rel=1e-12)


def test_lif_decay_is_not_rounded_by_half_or_double_models():
    assert LIFNode(tau=3.0).double().charge_params().item() == 1.0 / 3.0
    k16 = LIFNode(tau=3.0).half().charge_params()
    assert k16.dtype == torch.float32 and k16.item() == torch.tensor(1.0 / 3.0).item()


def test_each_forward_starts_from_rest():
    n = LIFNode()
    x = torch.rand(6, 4, 3) * 3
    assert torch.equal(n(x), n(x))


def test_detach_reset_changes_only_the_gradient():
    x = torch.randn(8, 5, requires_grad=True)
    a = sewforge.create_neuron("IF", detach_reset=True)(x)
    ga = torch.autograd.grad(a.sum(), x)[0]
    b = sewforge.create_neuron("IF", detach_reset=False)(x)
    gb = torch.autograd.grad(b.sum(), x)[0]
    assert torch.equal(a, b) and not torch.equal(ga, gb)


def test_default_surrogate_is_the_papers_atan_with_unit_slope_at_zero():
    n = sewforge.create_neuron("IF")
    assert n.surrogate == sewforge.create_surrogate("ATan", alpha=2.0)
    assert n.surrogate.derivative(torch.tensor(0.0)).item() == pytest.approx(1.0)


def test_repr_names_the_settings():
    r = repr(sewforge.create_neuron("LIF", tau=3.0, v_reset=None))
    assert "tau=3" in r and "soft" in r and "ATan(alpha=2)" in r


@pytest.mark.parametrize("kwargs, needle", [
    (dict(tau=1.0), "tau must be > 1"),
    (dict(tau=0.5), "tau must be > 1"),
    (dict(tau="x"), "tau must be a number"),
    (dict(v_threshold=float("nan")), "v_threshold must be finite"),
    (dict(v_reset=2.0), "v_reset (2.0) must be below v_threshold"),
    (dict(surrogate="ATann"), "did you mean 'ATan'"),
    (dict(unknown_arg=1), "unknown_arg"),
    (dict(backend="cuda"), "LIFNode: backend='cuda' is not a backend; use one of auto, triton, cpu, torch"),
])
def test_invalid_parameters_are_named(kwargs, needle):
    with pytest.raises((ValueError, KeyError)) as exc:
        sewforge.create_neuron("LIF", **kwargs)
    assert needle in str(exc.value)


def test_negative_alpha_is_rejected():
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, got -1"):
        sewforge.create_surrogate("ATan", alpha=-1)


def test_unknown_neuron_suggests_close_names():
    with pytest.raises(KeyError, match="did you mean 'PLIF'"):
        sewforge.create_neuron("PLFI")


@pytest.mark.parametrize("x, needle", [
    (torch.tensor(1.0), "at least one dimension"),
    (torch.ones(3, 2, dtype=torch.int64), "dtype torch.int64"),
])
def test_bad_input_is_reported(x, needle):
    with pytest.raises(ValueError, match=needle):
        sewforge.create_neuron("IF")(x)


def test_shortcut_must_match_input():
    n = sewforge.create_neuron("IF")
    with pytest.raises(ValueError, match=r"shortcut S has shape \(3, 4\) but the input X has \(3, 5\)"):
        n(torch.randn(3, 5), shortcut=torch.zeros(3, 4), g="ADD")
    with pytest.raises(KeyError, match="unknown element-wise function 'XOR'"):
        n(torch.randn(3, 5), shortcut=torch.zeros(3, 5), g="XOR")
    with pytest.raises(ValueError, match="shortcut was given without g; pass g="):
        n(torch.randn(3, 5), shortcut=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="g='AND' was given without a shortcut"):
        n(torch.randn(3, 5), g="AND")


def test_backend_choice_is_validated(monkeypatch):
    x = torch.randn(2, 3)
    with pytest.raises(ValueError, match="IFNode: backend='cuda' is not a backend"):
        sewforge.create_neuron("IF", backend="cuda")  # at construction, not at the first forward
    with pytest.raises(ValueError, match="backend argument='cuda' is not a backend"):
        sewforge.multistep_neuron(x, IF_CHARGE, torch.zeros(0), "ATan", backend="cuda")
    monkeypatch.setenv("SEWFORGE_BACKEND", "fast")
    with pytest.raises(ValueError, match="SEWFORGE_BACKEND='fast'"):
        sewforge.create_neuron("IF")(x)


@pytest.mark.parametrize("name", ["IF", "LIF", "PLIF"])
def test_firing_input_makes_the_neuron_fire_every_step(name):
    for kw in (dict(), dict(v_reset=None), dict(v_threshold=0.5)):
        n = sewforge.create_neuron(name, **kw)
        b = n.firing_input()
        assert n(torch.full((7, 3), b)).eq(1).all()
        assert not n(torch.full((1, 3), b * 0.9 - 1e-3)).eq(1).all()


def test_fused_sew_function_equals_separate_ops():
    x = torch.randn(6, 4, 5) * 2
    s = (torch.rand(6, 4, 5) > 0.5).float()
    for g in ("ADD", "AND", "IAND"):
        n = sewforge.create_neuron("PLIF")
        assert torch.equal(n(x, shortcut=s, g=g), sewforge.sew_function(n(x), s, g))


def test_iand_operand_order():
    a, s = torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert sewforge.sew_function(a, s, "IAND").tolist() == [0.0, 0.0, 1.0, 0.0]
    assert sewforge.sew_function(a, s, "AND").tolist() == [1.0, 0.0, 0.0, 0.0]
    assert sewforge.sew_function(a, s, "ADD").tolist() == [2.0, 1.0, 1.0, 0.0]


def test_neurons_and_sew_functions_pickle_and_deepcopy():
    import copy
    import pickle

    g = sewforge.create_elementwise("IAND")
    assert pickle.loads(pickle.dumps(g)) is g and copy.deepcopy(g) is g
    n = sewforge.create_neuron("PLIF", surrogate="Sigmoid")
    n2 = pickle.loads(pickle.dumps(n))
    x = torch.randn(4, 3)
    assert torch.equal(n(x), n2(x)) and n2.surrogate == n.surrogate


def test_kept_state_mismatch_names_shape_or_device():
    n = sewforge.create_neuron("LIF", stateful=True)
    n(torch.randn(2, 3))
    with pytest.raises(ValueError, match=r"kept state has shape \(3,\) but this input has \(4,\) per step"):
        n(torch.randn(2, 4))
    with pytest.raises(ValueError, match="kept state is on cpu but this input is on meta"):
        n(torch.randn(2, 3, device="meta"))
    n.reset()
    assert n(torch.randn(2, 4)).shape == (2, 4)


def test_a_python_list_is_named_as_the_wrong_input_type():
    with pytest.raises(TypeError, match=r"PLIFNode: the input must be a torch.Tensor \[T, \.\.\.\], got list"):
        sewforge.create_neuron("PLIF")([[0.5, 1.5]])


def test_learnable_parameters_on_another_device_are_named(monkeypatch):
    plif = sewforge.create_neuron("PLIF").to("meta")
    with pytest.raises(ValueError, match=r"PLIFNode: its learnable parameters are on meta but the input is on cpu"):
        plif(torch.randn(3, 4))
    lif = sewforge.create_neuron("LIF").to("meta")  # nothing learnable: the constant follows the input
    lif._k = torch.tensor([0.5])
    assert lif(torch.randn(3, 4)).shape == (3, 4)


def test_a_neuron_plugin_with_a_wrong_forward_signature_is_named_when_built():
    from sewforge.blocks import SEWBlock

    class TwoInputs(torch.nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(TypeError, match=r"SEWBlock: neuron TwoInputs \(from test_neurons\) has forward\(x, y\)"):
        SEWBlock(4, 4, neuron=TwoInputs)


@pytest.mark.parametrize("v_reset", [0.0, None])
def test_ltlif_is_a_lif_of_threshold_theta(v_reset):
    x = torch.randn(12, 3, 5) * 2 + 1
    lt = LTLIFNode(k=1 / 3, theta=1.5, v_reset=v_reset)
    lif = LIFNode(tau=3.0, v_threshold=1.5, v_reset=v_reset)
    assert torch.equal(lt(x), lif(x)) or (lt(x) != lif(x)).float().mean() < 0.01  # rounding at the threshold


def test_ltlif_learns_decay_and_threshold():
    n = LTLIFNode()
    assert sorted(name for name, _ in n.named_parameters()) == ["k", "theta"]
    (n(torch.randn(6, 4) * 2 + 1) * torch.randn(6, 4)).sum().backward()
    assert n.k.grad.item() != 0 and n.theta.grad.item() != 0


def test_ltlif_kernels_match_the_reference(device):
    from sewforge import testing

    assert testing.check_neuron(LTLIFNode, device=device, theta=0.8) == 72
