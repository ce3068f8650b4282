"""The degradation study (sewforge analyze degradation) through the trainer, and the analyses of a
trained checkpoint, on a tiny budget."""
from __future__ import annotations

import csv

import pytest

from sewforge.analysis import AnalysisError, degradation_spec
from sewforge.cli import main
from sewforge.models import create_model

TINY = ["--depths", "1", "2", "--epochs", "1", "--T", "2", "--batch", "8", "--num-train", "16", "--num-test", "8",
        "--size", "16", "--width", "4", "--device", "cpu"]



def _read(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("family, block", [("spiking", "SpikingResNet"), ("sew", "SEW"), ("plain", "Plain")])
def test_degradation_specs_build_with_the_asked_depth(family, block):
    spec = degradation_spec(family, 3, width=4)
    model = create_model(spec, input_shape=(2, 16, 16), T=2)
    assert len(model.blocks()) == 3
    assert all(type(b).__name__.startswith(block) for b in model.blocks())
    with pytest.raises(AnalysisError, match="depth"):
        degradation_spec(family, 0)


def test_degradation_trains_every_depth_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "deg"
    assert main(["analyze", "degradation", *TINY, "--out", str(out)]) == 0
    rows = _read(out / "degradation.csv")
    assert [(r["family"], int(r["depth"])) for r in rows] == [("spiking", 1), ("spiking", 2), ("sew", 1), ("sew", 2)]
    for r in rows:
        assert float(r["train_loss"]) > 0 and int(r["epochs"]) == 1
        assert (out / "runs" / f"{r['family']}-{r['depth']}-seed2020" / "summary.csv").exists()
    # Table 2's Spiking ResNets were trained with zero init, the SEW ResNets without
    assert {r["family"]: r["zero_init"] for r in rows} == {"spiking": "1", "sew": "0"}
    assert (out / "degradation.png").read_bytes()[:4] == b"\x89PNG"
    first = capsys.readouterr().out
    assert "final training loss by depth" in first

    # a second call with the same recipe reuses the finished runs
    assert main(["analyze", "degradation", *TINY, "--out", str(out)]) == 0
    assert sum(line.startswith("training ") for line in first.splitlines()) == 4
    assert capsys.readouterr().out.count("reusing") == 4
    assert _read(out / "degradation.csv") == rows

    # another recipe in the same folder is refused unless asked to overwrite
    changed = [*TINY, "--lr", "0.05", "--families", "sew", "--depths", "1"]
    assert main(["analyze", "degradation", *changed, "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["analyze", "degradation", *changed, "--overwrite", "--seeds", "2020", "7", "--out", str(out)]) == 0
    assert [(r["family"], r["seed"]) for r in _read(out / "degradation.csv")] == [("sew", "2020"), ("sew", "7")]

    # the analyses read a trained run back from its checkpoint
    ckpt = out / "runs" / "spiking-2-seed2020" / "last.pt"
    assert main(["analyze", "rates", "--checkpoint", str(ckpt), "--batch", "4", "--out", str(tmp_path / "r")]) == 0
    rates = _read(tmp_path / "r" / "rates.csv")
    assert len(rates) == 2 and all(r["rate_a"] == r["rate_o"] for r in rates)
    sew = out / "runs" / "sew-2-seed2020"  # a run folder stands for its last.pt
    assert main(["analyze", "grads", "--checkpoint", str(ckpt), str(sew), "--batch", "4",
                 "--out", str(tmp_path / "g")]) == 0
    grads = _read(tmp_path / "g" / "grads.csv")
    assert [(r["model"], r["g"]) for r in grads] == [("spiking-2-seed2020/last.pt", "")] * 2 + \
        [("sew-2-seed2020", "ADD")] * 2
    assert main(["analyze", "rates", "--checkpoint", str(ckpt), "--g", "AND", "--out", str(tmp_path / "x")]) == 2
    assert "--g" in capsys.readouterr().err
