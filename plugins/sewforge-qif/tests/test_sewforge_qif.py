"""The plugin's neuron and surrogate pass sewforge's conformance checks, found by name."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # run the kernels on the CPU when there is no GPU

import torch  # noqa: E402

import sewforge  # noqa: E402
from sewforge import testing  # noqa: E402


def test_found_by_name_through_entry_points():
    assert "QIF" in sewforge.list_neurons() and "FastSigmoid" in sewforge.list_surrogates()
    entry = sewforge.NEURONS.entry("qif")
    assert entry.package == "sewforge-qif" and entry.version == "0.1.0"
    assert sewforge.SURROGATES.entry("FastSigmoid").package == "sewforge-qif"


def test_qif_kernels_match_the_reference():
    assert testing.check_neuron("QIF", a0=0.5, surrogates=("FastSigmoid", "ATan")) > 0


def test_fast_sigmoid_conforms():
    testing.check_surrogate("FastSigmoid", alpha=3.0)


def test_qif_in_a_fused_sew_block_step():
    n = sewforge.create_neuron("QIF", surrogate="FastSigmoid", backend="triton")
    x = torch.randn(4, 2, 3, requires_grad=True)
    s = (torch.rand(4, 2, 3) > 0.5).float()
    out = n(x, shortcut=s, g="IAND")
    out.sum().backward()
    assert out.shape == x.shape and torch.isfinite(x.grad).all()
