"""Firing rates and gradient amplitudes (sewforge analyze rates / grads) on small networks."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sewforge.analysis import (AnalysisError, Variant, build_model, firing_rates, gradient_amplitudes, random_spikes,
                               surrogate_factors)
from sewforge.analysis.common import make_surrogate
from sewforge.cli import main

SHAPE = (2, 8, 8)

SEW = "c8k3s1-BN-IF-{SEW(c8)}*4-FC4"
SPIKING = "c8k3s1-BN-IF-{SpikingResNet(c8)}*4-FC4"


def _model(spec: str, g=None, zero_init=False, seed=0, **kw):
    model = build_model(Variant(spec, g, zero_init), T=4, input_shape=SHAPE, seed=seed, **kw)
    return model.train()


def _spikes(p=0.5, seed=0, batch=2):
    return random_spikes(SHAPE, T=4, batch=batch, p=p, seed=seed)


# ---------------------------------------------------------------------------------------------
# firing rates
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("g, rate_a", [("ADD", 0.0), ("IAND", 0.0), ("AND", 1.0)])
def test_zero_init_blocks_are_identities(g, rate_a):
    """Section 3.3: zero init gives A = 0 (ADD, IAND) or A = 1 (AND), so O^l = S^l everywhere."""
    rows = firing_rates(_model(SEW, g, zero_init=True), _spikes())
    assert len(rows) == 4
    first_input = rows[0].rate_s
    assert 0 < first_input < 1
    for r in rows:
        assert r.rate_a == rate_a
        assert r.identity == 1.0
        assert r.rate_o == pytest.approx(first_input, abs=1e-12)


@settings(max_examples=8)
@given(p=st.floats(0.05, 0.95), seed=st.integers(0, 2**16), g=st.sampled_from(["ADD", "AND", "IAND"]))
def test_rates_follow_g(p, seed, g):
    """O = A + S (ADD) has mean rate_s + rate_a; AND and IAND can only remove spikes of S."""
    rows = firing_rates(_model(SEW, g, seed=seed), _spikes(p, seed))
    for r in rows:
        assert 0.0 <= r.rate_a <= 1.0
        if g == "ADD":
            assert r.rate_o == pytest.approx(r.rate_s + r.rate_a, rel=1e-9, abs=1e-12)
        else:
            assert r.rate_o <= r.rate_s + 1e-12
    for earlier, later in zip(rows, rows[1:]):
        assert later.rate_s == pytest.approx(earlier.rate_o, rel=1e-12)  # blocks are chained directly


def test_spiking_resnet_last_neuron_is_the_output():
    rows = firing_rates(_model(SPIKING), _spikes())
    assert all(r.rate_a == r.rate_o for r in rows)
    assert all(r.kind == "SpikingResNetBlock" for r in rows)


def test_rates_leave_blocks_fused():
    model = _model(SEW, "ADD")
    firing_rates(model, _spikes())
    assert all(b.fuse for b in model.blocks())


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------
def _labels():
    return torch.tensor([1, 3])


def _keep(seen, key, out):
    """A forward hook's body: keep ``out`` and its gradient (returns None: the output is unchanged)."""
    out.retain_grad()
    seen.setdefault(key, out)


def _without_blocks(model):
    """The same stem and classifier with the blocks taken out: what identity blocks amount to."""
    import copy

    from sewforge.spec import build

    stem = build("c8k3s1-BN-IF-FC4", SHAPE, T=4).train()
    kept = [m for m, k in zip(model.layers, model._kinds) if k != "block"]
    for mine, theirs in zip(stem.layers, kept):
        mine.load_state_dict(copy.deepcopy(theirs.state_dict()))
    return stem


