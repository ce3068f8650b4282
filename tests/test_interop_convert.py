"""Checkpoint import: SpikingJelly 2.0 networks and the 2021 layout give the same outputs after conversion.

The oracle is SpikingJelly itself: each source network is built with SpikingJelly (random weights and
random BN running statistics, eval mode), run on a random input, saved, converted, and the sewforge
network must produce the same logits on the same input.
"""
import argparse
import warnings

import pytest
import torch
from torch import nn

pytest.importorskip("spikingjelly")
from spikingjelly.activation_based import functional, neuron  # noqa: E402
from spikingjelly.activation_based.model import sew_resnet, spiking_resnet  # noqa: E402

from sewforge.cli import main  # noqa: E402
from sewforge.interop import ConversionError, ConversionWarning, convert_state_dict, load_source  # noqa: E402
from sewforge.models import create_model  # noqa: E402

from random_nets import randomize  # noqa: E402




def _sj(factory, **kw) -> nn.Module:
    net = factory(step_mode="m", **kw)
    functional.set_step_mode(net, "m")
    return randomize(net)


@torch.no_grad()
def _sj_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(net)
    return net(x).mean(0)  # SpikingJelly applies fc per step; sewforge to the mean over T (the same, linear)


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.abs().max() > 0  # something fired all the way through
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("neuron_cls, cnf", [(neuron.ParametricLIFNode, "IAND"), (neuron.IFNode, "ADD")])
def test_spikingjelly_sew_resnet18(tmp_path, neuron_cls, cnf):
    sj = _sj(sew_resnet.sew_resnet18, cnf=cnf, spiking_neuron=neuron_cls, num_classes=10)
    path = tmp_path / "sj18.pth"
    torch.save(sj.state_dict(), path)
    x = torch.rand(2, 2, 3, 32, 32)
    converted = convert_state_dict(path, "sew_resnet18", g=cnf)
    assert converted.source.kind == "spikingjelly"
    assert converted.model_kwargs.get("neuron", "IF") == ("PLIF" if neuron_cls is neuron.ParametricLIFNode else "IF")
    with torch.no_grad():
        _same(_sj_logits(sj, x), converted.model.eval()(x))


def test_spikingjelly_bottleneck_iand_keeps_what_the_source_computed(tmp_path):
    sj = _sj(sew_resnet.sew_resnet50, cnf="IAND", spiking_neuron=neuron.IFNode, num_classes=10)
    path = tmp_path / "sj50.pth"
    torch.save(sj.state_dict(), path)
    x = torch.rand(1, 1, 3, 32, 32)
    with pytest.warns(ConversionWarning, match="RIAND"):
        converted = convert_state_dict(path, "sew_resnet50", g="IAND")
    assert converted.model_kwargs["g"] == "RIAND" and any("reversed" in n for n in converted.notes)
    ref = _sj_logits(sj, x)
    with torch.no_grad():
        _same(ref, converted.model.eval()(x))
        naive = create_model("sew_resnet50", g="IAND", num_classes=10)  # the paper's IAND: another network
        naive.load_state_dict(converted.model.state_dict())
        assert not torch.allclose(naive.eval()(x), ref, atol=1e-5)


def test_spikingjelly_spiking_resnet18_and_create_model_pretrained(tmp_path):
    sj = _sj(spiking_resnet.spiking_resnet18, spiking_neuron=neuron.IFNode, num_classes=7)
    path = tmp_path / "sr18.pth"
    torch.save({"net": sj.state_dict(), "epoch": 3}, path)
    x = torch.rand(2, 2, 3, 32, 32)
    model = create_model("spiking_resnet18", pretrained=str(path))
    with torch.no_grad():
        _same(_sj_logits(sj, x), model.eval()(x))


# ---------------------------------------------------------------------------------------------
# the 2021 code's layout
# ---------------------------------------------------------------------------------------------
def _plif():
    return neuron.ParametricLIFNode(init_tau=2.0, detach_reset=True, step_mode="m")


class _SeqToANN2021(nn.Module):
    """SpikingJelly's ``SeqToANNContainer`` as of May 2021: the layers under ``.module``, run on T*N."""

    def __init__(self, *layers):
        super().__init__()
        self.module = layers[0] if len(layers) == 1 else nn.Sequential(*layers)

    def forward(self, x):
        return self.module(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def _conv_bn_sn(cin, cout, k):
    return nn.Sequential(_SeqToANN2021(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)),
                         _plif())


class _SEWBlock2021(nn.Module):
    """The DVS SEW block of the 2021 code (``smodels.py``): ``conv`` = two conv-BN-PLIF, then connect_f."""

    def __init__(self, channels, connect_f):
        super().__init__()
        self.conv = nn.Sequential(_conv_bn_sn(channels, channels, 3), _conv_bn_sn(channels, channels, 3))
        self.connect_f = connect_f

    def forward(self, x):
        out = self.conv(x)
        if self.connect_f == "ADD":
            return out + x
        if self.connect_f == "AND":
            return out * x
        return x * (1.0 - out)  # IAND


class _SEW7B2021(nn.Module):
    """The 2021 code's 7B-Net: ``conv`` (1x1 stem, 7 x (SEW block, MaxPool k2), Flatten(2)) and ``out``."""

    def __init__(self, connect_f):
        super().__init__()
        mods = [_conv_bn_sn(2, 32, 1)]
        for _ in range(7):
            mods += [_SEWBlock2021(32, connect_f), _SeqToANN2021(nn.MaxPool2d(2, 2))]
        mods.append(nn.Flatten(2))
        self.conv = nn.Sequential(*mods)
        self.out = nn.Linear(32, 11)

    def forward(self, x):  # [T, N, 2, 128, 128]
        return self.out(self.conv(x).mean(0))


