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


def test_refusals_are_one_line():
    soft = create_model("c8k3s1-BN-IF(v_reset=None)-FC4", input_shape=(2, 8, 8), T=2).eval()
    with pytest.raises(NIRExportError, match="soft reset"):
        to_nir(soft)
    pool = create_model("c8k3s1-MPk2s2-BN-IF-FC4", input_shape=(2, 8, 8), T=2).eval()
    with pytest.raises(NIRExportError, match="SumPool2d"):
        to_nir(pool)
    with pytest.raises(NIRExportError, match="eval"):
        to_nir(create_model("c8k3s1-BN-IF-FC4", input_shape=(2, 8, 8), T=2))
    # the command's one-line refusal (exit code 2, no file) is checked with a zoo model below


def test_cli_export_of_a_zoo_model(tmp_path, capsys):
    dst = tmp_path / "gesture.nir"
    assert main(["export", "sew7b_gesture", str(dst), "--g", "AND"]) == 0
    assert "NIR nodes" in capsys.readouterr().out
    graph = nir.read(dst)
    assert graph.metadata["producer"] == "sewforge" and "layers.3.and" in graph.nodes


# -- the step-function neurons: LTLIF, ChannelLIF (NIR LIF) and CUBALIF (NIR LI + LIF) ------------------
def _step_neuron_net(neuron: str, first: dict, seed: int = 0) -> nn.Module:
    """``c8k3s1-BN-<neuron>-{SEW Block (c8)}*1-MPk2s2-FC4`` on 2x16x16, T=4, random BN and random
    learnable neuron parameters (per channel where the neuron has them), except the first neuron's,
    set to ``first``: powers of two, so that the exported time constants can be checked exactly."""
    model = create_model(f"c8k3s1-BN-{neuron}-{{SEW Block (c8)}}*1-MPk2s2-FC4", input_shape=(2, 16, 16), T=4)
    model = _randomize(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # larger inputs: every neuron fires within T = 4
                m.weight.mul_(4.0)
            for n, (lo, hi) in {"k": (0.1, 0.9), "theta": (0.5, 2.0), "syn": (0.1, 0.9)}.items():
                p = getattr(m, n, None)
                if isinstance(p, nn.Parameter):
                    p.copy_(lo + (hi - lo) * torch.rand(p.shape, generator=gen, dtype=p.dtype))
        for n, v in first.items():
            getattr(model.layers[2], n).copy_(torch.as_tensor(v, dtype=torch.float64))
    return model


def _spikes_vary(model: nn.Module, x: torch.Tensor) -> None:
    """Every neuron fires somewhere and is silent somewhere (else equal spikes would prove little)."""
    rates = {}
    hooks = [m.register_forward_hook(lambda m, a, out, n=n: rates.__setitem__(n, out.mean().item()))
             for n, m in model.named_modules() if isinstance(m, BaseNeuron)]
    with torch.no_grad(), unfused(model):
        model(x)
    for h in hooks:
        h.remove()
    assert rates and all(0 < r < 1 for r in rates.values()), rates


_THETA = np.nextafter(1.0, 0.0)


def test_channel_lif_round_trip(tmp_path):
    k, theta = [0.5, 0.25, 0.125, 1.0] * 2, [2.0, 0.5, 0.25, 4.0] * 2
    model = _step_neuron_net("ChannelLIF", {"k": k, "theta": theta})
    x = torch.bernoulli(torch.full((4, 2, 2, 16, 16), 0.3, dtype=torch.float64))
    _spikes_vary(model, x)
    nodes = _check(model, x, tmp_path, 10)
    lif = nodes["layers.2"]
    assert type(lif).__name__ == "LIF" and lif.tau.shape == lif.r.shape == (8, 16, 16)
    for c in range(8):  # tau = 1/k, r = 1/theta per channel, over every position of the channel
        assert (lif.tau[c] == [2.0, 4.0, 8.0, 1.0][c % 4]).all() and (lif.r[c] == [0.5, 2.0, 4.0, 0.25][c % 4]).all()
    assert (lif.v_threshold == _THETA).all() and (lif.v_leak == 0).all() and (lif.v_reset == 0).all()
    sn = model.layers[3].sn1  # a random one, per channel
    want = 1.0 / sn.k.detach().numpy()
    np.testing.assert_allclose(nodes["layers.3.sn1"].tau[:, 3, 5], want, rtol=1e-15)
    np.testing.assert_allclose(nodes["layers.3.sn1"].r[:, 0, 0], 1.0 / sn.theta.detach().numpy(), rtol=1e-15)


def test_ltlif_round_trip(tmp_path):
    model = _step_neuron_net("LTLIF", {"k": 0.25, "theta": 0.5}, seed=1)
    x = torch.bernoulli(torch.full((4, 2, 2, 16, 16), 0.3, dtype=torch.float64))
    _spikes_vary(model, x)
    nodes = _check(model, x, tmp_path, 10)
    lif = nodes["layers.2"]
    assert type(lif).__name__ == "LIF" and (lif.tau == 4.0).all() and (lif.r == 2.0).all()
    assert (lif.v_threshold == _THETA).all()
    sn = model.layers[3].sn2
    assert nodes["layers.3.sn2"].tau.flat[0] == pytest.approx(1.0 / sn.k.item(), rel=1e-15)
    assert nodes["layers.3.sn2"].r.flat[0] == pytest.approx(1.0 / sn.theta.item(), rel=1e-15)


def test_cubalif_round_trip(tmp_path):
    model = _step_neuron_net("CUBALIF(k=0.25,v_reset=-0.25)", {"syn": 0.75}, seed=2)
    x = torch.bernoulli(torch.full((4, 2, 2, 16, 16), 0.3, dtype=torch.float64))
    _spikes_vary(model, x)
    nodes = _check(model, x, tmp_path, 10)
    # i' = syn i + x: an LI with tau = 1/(1 - syn) = 4 and r = tau; the membrane a LIF with tau = 1/k = 4
    current, membrane = nodes["layers.2.current"], nodes["layers.2"]
    assert type(current).__name__ == "LI" and type(membrane).__name__ == "LIF" and current.tau.shape == (8, 16, 16)
    assert (current.tau == 4.0).all() and (current.r == 4.0).all() and (current.v_leak == 0.0).all()
    assert (membrane.tau == 4.0).all() and (membrane.r == 1.0).all()
    assert (membrane.v_leak == -0.25).all() and (membrane.v_reset == -0.25).all()
    syn = model.layers[3].sn1.syn.item()
    assert nodes["layers.3.sn1.current"].tau.flat[0] == pytest.approx(1.0 / (1.0 - syn), rel=1e-15)


def test_run_nir_steps_a_cubalif_node_as_nirs_forward_euler_reference():
    """A CubaLIF node written by another tool: current and membrane both advance from the previous
    step's values (hand-computed: tau_syn = tau_mem = 2, w_in = r = 1, threshold 0.6)."""
    cuba = nir.CubaLIF(tau_syn=np.full(1, 2.0), tau_mem=np.full(1, 2.0), r=np.ones(1), v_leak=np.zeros(1),
                       v_threshold=np.full(1, 0.6), v_reset=np.zeros(1), w_in=np.ones(1))
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])), "cuba": cuba,
                                "output": nir.Output(output_type=np.array([1]))},
                         edges=[("input", "cuba"), ("cuba", "output")])
    x = torch.ones(4, 1, 1, dtype=torch.float64)
    out, records = run_nir(graph, x, record=True)
    # i: 0 -> 0.5 -> 0.75 -> 0.875; v uses the previous i: 0 -> 0.25 -> 0.5 -> 0.6875 (fires, resets)
    assert records["cuba"].flatten().tolist() == [0.0, 0.0, 0.0, 1.0]


