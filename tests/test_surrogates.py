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


def test_spike_is_heaviside_forward_and_surrogate_backward():
    x = torch.tensor([-1.0, 0.0, 0.5], requires_grad=True)
    sg = sewforge.create_surrogate("ATan")
    s = spike(x, sg)
    assert s.tolist() == [0.0, 1.0, 1.0]
    s.sum().backward()
    assert torch.allclose(x.grad, sg.derivative(x.detach()))


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
    sg = sewforge.create_surrogate("ATan", alpha=2.1)
    spike(x, sg).sum().backward()
    assert torch.allclose(x.grad, sg.derivative(x.detach()), rtol=1e-14, atol=0)