def _save_2021(path, model_state, **args):
    torch.save({"model": model_state, "optimizer": {}, "epoch": 191, "max_test_acc": 0.97,
                "args": argparse.Namespace(**args)}, path)


def test_2021_dvs_7b_net_with_its_namespace(tmp_path):
    torch.manual_seed(0)
    src = randomize(_SEW7B2021("IAND"))
    path = tmp_path / "checkpoint_max.pth"
    _save_2021(path, src.state_dict(), connect_f="IAND", T=4, lr=0.063, device="cuda:0")
    with pytest.raises(Exception):  # the file is not loadable with plain weights_only
        torch.load(path, weights_only=True)
    source = load_source(path)
    assert source.kind == "sew2021" and source.args["connect_f"] == "IAND"
    converted = convert_state_dict(source, "sew7b_gesture")
    assert converted.model_kwargs["g"] == "IAND" and converted.model_kwargs["neuron"] == "PLIF"
    x = torch.bernoulli(torch.full((3, 1, 2, 128, 128), 0.3))
    with torch.no_grad():
        functional.reset_net(src)
        _same(src(x), converted.model.eval()(x))


def test_2021_imagenet_layout_from_args_alone(tmp_path):
    """The ImageNet SEW ResNets of the 2021 code keep conv+BN in SeqToANNContainer (``conv1.module.0``)
    and the shortcut neuron in ``downsample.1``; for basic blocks with ADD they compute what
    SpikingJelly 2.0's sew_resnet18 computes, which is the oracle here."""
    sj = _sj(sew_resnet.sew_resnet18, cnf="ADD", spiking_neuron=neuron.IFNode, num_classes=5)
    rename = {}
    for key in sj.state_dict():
        new = key
        for i in (1, 2):
            new = new.replace(f".conv{i}.", f".conv{i}.module.0.").replace(f".bn{i}.", f".conv{i}.module.1.")
        new = new.replace("downsample.0.", "downsample.0.module.0.").replace("downsample.1.", "downsample.0.module.1.")
        rename[key] = new
    legacy = {"module." + rename[k]: v for k, v in sj.state_dict().items()}  # saved from DDP
    path = tmp_path / "checkpoint_299.pth"
    _save_2021(path, legacy, model="sew_resnet18", connect_f="ADD", T=4)
    converted = convert_state_dict(path)
    assert converted.model_name == "sew_resnet18" and converted.model_kwargs["T"] == 4
    x = torch.rand(2, 2, 3, 32, 32)
    with torch.no_grad():
        _same(_sj_logits(sj, x), converted.model.eval()(x))


# ---------------------------------------------------------------------------------------------
# the command line and bad input
# ---------------------------------------------------------------------------------------------
def test_cli_convert_writes_a_checkpoint_eval_can_load(tmp_path, capsys):
    from sewforge.train.checkpoint import load_checkpoint

    sj = _sj(sew_resnet.sew_resnet18, cnf="AND", spiking_neuron=neuron.IFNode, num_classes=4)
    src, dst = tmp_path / "sj.pth", tmp_path / "out" / "sew18.pt"
    torch.save(sj.state_dict(), src)
    assert main(["convert", str(src), str(dst), "--model", "sew_resnet18", "--g", "AND"]) == 0
    assert "wrote" in capsys.readouterr().out
    ckpt = load_checkpoint(dst)
    assert ckpt["recipe"]["model"]["name"] == "sew_resnet18" and ckpt["recipe"]["model"]["g"] == "AND"
    again = create_model("sew_resnet18", pretrained=str(dst))  # g and classes come from the file
    x = torch.rand(2, 1, 3, 32, 32)
    with torch.no_grad():
        _same(_sj_logits(sj, x), again.eval()(x))


def test_bad_inputs_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    dst = tmp_path / "dst.pt"
    junk = tmp_path / "notes.txt"
    junk.write_text("not a checkpoint")
    assert main(["convert", str(junk), str(dst), "--model", "sew_resnet18"]) == 2
    err = capsys.readouterr().err
    assert str(junk) in err and "expected" in err and len(err.strip().splitlines()) == 1

    sj = _sj(sew_resnet.sew_resnet18, cnf="ADD", spiking_neuron=neuron.IFNode, num_classes=10)
    src = tmp_path / "sj18.pth"
    torch.save(sj.state_dict(), src)
    assert main(["convert", str(src), str(dst), "--model", "sew_resnet34"]) == 2  # another architecture
    err = capsys.readouterr().err
    assert "layer1.2.conv1.weight (64, 64, 3, 3) has no source tensor" in err and len(err.strip().splitlines()) == 1
    assert not dst.exists() and list(tmp_path.glob(".*tmp")) == []

    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    torch.save({"model": sj.state_dict(), "args": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ConversionError, match="refused"):
        load_source(tmp_path / "evil.pth")
    assert "ran code" not in capsys.readouterr().out


def test_shape_mismatches_and_surplus_are_listed_together(tmp_path):
    sj = _sj(sew_resnet.sew_resnet18, cnf="ADD", spiking_neuron=neuron.IFNode, num_classes=10)
    state = sj.state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["extra.head.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConversionError) as info:
            convert_state_dict(tmp_path / "bad.pth", "sew_resnet18")
    msg = str(info.value)
    assert "layer1.0.conv1.weight: source shape (64, 64, 1, 1)" in msg and "'extra.head.weight'" in msg
    assert "2 problems" in msg
