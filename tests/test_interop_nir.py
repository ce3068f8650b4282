"""NIR export: the graph, written and read back, runs step by step to the same spikes and logits.

The oracle is the sewforge network itself (its own layers, un-fused so that hooks see every
neuron's spikes); the NIR graph is run by an interpreter of the NIR node definitions after a round
trip through ``nir.write`` / ``nir.read``. Both run in float64 and the graph is exported in float64,
so that folding BN into the convolution cannot move a potential across a threshold.
"""
import numpy as np
import pytest
import torch
from torch import nn

nir = pytest.importorskip("nir")

from sewforge.blocks import unfused  # noqa: E402
from sewforge.cli import main  # noqa: E402
from sewforge.interop import NIRExportError, run_nir, to_nir, write_nir  # noqa: E402
from sewforge.models import create_model  # noqa: E402
from sewforge.neurons import BaseNeuron  # noqa: E402

from random_nets import randomize  # noqa: E402


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomize(model, seed).double()


def _check(model: nn.Module, x: torch.Tensor, tmp_path, min_nodes: int) -> dict:
    names = {id(m): n for n, m in model.named_modules()}
    spikes = {}

    def hook(module, args, out):
        spikes[names[id(module)]] = out.detach()

    neurons = [m for m in model.modules() if isinstance(m, BaseNeuron)]
    handles = [m.register_forward_hook(hook) for m in neurons]
    with torch.no_grad(), unfused(model):
        logits = model(x)
    for h in handles:
        h.remove()
    graph = to_nir(model, tuple(x.shape[-3:]), dtype=np.float64)
    path = write_nir(graph, tmp_path / "net.nir")
    back = nir.read(path)
    assert len(back.nodes) >= min_nodes
    out, records = run_nir(back, x, record=True)
    assert len(spikes) == len(neurons) > 0
    for name, s in spikes.items():  # every neuron, every step, every element
        assert name in records, name
        assert torch.equal(records[name], s), f"{name}: {(records[name] != s).sum()} spikes differ"
    assert logits.abs().max() > 0
    torch.testing.assert_close(out.mean(0), logits, rtol=0, atol=1e-12)
    return dict(back.nodes)


@pytest.mark.parametrize("g", ["ADD", "AND", "IAND"])
def test_7b_net_round_trip(tmp_path, g):
    model = _randomize(create_model("sew7b_gesture", g=g, T=2))
    x = torch.bernoulli(torch.full((2, 1, 2, 128, 128), 0.3, dtype=torch.float64))
    nodes = _check(model, x, tmp_path, 40)
    kinds = {type(n).__name__ for n in nodes.values()}
    assert {"Conv2d", "LIF", "SumPool2d", "Threshold", "Flatten", "Affine"} <= kinds
    if g == "ADD":  # ADD blocks make spike counts up to 8: max pooling over them is exported level by level
        assert "layers.16.ge2" in nodes and "Scale" not in kinds
    if g == "IAND":
        assert "Scale" in kinds and nodes["layers.3.iand"].threshold.flat[0] == 0.5
    lif = nodes["layers.2"]
    tau = 1.0 / torch.sigmoid(model.layers[2].w).item()
    assert lif.tau.flat[0] == pytest.approx(tau) and lif.v_threshold.flat[0] == np.nextafter(1.0, 0.0)


def test_sew_resnet18_round_trip(tmp_path):
    model = _randomize(create_model("sew_resnet18", num_classes=10, T=2))
    x = torch.rand(2, 2, 3, 32, 32, dtype=torch.float64)
    nodes = _check(model, x, tmp_path, 30)
    assert type(nodes["conv1"]).__name__ == "Conv2d" and type(nodes["sn1"]).__name__ == "IF"
    assert type(nodes["avgpool"]).__name__ == "AvgPool2d"


def test_refusals_are_one_line(tmp_path, capsys):
    soft = create_model("c8k3s1-BN-IF(v_reset=None)-FC4", input_shape=(2, 8, 8), T=2).eval()
    with pytest.raises(NIRExportError, match="soft reset"):
        to_nir(soft)
    pool = create_model("c8k3s1-MPk2s2-BN-IF-FC4", input_shape=(2, 8, 8), T=2).eval()
    with pytest.raises(NIRExportError, match="SumPool2d"):
        to_nir(pool)
    with pytest.raises(NIRExportError, match="eval"):
        to_nir(create_model("c8k3s1-BN-IF-FC4", input_shape=(2, 8, 8), T=2))
    dst = tmp_path / "soft.nir"
    assert main(["export", "c8k3s1-BN-IF(v_reset=None)-FC4", str(dst)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not dst.exists()


def test_cli_export_of_a_zoo_model(tmp_path, capsys):
    dst = tmp_path / "gesture.nir"
    assert main(["export", "sew7b_gesture", str(dst), "--g", "AND"]) == 0
    assert "NIR nodes" in capsys.readouterr().out
    graph = nir.read(dst)
    assert graph.metadata["producer"] == "sewforge" and "layers.3.and" in graph.nodes
