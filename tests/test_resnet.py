"""SEW ResNet and Spiking ResNet for images: layout, parameter counts, input forms, options.

The oracle for the layout is torchvision's own ResNets (parameter counts, state-dict names and
shapes, strides) and, for the initialisation, the Kaiming fan-out formula.
"""
import math
import re

import pytest
import torch
import torchvision
from torch import nn

import sewforge
import sewforge.models.resnet as resnet
from sewforge.blocks import SEWBottleneck, SpikingResNetBlock, unfused
from sewforge.models.resnet import build_resnet, resnet_spec
from sewforge.spec import SpecError, SpecNet

DEPTHS = [18, 34, 50, 101, 152]
TORCHVISION_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
NAMES = [f"{family}_resnet{d}" for family in ("sew", "spiking") for d in DEPTHS]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small_images(b=2, seed=0):
    return torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_all_image_resnets_are_registered_in_natural_order():
    image_resnets = [n for n in sewforge.MODELS.names("*_resnet*") if re.fullmatch(r"(sew|spiking)_resnet\d+", n)]
    assert image_resnets == NAMES
    for name in NAMES:
        entry = sewforge.MODELS.entry(name)
        assert entry.meta("params") == TORCHVISION_PARAMS[int(name.split("resnet")[1])]
        assert entry.meta("input_shape") == (3, 224, 224) and entry.description


def test_image_resnets_are_spec_networks_with_torchvision_names():
    with torch.device("meta"):
        model = sewforge.create_model("sew_resnet18")
    assert isinstance(model, SpecNet)
    assert model.layer_names()[:4] == ["conv1", "bn1", "sn1", "maxpool"]
    assert model.layer_names()[-2:] == ["avgpool", "fc"]
    assert model.layer_names()[4:-2] == [f"layer{s}.{i}" for s in (1, 2, 3, 4) for i in (0, 1)]
    assert model.get_submodule("layer2.0.downsample.0") is model.blocks()[2].downsample[0]


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_torchvision(name):
    depth = int(name.split("resnet")[1])
    with torch.device("meta"):
        model = sewforge.MODELS.get(name)()
        reference = getattr(torchvision.models, f"resnet{depth}")()
    assert count(model) == count(reference) == TORCHVISION_PARAMS[depth]
    # same names and shapes for every non-spiking tensor, so torchvision weights load into the convs and BNs
    ours = {k: v.shape for k, v in model.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.state_dict().items()}
    assert len(model.blocks()) == {18: 8, 34: 16, 50: 16, 101: 33, 152: 50}[depth]


def test_block_types_and_strides_follow_torchvision_v15():
    with torch.device("meta"):
        sew50 = resnet.sew_resnet50()
        spk18 = resnet.spiking_resnet18()
    assert all(type(b) is SEWBottleneck for b in sew50.blocks())
    assert all(type(b) is SpikingResNetBlock for b in spk18.blocks())
    assert [b.stride for b in sew50.blocks()] == [1, 1, 1, 2, 1, 1, 1, 2] + [1] * 5 + [2, 1, 1]
    assert sew50.layer2[0].conv2.stride == (2, 2) and sew50.layer2[0].conv1.stride == (1, 1)
    # SEW downsample shortcuts carry a neuron (Fig. 2b); Spiking ResNet ones do not (Fig. 2a)
    assert sew50.layer1[0].downsample_sn is not None
    assert isinstance(spk18.layer2[0].downsample, nn.Sequential) and spk18.layer2[0].downsample_sn is None
    assert spk18.conv1.kernel_size == (7, 7) and spk18.conv1.stride == (2, 2)
    assert (spk18.maxpool.kernel_size, spk18.maxpool.stride, spk18.maxpool.padding) == (3, 2, 1)


def test_defaults_and_none_arguments():
    model = resnet.sew_resnet18(num_classes=None, T=None, g=None, neuron=None, surrogate=None, zero_init=None,
                                v_threshold=None, fuse=None)
    assert (model.T, model.num_classes, model.input_shape) == (4, 1000, (3, 224, 224))
    neurons = [m for m in model.modules() if isinstance(m, sewforge.BaseNeuron)]
    assert neurons and all(type(n).__name__ == "IFNode" for n in neurons)
    assert all(n.v_threshold == 1.0 and n.surrogate == sewforge.create_surrogate("ATan") for n in neurons)
    assert all(b.g.name == "ADD" and b.fuse and not b.zero_init for b in model.blocks())
    assert model.fc.out_features == 1000


