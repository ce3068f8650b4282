"""Energy report: synaptic operations counted by hand on a network where every input reaches a
known number of synapses (a 1x1 convolution: each non-zero input feeds exactly C_out of them)."""
import csv

import pytest
import torch

from sewforge.analysis.energy import energy_report, totals
from sewforge.cli import main
from sewforge.models import create_model


def test_sops_and_energy_by_hand():
    torch.manual_seed(0)
    model = create_model("c4k1s1-BN-IF-FC3", input_shape=(2, 4, 4), T=3).eval()
    x = torch.bernoulli(torch.full((3, 2, 2, 4, 4), 0.3))  # [T, B, C, H, W] spikes
    conv, fc = energy_report(model, x, e_mac=4.6, e_ac=0.5)
    per_sample_spikes = x.count_nonzero().item() / 2
    assert conv.kind == "Conv2d" and conv.dense_macs == 2 * 4 * 16 and conv.integer_input and conv.steps == 3
    assert conv.input_rate == pytest.approx(x.count_nonzero().item() / x.numel())
    assert conv.sops == pytest.approx(per_sample_spikes * 4)          # each spike reaches 4 output channels
    assert conv.energy_pj == pytest.approx(per_sample_spikes * 4 * 0.5)
    assert conv.ann_energy_pj == pytest.approx(128 * 4.6)
    # the readout runs once on the mean over T of the spikes: real values, so multiply-accumulates
    assert fc.kind == "Linear" and fc.dense_macs == 64 * 3 and fc.steps == 1 and not fc.integer_input
    assert fc.energy_pj == pytest.approx(64 * 3 * 4.6)
    tot = totals([conv, fc])
    assert tot["ann_energy_pj"] == pytest.approx((128 + 192) * 4.6)


def test_static_stem_runs_once():
    model = create_model("sew_resnet18", num_classes=4, T=2).eval()
    rows = energy_report(model, torch.rand(1, 3, 32, 32))
    assert rows[0].name == "conv1" and rows[0].steps == 1 and not rows[0].integer_input
    assert all(r.steps == 2 and r.integer_input for r in rows[1:-1])  # spikes and SEW ADD counts
    assert rows[-1].name == "fc" and rows[-1].steps == 1


def test_cli_writes_csv_and_png(tmp_path, capsys):
    out = tmp_path / "energy"
    spec = "c8k3s1-BN-PLIF-{SEW(c8)-MPk2s2}*2-FC5"
    assert main(["analyze", "energy", spec, "--input", "2x16x16", "--T", "2", "--e-ac", "0.1", "--out", str(out)]) == 0
    with open(out / "energy.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and (out / "energy.png").stat().st_size > 0
    assert "ratio" in capsys.readouterr().out
    assert main(["analyze", "energy", "--out", str(out)]) == 2
    assert "MODEL" in capsys.readouterr().err