def test_zero_init_sew_gradients_are_equal_for_every_g():
    """Eq. (11): identity SEW blocks pass dL/dO on unchanged, so dL/dS^l at every block equals the
    gradient at the stem's spikes of the same network with the blocks removed (measured here
    independently), whatever g is."""
    for g in ("ADD", "AND", "IAND"):
        model = _model(SEW, g, zero_init=True)
        rows = gradient_amplitudes(model, _spikes(), _labels())
        stem = _without_blocks(model)
        seen = {}
        stem.layers[2].register_forward_hook(lambda m, i, o: _keep(seen, "s", o))
        torch.nn.functional.cross_entropy(stem(_spikes()), _labels()).backward()
        want = float(seen["s"].grad.double().norm())
        assert want > 0
        assert [r.grad_s for r in rows] == pytest.approx([want] * 4, rel=1e-6)
        assert all(r.theory == "Eq11" for r in rows)


def test_no_prediction_where_the_branch_still_carries_gradient():
    """A block can pass S through by chance (A = 0 everywhere) while its branch still has weights:
    the gradient then also flows through the branch, and Eq. (11) does not apply."""
    model = _model(SEW, "IAND", seed=3)
    with torch.no_grad():
        for b in model.blocks():
            b.last_bn.bias.fill_(-100.0)  # the last neuron never fires: O = (1 - 0) * S = S
    rows = gradient_amplitudes(model, _spikes(), _labels())
    assert all(r.identity == 1.0 and not r.branch_constant for r in rows)
    assert all(r.theory == "" and math.isnan(r.predicted) for r in rows)


def test_surrogate_factors_are_the_papers():
    """sigma'(1 - V_th), sigma'(0 - V_th) for the three settings of Figures 6-8."""
    neuron = _model(SPIKING, v_threshold=1.0).blocks()[0].sn_last
    assert surrogate_factors(neuron) == pytest.approx((1.0, 1 / (1 + math.pi ** 2)))  # 1 and 0.092
    neuron = _model(SPIKING, v_threshold=0.5).blocks()[0].sn_last
    a, b = surrogate_factors(neuron)
    assert a == pytest.approx(b) and a == pytest.approx(0.288, abs=1e-3)
    neuron = _model(SPIKING, surrogate=make_surrogate("ATan", 3.0)).blocks()[0].sn_last
    assert surrogate_factors(neuron)[0] == pytest.approx(1.5)


def _spiking_grads(v_threshold, alpha):
    model = _model(SPIKING, zero_init=True, v_threshold=v_threshold, surrogate=make_surrogate("ATan", alpha))
    return gradient_amplitudes(model, _spikes(p=0.3), _labels())


def test_spiking_resnet_gradient_decays_when_sigma_prime_is_below_one():
    """V_th = 0.5, alpha = 2: sigma'(+-0.5) = 0.288 < 1 and the gradient shrinks at every block
    towards the input (Fig. 7); V_th = 1 (sigma'(0) = 1, sigma'(-1) = 0.092) still decays over the
    run, the silent elements' share vanishing (Fig. 6)."""
    rows = _spiking_grads(0.5, 2.0)
    assert all(r.theory == "S4" for r in rows)
    grads = [r.grad_s for r in rows] + [rows[-1].grad_o]
    assert all(shallow < 0.8 * deep for shallow, deep in zip(grads, grads[1:]))
    rows = _spiking_grads(1.0, 2.0)
    assert rows[0].grad_s < rows[-1].grad_o


def test_spiking_resnet_gradient_explodes_when_sigma_prime_is_above_one():
    """V_th = 1, alpha = 3: sigma'(0) = 1.5 > 1 and the gradient grows by about 1.5 per block
    towards the input (Fig. 8), once the first block has cut the silent elements' share
    (sigma'(-1) = 0.067)."""
    rows = _spiking_grads(1.0, 3.0)
    grads = [r.grad_s for r in rows]
    assert all(shallow > 1.3 * deep for shallow, deep in zip(grads, grads[1:]))


