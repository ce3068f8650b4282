"""Surrogate gradients: the paper's values and the spike function."""
import math

import pytest
import torch
from hypothesis import assume, given, strategies as st

import sewforge
from sewforge.surrogates import spike


def d(name, x, **kw):
    return sewforge.create_surrogate(name, **kw).derivative(torch.tensor(x, dtype=torch.float64)).item()


def test_paper_values():
    assert d("ATan", 0.0) == pytest.approx(1.0)                      # alpha = 2: sigma'(0) = 1
    assert d("ATan", 0.0, alpha=3.0) == pytest.approx(1.5)
    assert d("ATanA5", 0.5) == pytest.approx(1.0) == pytest.approx(d("ATanA5", -0.5))
    assert d("Rectangular", 0.49) == 1.0 and d("Rectangular", 0.5) == 0.0
    assert d("Rectangular", 0.2, a=0.5) == pytest.approx(2.0)
    assert d("Constant", 123.0) == 1.0
    assert d("Sigmoid", 0.0) == pytest.approx(1.0)                   # alpha = 4
    assert d("PiecewiseQuadratic", 0.0) == pytest.approx(1.0) and d("PiecewiseQuadratic", 1.5) == 0.0


@given(st.sampled_from(["ATan", "Sigmoid", "PiecewiseQuadratic", "ATanA5"]), st.floats(-4, 4))
def test_primitives_are_smooth_steps(name, x):
    sg = sewforge.create_surrogate(name)
    p = sg.primitive(torch.tensor([x, x + 1e-3], dtype=torch.float64))
    assert p[1] >= p[0]
    if name != "ATanA5":  # A.5's primitive is an unnormalised arctan
        assert -1e-12 <= p[0] <= 1 + 1e-12


def atan_slope(x, alpha=2.0):
    """The paper's ArcTan surrogate (Appendix A.5, as SpikingJelly): sigma(x) = arctan(pi/2 alpha x) / pi
    + 1/2, so sigma'(x) = (alpha / 2) / (1 + (pi/2 alpha x)^2)."""
    return (alpha / 2) / (1 + (math.pi / 2 * alpha * x) ** 2)


def test_spike_is_heaviside_forward_and_surrogate_backward():
    x = torch.tensor([-1.0, 0.0, 0.5], requires_grad=True)
    s = spike(x, sewforge.create_surrogate("ATan"))
    assert s.tolist() == [0.0, 1.0, 1.0]
    s.sum().backward()
    # alpha = 2: sigma'(x) = 1 / (1 + (pi x)^2)
    assert x.grad.tolist() == pytest.approx([1 / (1 + math.pi ** 2), 1.0, 1 / (1 + math.pi ** 2 / 4)], rel=1e-6)


def test_spike_backward_matches_spikingjelly():
    """Another implementation: SpikingJelly 2.0's surrogate functions, same parameters."""
    from spikingjelly.activation_based import surrogate as sjs

    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    for ours, theirs in [(sewforge.create_surrogate("ATan", alpha=2.5), sjs.ATan(alpha=2.5)),
                         (sewforge.create_surrogate("Sigmoid", alpha=4.0), sjs.Sigmoid(alpha=4.0)),
                         (sewforge.create_surrogate("PiecewiseQuadratic"), sjs.PiecewiseQuadratic(alpha=1.0))]:
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa, sb = spike(a, ours), theirs(b)
        assert torch.equal(sa, sb)
        sa.sum().backward()
        sb.sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_surrogates_compare_by_type_and_parameter():
    assert sewforge.create_surrogate("atan") == sewforge.create_surrogate("ATan", alpha=2)
    assert sewforge.create_surrogate("ATan", alpha=3) != sewforge.create_surrogate("ATan")


@pytest.mark.parametrize("call, needle", [
    (lambda: sewforge.create_surrogate("ATan", alpha=0), "alpha must be a finite number > 0, got 0.0"),
    (lambda: sewforge.create_surrogate("ATan", beta=1), "takes one parameter 'alpha'"),
    (lambda: sewforge.create_surrogate("Constant", alpha=1), "Constant takes no parameters"),
    (lambda: sewforge.create_surrogate("Rectangular", a=math.inf), "a must be a finite number > 0"),
    (lambda: sewforge.create_surrogate("Arctan"), "did you mean"),
    (lambda: sewforge.create_surrogate(3), "must be a registered name or a Surrogate"),
    (lambda: sewforge.create_surrogate("ATan", alpha="two"), "surrogate ATan: alpha must be a finite number > 0, "
                                                             "got 'two'"),
])
def test_bad_surrogate_arguments(call, needle):
    with pytest.raises((ValueError, KeyError, TypeError)) as exc:
        call()
    assert needle in str(exc.value)


_KINKS = {"Rectangular": (-0.5, 0.5), "PiecewiseQuadratic": (-1.0, 0.0, 1.0)}


@given(st.sampled_from(["ATan", "Sigmoid", "Rectangular", "PiecewiseQuadratic", "Constant", "ATanA5"]),
       st.floats(-3, 3))
def test_derivative_is_the_slope_of_the_primitive(name, x):
    assume(all(abs(x - k) > 1e-4 for k in _KINKS.get(name, ())))
    sg = sewforge.create_surrogate(name)
    eps = 1e-6
    p = sg.primitive(torch.tensor([x - eps, x + eps], dtype=torch.float64))
    slope = ((p[1] - p[0]) / (2 * eps)).item()
    assert sg.derivative(torch.tensor(x, dtype=torch.float64)).item() == pytest.approx(slope, rel=1e-5, abs=1e-7)


def test_spike_backward_keeps_float64_precision():
    x = torch.tensor([0.1, -0.3, 0.7], dtype=torch.float64, requires_grad=True)
    spike(x, sewforge.create_surrogate("ATan", alpha=2.1)).sum().backward()
    want = torch.tensor([atan_slope(v, 2.1) for v in (0.1, -0.3, 0.7)], dtype=torch.float64)
    assert torch.allclose(x.grad, want, rtol=1e-14, atol=0)