def test_options_reach_every_block_and_neuron():
    with torch.device("meta"):
        model = sewforge.MODELS.get("SEW_ResNet34")(num_classes=10, T=2, g="IAND", neuron="PLIF",
                                                   surrogate="Sigmoid", v_threshold=0.5, fuse=False)
    neurons = [m for m in model.modules() if isinstance(m, sewforge.BaseNeuron)]
    assert len(neurons) == 1 + 2 * 16 + 3  # stem, two per block, three downsample shortcuts
    assert all(type(n).__name__ == "PLIFNode" and n.v_threshold == 0.5 and n.surrogate.name == "Sigmoid"
               for n in neurons)
    assert all(b.g.name == "IAND" and not b.fuse for b in model.blocks())
    assert (model.T, model.num_classes, model.fc.out_features) == (2, 10, 10)
    assert count(model) == TORCHVISION_PARAMS[34] - 1000 * 513 + 10 * 513 + len(neurons)  # fc, one w per PLIF


def test_torchvision_initialisation():
    """Kaiming fan-out normal convolutions (std = sqrt(2 / fan_out)), BN weight 1 and bias 0."""
    torch.manual_seed(0)
    model = resnet.sew_resnet18(num_classes=10)
    for name in ("conv1", "layer3.0.conv1", "layer4.1.conv2"):
        w = model.get_submodule(name).weight
        fan_out = w.shape[0] * w.shape[2] * w.shape[3]
        assert w.std().item() == pytest.approx(math.sqrt(2.0 / fan_out), rel=0.05)
        assert abs(w.mean().item()) < 0.1 * math.sqrt(2.0 / fan_out)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((b.weight == 1).all() and (b.bias == 0).all() for b in bns)


def test_reset_classifier_and_features_and_head():
    torch.manual_seed(0)
    model = resnet.sew_resnet18(num_classes=10, T=2).eval()
    x = small_images()
    features = model.forward_features(x)
    assert features.shape == (2, 2, 512, 1, 1)
    with torch.no_grad():
        expected = model.fc(features.flatten(2).mean(0))  # FC of the mean over T of the pooled map
    torch.testing.assert_close(model.forward_head(features), expected)
    torch.testing.assert_close(model(x), expected)
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.fc.out_features == 3 and model.get_classifier() is model.fc
    assert "fc.weight" in model.state_dict() and model.state_dict()["fc.weight"].shape == (3, 512)
    assert model(x).shape == (2, 3)
    with pytest.raises(SpecError, match="positive integer"):
        model.reset_classifier(0)


def test_input_shape_sets_the_stem_channels():
    model = resnet.sew_resnet18(num_classes=10, input_shape=(1, 28, 28))
    assert model.input_shape == (1, 28, 28) and model.conv1.in_channels == 1
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert resnet.spiking_resnet18(in_channels=2).input_shape == (2, 224, 224)
    with pytest.raises(ValueError, match=r"input_shape must be \(C, H, W\)"):
        resnet.sew_resnet18(input_shape=(3, 224))
    with pytest.raises(ValueError, match="in_channels=3 contradicts input_shape"):
        resnet.sew_resnet18(in_channels=3, input_shape=(1, 28, 28))


def test_fuse_switch_on_the_model():
    model = resnet.sew_resnet18(fuse=False)
    assert not model.fuse and not any(b.fuse for b in model.blocks())
    model.fuse = True
    assert model.fuse and all(b.fuse for b in model.blocks())


def test_spiking_resnet_rejects_a_sew_function():
    with pytest.raises(ValueError, match="g='AND'.*applies to SEW blocks"):
        resnet.spiking_resnet18(g="AND")


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="T=0: the number of time steps must be a positive integer"):
        resnet.sew_resnet18(T=0)
    with pytest.raises(ValueError, match="num_classes"):
        resnet.sew_resnet18(num_classes=0)
    with pytest.raises(SpecError, match="unknown neuron"):
        resnet.sew_resnet18(neuron="PLF")
    with pytest.raises(ValueError, match="4 positive block counts"):
        resnet_spec("SEW", [2, 2, 2])
    with pytest.raises(KeyError, match="unknown block"):
        resnet_spec("SEWW", [1, 1, 1, 1])