@pytest.mark.parametrize("v_threshold, alpha", [(1.0, 2.0), (0.5, 2.0), (1.0, 3.0)])
def test_appendix_a4_with_the_membrane_path_is_exact(v_threshold, alpha):
    """Through identity Spiking ResNet blocks only the last neuron acts on the gradient (S1-S2 with
    the path through the membrane potential). The oracle is SpikingJelly 2.0's IF neuron: dL/dO of
    the last block carried back through 4 - l of its neurons gives dL/dS^l, and the analysis'
    own prediction (predicted_membrane) agrees with it too."""
    from spikingjelly.activation_based import neuron as sjn, surrogate as sjs

    model = _model(SPIKING, zero_init=True, v_threshold=v_threshold, surrogate=make_surrogate("ATan", alpha))
    seen = {}
    model.blocks()[0].register_forward_pre_hook(lambda m, args: seen.setdefault("s", args[0].detach()))
    model.blocks()[-1].register_forward_hook(lambda m, i, o: _keep(seen, "o", o))
    rows = gradient_amplitudes(model, _spikes(p=0.3), _labels())
    grad_out = seen["o"].grad
    assert grad_out is not None and torch.equal(seen["o"].detach(), seen["s"])  # identity blocks
    for l, r in enumerate(rows):
        s = seen["s"].double().requires_grad_()
        y = s
        for _ in range(len(rows) - l):
            y = sjn.IFNode(v_threshold=v_threshold, v_reset=0.0, detach_reset=True,
                           surrogate_function=sjs.ATan(alpha=alpha), step_mode="m")(y)
        (want,) = torch.autograd.grad(y, s, grad_out.double())
        assert r.grad_s == pytest.approx(float(want.norm()), rel=1e-5)
        assert r.predicted_membrane == pytest.approx(float(want.norm()), rel=1e-5)
        assert math.isfinite(r.predicted) and math.isfinite(r.predicted_as_printed)


def test_and_without_zero_init_falls_silent():
    """Section 4.1's silence problem: AND can only remove spikes, so the output rate never rises."""
    model = build_model(Variant("c8k3s1-BN-IF-{SEW(c8)}*8-FC4", "AND"), T=4, input_shape=SHAPE, seed=1).train()
    rows = firing_rates(model, _spikes(p=0.5, seed=1))
    outs = [r.rate_o for r in rows]
    assert all(b <= a + 1e-12 for a, b in zip(outs, outs[1:]))
    assert outs[-1] < 0.5 * rows[0].rate_s


def test_gradient_arguments_are_checked():
    model = _model(SEW, "ADD")
    with pytest.raises(AnalysisError, match="loss"):
        gradient_amplitudes(model, _spikes(), _labels(), loss="mse")
    with pytest.raises(AnalysisError, match="target"):
        gradient_amplitudes(model, _spikes(), None, loss="ce")
    rows = gradient_amplitudes(model, _spikes(), None, loss="sum")
    assert all(r.grad_s > 0 for r in rows)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_rates_writes_csv_and_png(tmp_path, capsys):
    code = main(["analyze", "rates", SEW, SPIKING, "--input", "2x8x8", "--T", "2", "--batch", "2",
                 "--g", "ADD", "AND", "--zero-init", "both", "--out", str(tmp_path)])
    assert code == 0
    rows = _read(tmp_path / "rates.csv")
    assert len(rows) == (2 * 2 + 2) * 4  # (2 g x 2 inits + Spiking ResNet x 2 inits) x 4 blocks
    zero_and = [r for r in rows if r["g"] == "AND" and r["zero_init"] == "1"]
    assert {float(r["rate_a"]) for r in zero_and} == {1.0}
    assert _is_png(tmp_path / "rates.png")
    assert "wrote" in capsys.readouterr().out


def test_cli_rates_on_the_synthetic_dataset(tmp_path):
    code = main(["analyze", "rates", "c8k3s1-BN-IF-MPk2s2-{SEW(c8)}*2-FC4", "--data", "synthetic",
                 "--data-arg", "num_train=8", "--data-arg", "size=16", "--T", "2", "--batch", "3",
                 "--out", str(tmp_path)])
    assert code == 0
    rows = _read(tmp_path / "rates.csv")
    assert [int(r["block"]) for r in rows] == [0, 1]