def test_step_neuron_refusals(tmp_path, capsys):
    from sewforge.neurons import Param, StepNeuron

    def net(neuron):
        return create_model(f"c8k3s1-BN-{neuron}-FC4", input_shape=(2, 8, 8), T=2).eval()

    exportable = "exportable: IF (NIR IF), LIF, PLIF, LTLIF, ChannelLIF (NIR LIF), CUBALIF (NIR LI + LIF)"
    for neuron, why in [("ALIF", "its threshold adapts with the previous spike"),
                        ("Izhikevich", "its potential is quadratic")]:
        with pytest.raises(NIRExportError) as err:
            to_nir(net(neuron))
        msg = str(err.value)
        assert f"layers.2: neuron {neuron}Node has no NIR form: {why}" in msg and exportable in msg, msg
        assert "\n" not in msg

    class GainLIF(StepNeuron):  # an equation of its own, even if NIR could write it: not guessed
        params = {"k": Param(0.5), "gain": Param(2.0)}

        @staticmethod
        def step(v, x, p):
            return v + (p.gain * x - (v - p.v_rest)) * p.k

    model = net("IF")
    model.layers[2] = GainLIF()
    with pytest.raises(NIRExportError, match="GainLIF has no NIR form: its step function is not one NIR writes"):
        to_nir(model)
    with pytest.raises(NIRExportError, match="soft reset"):
        to_nir(net("ChannelLIF(v_reset=None)"))
    with pytest.raises(NIRExportError, match="syn=1 >= 1"):
        to_nir(net("CUBALIF(syn=1.0)"))
    with pytest.raises(NIRExportError, match="k <= 0"):
        to_nir(net("LTLIF(k=-0.5)"))
    dst = tmp_path / "alif.nir"
    assert main(["export", "sew7b_gesture", str(dst), "--neuron", "ALIF"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "previous spike" in err and not dst.exists()