def test_static_and_sequence_inputs_give_the_same_logits():
    torch.manual_seed(0)
    model = resnet.sew_resnet18(num_classes=7, T=3)
    x = small_images()
    sequence = x.unsqueeze(0).repeat(3, 1, 1, 1, 1)
    for training in (True, False):
        model.train(training)
        static_logits = model(x)
        assert static_logits.shape == (2, 7)
        torch.testing.assert_close(model(sequence), static_logits, rtol=1e-4, atol=1e-5)


def test_sequence_input_may_have_its_own_length():
    model = resnet.spiking_resnet18(num_classes=5, T=4).eval()
    assert model(torch.rand(2, 1, 3, 32, 32)).shape == (1, 5)


def test_input_errors():
    model = resnet.sew_resnet18(num_classes=3)
    with pytest.raises(ValueError, match=r"built for inputs \[T, B, 3, H, W\] or \[B, 3, H, W\], got \[2, 1, 32, 32\]"):
        model(torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got \[3, 32, 32\]"):
        model(torch.zeros(3, 32, 32))


def test_stem_runs_once_on_static_images():
    """The conv7x7-BN stem is not spiking: on a static image it runs once, not T times."""
    model = resnet.sew_resnet18(num_classes=3, T=4)
    calls = []
    model.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    model(small_images())
    assert calls == [torch.Size([2, 3, 32, 32])]


@pytest.mark.parametrize("g", ["ADD", "IAND", "AND"])
@pytest.mark.parametrize("block", ["SEW", "SEWBottleneck"])
def test_zero_init_survives_the_model_initialisation(g, block):
    model = build_resnet(resnet_spec(block, [1, 2, 1, 1], 10), g=g, neuron="LIF", zero_init=True)
    for b in model.blocks():
        assert b.zero_init and (b.last_bn.weight == 0).all()
        assert (b.last_bn.bias == (b.sn_last.firing_input() if g == "AND" else 0.0)).all()
        assert (b.bn1.weight == 1).all() and (b.bn1.bias == 0).all()


def test_zero_init_stage_without_downsample_is_identity():
    """SEW ResNet-18's layer1 has no downsample block: with zero-init it passes the stem spikes on."""
    model = resnet.sew_resnet18(num_classes=3, T=2, g="AND", zero_init=True)
    seen = {}
    model.maxpool.register_forward_hook(lambda m, i, o: seen.setdefault("stem", o))
    model.layer1[-1].register_forward_hook(lambda m, i, o: seen.setdefault("layer1", o))
    model(small_images())
    assert seen["stem"].shape == (4, 64, 8, 8)  # the folded pool sees T*B
    assert torch.equal(seen["layer1"], seen["stem"].unflatten(0, (2, 2)))


def test_firing_rates_of_a_and_o_per_block_with_hooks():
    """How the analysis tools read A^l and O^l: unfused blocks, hooks on sn_last and on the block."""
    model = resnet.sew_resnet18(num_classes=3, T=2)
    rates = []
    handles = []
    for block in model.blocks():
        handles.append(block.sn_last.register_forward_hook(lambda m, i, o: rates.append(("A", o.mean().item()))))
        handles.append(block.register_forward_hook(lambda m, i, o: rates.append(("O", o.mean().item()))))
    with unfused(model):
        unfused_logits = model(small_images())
    assert [k for k, _ in rates] == ["A", "O"] * 8
    assert all(0.0 <= r <= 1.0 for k, r in rates if k == "A")
    assert all(model_block.fuse for model_block in model.blocks())
    torch.testing.assert_close(model(small_images()), unfused_logits)
    for h in handles:
        h.remove()


def test_sew_resnet152_forward_and_backward_on_cpu():
    """A 152-layer SEW ResNet at T=4 builds and trains one step on a small input."""
    torch.manual_seed(0)
    model = resnet.sew_resnet152(num_classes=10)
    assert model.T == 4 and count(model) == TORCHVISION_PARAMS[152] - 1000 * 2049 + 10 * 2049
    logits = model(small_images(b=1))
    assert logits.shape == (1, 10) and torch.isfinite(logits).all()
    nn.functional.cross_entropy(logits, torch.tensor([3])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv1.weight.grad.abs().sum() > 0  # the gradient reaches the stem through 50 blocks
