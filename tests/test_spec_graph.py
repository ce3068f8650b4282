"""Spec graphs and their lowering: shapes, parameters, MACs, overrides, forward and backward."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sewforge.neurons import IFNode, LIFNode, PLIFNode
from sewforge.spec import SpecError, SpecNet, build, infer, parse
from sewforge.layers import SharedDropout

SMALL = "c8k3s1-BN-PLIF-MPk2s2-SEW(c16s2)-GAP-FC5"


def test_shapes_parameters_and_macs_per_node():
    graph = infer(SMALL, (2, 16, 16))
    assert [n.token for n in graph] == ["c8k3s1", "BN", "PLIF", "MPk2s2", "SEW(c16s2)", "GAP", "FC5"]
    assert [n.out_shape for n in graph] == [(8, 16, 16), (8, 16, 16), (8, 16, 16), (8, 8, 8), (16, 4, 4),
                                            (16, 1, 1), (5,)]
    assert [n.kind for n in graph] == ["conv", "bn", "neuron", "pool", "block", "global_pool", "fc"]
    # conv without bias (a BN follows); SEW(c16s2) from 8 channels: two conv3x3-BN-SN and a
    # conv1x1-BN-SN shortcut; FC with bias
    sew = (8 * 16 * 9 + 32 + 1) + (16 * 16 * 9 + 32 + 1) + (8 * 16 + 32 + 1)
    assert [n.params for n in graph] == [2 * 8 * 9, 16, 1, 0, sew, 0, 16 * 5 + 5]
    assert graph.total_params == sum(p.numel() for p in build(SMALL, (2, 16, 16)).parameters())
    sew_macs = 16 * 4 * 4 * (8 * 9) + 16 * 4 * 4 * (16 * 9) + 16 * 4 * 4 * 8
    assert [n.macs for n in graph] == [8 * 16 * 16 * 2 * 9, 0, 0, 0, sew_macs, 0, 16 * 5]
    assert graph.total_macs == 8 * 16 * 16 * 2 * 9 + sew_macs + 16 * 5
    assert graph.to_dict()["total_params"] == graph.total_params


def test_infer_allocates_nothing_and_matches_build():
    big = "c512k3s1-BN-IF-{SEW(c512)}*4-FC100000"  # ~100M parameters: meta only
    graph = infer(big, (3, 64, 64))
    assert graph.total_params > 10**8
    net = build(SMALL, (2, 16, 16))
    assert net.graph == infer(SMALL, (2, 16, 16))


def test_conv_bias_only_without_a_following_bn():
    net = build("c4k3-BN-c4k3-PLIF-c4k3(bias=False)-c4k3(bias=True)-BN-FC2", (2, 4, 4))
    convs = [m.module for m in net.layers if isinstance(getattr(m, "module", None), nn.Conv2d)]
    assert [c.bias is not None for c in convs] == [False, True, False, True]


def test_forward_backward_on_cpu():
    torch.manual_seed(0)
    net = build(SMALL, (2, 16, 16), T=3)
    x = (torch.rand(3, 2, 2, 16, 16) > 0.7).float()
    out = net(x)
    assert out.shape == (2, 5)
    out.square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.layers[2].w.grad.abs() > 0  # PLIF's learnable time constant is trained


def test_static_input_equals_repeated_sequence():
    torch.manual_seed(1)
    net = build("c8k3-BN-IF-{SEW-MPk2s2}*2-FC4", (3, 8, 8), T=4)
    img = torch.randn(2, 3, 8, 8)
    for mode in (True, False):
        net.train(mode)
        torch.testing.assert_close(net(img), net(img.unsqueeze(0).repeat(4, 1, 1, 1, 1)))


def test_readouts():
    torch.manual_seed(2)
    x = torch.rand(5, 2, 2, 8, 8)
    mean = build("c4k3-BN-PLIF-FC3", (2, 8, 8), readout="mean")
    total = build("c4k3-BN-PLIF-FC3", (2, 8, 8), readout="sum")
    total.load_state_dict(mean.state_dict())
    torch.testing.assert_close(total(x), 5 * mean(x))
    # the logits are FC of the mean over T, i.e. the mean over T of the per-step FC outputs
    h = mean.layers[2](mean.layers[1](mean.layers[0](x)))
    torch.testing.assert_close(mean(x), mean.layers[3](h).mean(0))
    # a spec ending in a voting layer: logits = mean over T of the last layer's output
    vote = build("c4k3-BN-PLIF-FC20-PLIF-APk10s10", (2, 8, 8))
    assert vote.num_classes == 2
    y = x
    for layer in vote.layers:
        y = layer(y)
    torch.testing.assert_close(vote(x), y.mean(0))
    with pytest.raises(SpecError, match="readout"):
        build("FC3", (2, 8, 8), readout="max")


def test_neuron_inheritance_and_overrides():
    net = build("c4k3-BN-LIF(tau=3)-SEW-PLIF-SEW(neuron=IF)-SEW", (2, 8, 8))
    b1, b2, b3 = net.blocks()
    assert isinstance(b1.sn1, LIFNode) and b1.sn1.tau == 3
    assert isinstance(b2.sn1, IFNode)
    assert isinstance(b3.sn2, PLIFNode)
    assert isinstance(build("SEW-FC2", (2, 4, 4)).blocks()[0].sn1, IFNode)  # no neuron before: IF

    net = build("c4k3-BN-LIF(tau=3)-SEW-SEW(neuron=PLIF)", (2, 8, 8), neuron="IF", surrogate="Sigmoid",
                v_threshold=0.5, g="IAND", zero_init=True)
    neurons = [m for m in net.modules() if isinstance(m, (IFNode, LIFNode, PLIFNode))]
    assert neurons and all(type(m) is IFNode for m in neurons)
    assert all(m.surrogate.name == "Sigmoid" and m.v_threshold == 0.5 for m in neurons)
    assert all(b.g.name == "IAND" and b.zero_init for b in net.blocks())
    assert all(torch.all(b.last_bn.weight == 0) for b in net.blocks())
    assert net.to_spec() == ("c4k3s1-BN-IF(surrogate=Sigmoid, v_threshold=0.5)-SEW(g=IAND, zero_init=True)-"
                             "SEW(g=IAND, neuron=IF(surrogate=Sigmoid, v_threshold=0.5), zero_init=True)")
    again = build(net.to_spec(), (2, 8, 8))
    assert repr(again) == repr(net)


def test_override_errors():
    with pytest.raises(SpecError, match="applies to SEW blocks") as info:
        build("c4k3-BN-PLIF-Plain-FC2", (2, 8, 8), g="AND")
    with pytest.raises(SpecError, match="unknown neuron") as info:
        build("c4k3-BN-PLIF-FC2", (2, 8, 8), neuron="PLFI")
    assert "PLIF" in info.value.suggestions
    with pytest.raises(SpecError, match="unknown surrogate"):
        build("c4k3-BN-PLIF-FC2", (2, 8, 8), surrogate="Atan2")
    with pytest.raises(SpecError, match="must end in FC"):
        build("c4k3-BN-PLIF", (2, 8, 8), num_classes=3)
    assert build("c4k3-BN-PLIF-FC2", (2, 8, 8), num_classes=7).num_classes == 7
    with pytest.raises(SpecError, match="input_shape is required"):
        build("c4k3-FC2")
    with pytest.raises(SpecError, match="input_shape"):
        build("c4k3-FC2", (2, 8))
    with pytest.raises(SpecError, match="time steps"):
        build("c4k3-FC2", (2, 8, 8), T=0)


def test_neuron_change_drops_type_specific_arguments():
    net = build("c4k3-BN-PLIF(init_tau=3, v_threshold=0.7)-FC2", (2, 8, 8), neuron="LIF")
    assert net.to_spec() == "c4k3s1-BN-LIF(v_threshold=0.7)-FC2"


@pytest.mark.parametrize("text, token, message", [
    ("c4k3-BN-PLIF-{MPk2s2}*4-FC2", "MPk2s2", "smaller than the kernel"),
    ("c4k5s1p0-c4k5s1p0-FC2", "c4k5s1p0", "smaller than the kernel"),
    ("c4k3-FC8-c4k3", "c4k3", "needs a feature map"),
    ("c4k3-FC8-SEW", "SEW", "needs a feature map"),
    ("c4k3-FC8-GAP", "GAP", "needs a feature map"),
    ("c4k3-BN-PLIF-SEWBottleneck(c30)", "SEWBottleneck(c30)", "not a multiple of the expansion"),
    ("c4k3-BN-PLIF-SEW(k4)", "SEW(k4)", "kernel_size must be odd"),
    ("c4k3-BN-PLIF-Plain(g=AND)", "Plain(g=AND)", "g applies to SEW blocks only"),
    ("c4k3-BN-LIF(tau=0.5)", "LIF(tau=0.5)", "must be > 1"),
    ("c4k3-BN-PLIF(decay=1)", "PLIF(decay=1)", "no argument 'decay'"),
    ("c4k3-FC8-APk10s10", "APk10s10", "smaller than the kernel"),
])
def test_shape_and_argument_errors_name_the_token(text, token, message):
    with pytest.raises(SpecError) as info:
        build(text, (2, 8, 8))
    err = info.value
    assert message in str(err)
    assert err.spec == text and text[err.pos:err.end] == token, (err.pos, err.end, str(err))
    assert str(err).splitlines()[-1].strip().startswith("^")


def test_pool_error_names_the_input_size():
    with pytest.raises(SpecError) as info:
        infer("c32k3s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11", (2, 64, 64))
    assert "MPk2s2: the input (32x1x1) is smaller than the kernel 2" in str(info.value)


def test_layer_limit():
    with pytest.raises(SpecError, match="more than the limit"):
        infer("{{SEW}*200}*200", (2, 8, 8))


def test_fuse_switch_and_blocks_in_order():
    net = build("c4k3-BN-IF-SEW-SpikingResNet(c8s2)-Plain-FC2", (2, 8, 8), fuse=False)
    assert [type(b).__name__ for b in net.blocks()] == ["SEWBlock", "SpikingResNetBlock", "PlainBlock"]
    assert not net.fuse and not any(b.fuse for b in net.blocks())
    x = (torch.rand(2, 2, 2, 8, 8) > 0.5).float()
    unfused = net(x)
    net.fuse = True
    assert net.fuse and all(b.fuse for b in net.blocks())
    torch.testing.assert_close(net(x), unfused)


def test_shared_dropout_keeps_one_mask_over_time():
    drop = SharedDropout(0.5).train()
    y = drop(torch.ones(6, 3, 40))
    assert torch.equal(y, y[0].expand_as(y))
    assert set(y.unique().tolist()) <= {0.0, 2.0}
    assert torch.equal(drop.eval()(torch.ones(6, 3, 40)), torch.ones(6, 3, 40))


def test_forward_input_checks():
    net = build(SMALL, (2, 16, 16))
    with pytest.raises(ValueError, match="static input"):
        net(torch.zeros(2, 2, 16, 16))
    with pytest.raises(ValueError, match=r"built for inputs \[T, B, 2, H, W\]"):
        net(torch.zeros(2, 2, 3, 16, 16))
    assert net(torch.zeros(2, 2, 2, 8, 8)).shape == (2, 5)  # after GAP any H, W runs
    fixed = build("c8k3s1-BN-PLIF-FC5", (2, 16, 16))  # without GAP the FC fixes H, W
    with pytest.raises(ValueError, match=r"built for inputs \[T, B, 2, 16, 16\]"):
        fixed(torch.zeros(2, 2, 2, 8, 8))
    assert net.T is None and net.input_shape == (2, 16, 16) and net.num_classes == 5


@pytest.mark.parametrize("neuron", ["PLIF", "ALIF"])  # ALIF keeps a tuple of states
def test_layer_table_leaves_stateful_neurons_clean(neuron):
    net = build(f"c4k3-BN-{neuron}(stateful=True)-FC2", (2, 8, 8))
    assert len(net.layer_table()) == 4
    assert net.layers[2].v is None
    assert all(not p.is_meta for p in net.parameters())
    assert net.training


# -- random valid networks: build -> to_spec -> build gives the same network -----------------
@st.composite
def valid_spec(draw):
    size, channels = 8, 2
    parts = [f"c{draw(st.integers(1, 6))}k{draw(st.sampled_from([1, 3]))}s1"]
    channels = int(parts[0][1:parts[0].index("k")])
    if draw(st.booleans()):
        parts.append("BN")
    parts.append(draw(st.sampled_from(["IF", "LIF", "PLIF", "LIF(tau=3.0)", "IF(v_threshold=0.5)",
                                       "PLIF(surrogate=Sigmoid)"])))
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.sampled_from(["block", "repeat", "pool", "conv", "neuron", "dropout"]))
        if choice in ("block", "repeat"):
            name = draw(st.sampled_from(["SEW", "SpikingResNet", "Plain", "SEW Block", "Basic Block"]))
            out = draw(st.sampled_from([None, 4, 6]))
            stride = 2 if size >= 2 and choice == "block" and draw(st.booleans()) else 1
            shape = (f"c{out}" if out else "") + (f"s{stride}" if stride > 1 else "")
            g = draw(st.sampled_from(["", "g=IAND", "g=AND"])) if name.startswith("SEW") else ""
            args = ", ".join(a for a in (shape, g) if a)
            text = f"{name}({args})" if args else name
            if choice == "repeat":
                text = "{" + text + "}*" + str(draw(st.integers(1, 2)))
            parts.append(text)
            channels = out or channels
            size = (size - 1) // stride + 1
        elif choice == "pool" and size >= 2:
            parts.append(draw(st.sampled_from(["MPk2s2", "APk2", "MPk3s2p1"])))
            size = size // 2 if not parts[-1].startswith("MPk3") else (size - 1) // 2 + 1
        elif choice == "conv":
            channels = draw(st.integers(1, 6))
            parts.append(f"c{channels}k3s1-BN")
        elif choice == "neuron":
            parts.append(draw(st.sampled_from(["IF", "PLIF"])))
        elif choice == "dropout":
            parts.append(draw(st.sampled_from(["DP", "DP(0.25)"])))
    if draw(st.booleans()):
        parts.append("GAP")
    parts.append(f"FC{draw(st.integers(1, 4))}")
    overrides = draw(st.fixed_dictionaries({}, optional={
        "neuron": st.sampled_from(["IF", "LIF", "PLIF"]), "surrogate": st.sampled_from(["ATan", "Rectangular"]),
        "zero_init": st.booleans(), "v_threshold": st.sampled_from([0.5, 1.0])}))
    return "-".join(parts), overrides


@settings(max_examples=12)
@given(valid_spec())
def test_build_print_build_round_trip(case):
    text, overrides = case
    torch.manual_seed(0)
    net = build(text, (2, 8, 8), T=2, **overrides)
    printed = net.to_spec()
    again = build(printed, (2, 8, 8), T=2)
    assert again.to_spec() == printed
    assert parse(printed) == net.spec
    assert repr(again) == repr(net)
    assert again.graph == net.graph
    again.load_state_dict(net.state_dict())
    x = (torch.rand(2, 3, 2, 8, 8) > 0.6).float()
    net.eval(), again.eval()
    out = net(x)
    assert out.shape == (3, net.num_classes)
    torch.testing.assert_close(again(x), out)


def test_specnet_type():
    assert isinstance(build(SMALL, (2, 16, 16)), SpecNet)


def test_surrogate_override_accepts_instances():
    from sewforge.surrogates import Surrogate, create_surrogate

    net = build("c4k3-BN-IF-FC2", (2, 8, 8), surrogate=create_surrogate("Sigmoid", alpha=2.5))
    assert net.to_spec() == "c4k3s1-BN-IF(surrogate=Sigmoid(alpha=2.5))-FC2"
    assert net.layers[2].surrogate == create_surrogate("Sigmoid", alpha=2.5)

    class Unregistered(Surrogate):
        def derivative(self, x):
            return x

    with pytest.raises(SpecError, match="registered surrogate"):
        build("c4k3-BN-IF-FC2", (2, 8, 8), surrogate=Unregistered())


def test_features_head_and_classifier_replacement_of_a_spec_network():
    """forward_features stops before the head; forward_head is FC of the mean over T (Eq. of the
    readout written out here); reset_classifier swaps the FC and the graph follows."""
    torch.manual_seed(0)
    net = build("c4k3s1-BN-PLIF-{SEW(c4)-MPk2s2}*2-FC3", (2, 8, 8), T=2).eval()
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        features = net.forward_features(x)
        assert features.shape == (2, 2, 4, 2, 2)
        fc = net.get_classifier()
        want = features.flatten(2).mean(0) @ fc.weight.T + fc.bias
        torch.testing.assert_close(net.forward_head(features), want)
        torch.testing.assert_close(net(x), want)
    net.reset_classifier(7)
    assert net.num_classes == 7 and net.get_classifier().out_features == 7
    assert net(x).shape == (2, 7) and net.graph.nodes[-1].out_shape == (7,)
    assert net.to_spec().endswith("FC7") and net.layer_names()[-1] == "layers.7"
    assert net.state_dict()["layers.7.module.1.weight"].shape == (7, 16)