def test_cli_grads_writes_csv_png_and_theory(tmp_path, capsys):
    code = main(["analyze", "grads", SEW, SPIKING, "--input", "2x8x8", "--T", "2", "--batch", "2",
                 "--g", "ADD", "IAND", "--v-threshold", "0.5", "--alpha", "2", "--theory", "--out", str(tmp_path)])
    assert code == 0
    rows = _read(tmp_path / "grads.csv")
    assert len(rows) == (2 * 2 + 2) * 4
    assert {r["v_threshold"] for r in rows} == {"0.5"}
    zero_sew = [float(r["grad_s"]) for r in rows if r["g"] == "ADD" and r["zero_init"] == "1"]
    assert max(zero_sew) == pytest.approx(min(zero_sew), rel=1e-5)
    assert _is_png(tmp_path / "grads.png")
    out = capsys.readouterr().out
    assert "with membrane path 0%" in out


def test_the_python_api_runs_an_analysis_as_the_command_does(tmp_path, capsys):
    """``sewforge analyze grads ...`` is ``analyze_grads(StudyOptions(...))``: the same files and lines."""
    from sewforge.analysis import StudyOptions, analyze_grads

    heard = []
    options = StudyOptions(models=[SEW], input_shape=SHAPE, T=2, batch=2, gs=["ADD"], zero_init="on")
    report = analyze_grads(options, out=tmp_path / "api", theory=True, log=heard.append)
    assert report.csv == tmp_path / "api" / "grads.csv" and _is_png(report.png)
    assert len(report.rows) == 4 and heard[0].startswith("grads: 1 networks on random Bernoulli(0.5) spikes")
    assert any(line.startswith("theory, on blocks inside exact identity runs") for line in report.lines)
    code = main(["analyze", "grads", SEW, "--input", "2x8x8", "--T", "2", "--batch", "2", "--g", "ADD",
                 "--zero-init", "on", "--theory", "--out", str(tmp_path / "cli")])
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == heard[0] and printed[len(heard):-1] == report.lines
    assert (tmp_path / "cli" / "grads.csv").read_text() == report.csv.read_text()


@pytest.mark.parametrize("argv, message", [
    (["rates", SEW, "--input", "3x64"], "CxHxW"),
    (["rates", SEW, "--input", "2x8x8", "--g", "XOR"], "XOR"),
    (["rates", SEW, "--input", "2x8x8", "--T", "0"], "positive integer"),
    (["grads", SEW, "--input", "2x8x8", "--alpha", "-1"], "> 0"),
    (["grads", SEW, "--input", "2x8x8", "--zero-init", "sometimes"], "invalid choice"),
    (["rates", SEW, "--input", "2x8x8", "--p", "1.5"], "probability"),
    (["degradation", "--families", "resnet"], "invalid choice"),
])
def test_cli_rejects_bad_arguments(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["analyze", *argv, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "rates.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["rates", "sew_resnet1888", "--input", "3x32x32"], "sew_resnet18"),
    (["rates", SEW], "--input"),
    (["rates"], "MODEL"),
    (["grads", "sew7b_gesture", "--input", "2x32x32"], "smaller than the kernel"),
    (["rates", SEW, "--checkpoint", "nowhere.pt", "--input", "2x8x8"], "not both"),
    (["rates", "--checkpoint", "nowhere.pt"], "nowhere.pt"),
    (["rates", SEW, "--data", "synthetic", "--input", "2x8x8", "--data-arg", "size=16"], "does not match"),
])
def test_cli_reports_unusable_input_with_exit_2(argv, message, capsys, tmp_path):
    code = main(["analyze", *argv, "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert "sewforge analyze" in err and "error:" in err
    assert message in err
    assert not any(tmp_path.iterdir())
