"""``sewforge build``: layer tables, JSON, and exit status 2 with a pointed message on bad input."""
from __future__ import annotations

import json

import pytest

from sewforge.cli import main
from sewforge.commands.build import parse_input_shape


def run(capsys, *argv):
    code = main(["build", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_zoo_model_table(capsys):
    code, out, err = run(capsys, "sew7b_gesture")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].startswith("sew7b_gesture: c32k1s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11  input 2x128x128  T=16")
    assert lines[1].split() == ["#", "token", "output", "params", "MACs/step"]
    assert lines[3].split() == ["0", "c32k1s1", "32x128x128", "64", "1,048,576"]
    assert lines[-3].split()[:3] == ["17", "FC11", "11"]
    assert "total parameters: 130,426 (0.13M)" in out
    assert "dense MACs per time step: 403,677,536" in out


def test_spec_with_overrides_and_json(capsys):
    code, out, _ = run(capsys, "c8k3s1-BN-PLIF-{SEW Block (c8)-MPk2s2}*2-FC4", "--input", "2x16x16", "--T", "4",
                       "--g", "IAND", "--neuron", "LIF", "--surrogate", "Sigmoid", "--zero-init", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["spec"] == ("c8k3s1-BN-LIF(surrogate=Sigmoid)-{SEW(c8, g=IAND, zero_init=True)-MPk2s2}*2-FC4")
    assert data["input_shape"] == [2, 16, 16] and data["T"] == 4 and data["num_classes"] == 4
    assert [row["token"] for row in data["layers"]] == ["c8k3s1", "BN", "LIF(surrogate=Sigmoid)",
                                                        "SEW(c8, g=IAND, zero_init=True)", "MPk2s2",
                                                        "SEW(c8, g=IAND, zero_init=True)", "MPk2s2", "FC4"]
    assert data["layers"][-1]["output_shape"] == [4]
    sew = 2 * (8 * 8 * 9 + 16)
    assert data["total_params"] == 2 * 8 * 9 + 16 + 2 * sew + 8 * 4 * 4 * 4 + 4
    assert data["total_params"] == sum(row["params"] for row in data["layers"])
    assert data["macs_per_step"] == sum(row["macs"] for row in data["layers"]) > 0


def test_spec_without_input_is_built_for_the_papers_dvs_frames(capsys):
    code, out, _ = run(capsys, "c32k3s1-BN-PLIF-<SEW-MPk2s2>*7-FC11")
    assert code == 0
    assert "no --input given: built for the paper's DVS frames 2x128x128" in out
    assert "input 2x128x128" in out
    # 7 halvings of 128 leave 1x1; params: stem conv+BN+PLIF, 7 SEW blocks of two 3x3 convs + BNs, FC
    stem = 2 * 32 * 9 + 2 * 32 + 1
    sew = 2 * (32 * 32 * 9 + 2 * 32) + 2
    assert f"{stem + 7 * sew + 32 * 11 + 11:,}" in out
    code, out, err = run(capsys, "c8k3s1-BN-IF-FC4", "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [2, 128, 128] and "2x128x128" in err
    code, out, _ = run(capsys, "c8k3s1-BN-IF-FC4", "--input", "2x16x16", "--json")
    assert code == 0 and json.loads(out)["input_shape"] == [2, 16, 16]


def test_image_resnet_table_per_block(capsys):
    code, out, _ = run(capsys, "sew_resnet18", "--input", "3x32x32", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["spec"].startswith("c64k7s2-BN-IF-MPk3s2p1-SEW(c64)") and data["model"] == "sew_resnet18"
    assert data["total_params"] == 11_689_512  # torchvision's resnet18
    blocks = [row for row in data["layers"] if row["token"].startswith("SEW")]
    assert len(blocks) == 8 and blocks[-1]["output_shape"] == [512, 1, 1]
    assert data["layers"][-1]["output_shape"] == [1000]
    code, out, _ = run(capsys, "sew_resnet18", "--input", "2x32x32", "--json")  # event frames: 2-channel stem
    assert code == 0 and json.loads(out)["total_params"] == 11_689_512 - 64 * 7 * 7


@pytest.mark.parametrize("argv, message", [
    (["c32k3s1-BN-PLFI-FC10", "--input", "2x32x32"], "did you mean 'PLIF'"),
    (["c32k3s1-BN-PLIF-{SEW-MPk2s2}*7-FC10", "--input", "2x32x32"], "MPk2s2: the input (32x1x1) is smaller"),
    (["c32k3s1-BN-PLIF-FC0", "--input", "2x32x32"], "FC0"),
    (["c32k3s1-BN-PLIF-FC10", "--input", "2x32"], "expected CxHxW"),
    (["plain7b_gesture", "--g", "AND"], "applies to SEW blocks"),
    (["sew7b_gesture", "--neuron", "PLFI"], "unknown neuron"),
    (["sew_resnet19"], "did you mean 'sew_resnet18'"),
])
def test_bad_input_exits_2_without_traceback(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("sewforge build: error: ")
    assert message in err and "Traceback" not in err


def test_error_shows_the_caret(capsys):
    code, _, err = run(capsys, "c32k3s1-BN-PLFI-FC10", "--input", "2x32x32")
    lines = err.rstrip("\n").splitlines()
    assert code == 2
    assert lines[-2] == "    c32k3s1-BN-PLFI-FC10"
    assert lines[-1] == "    " + " " * 11 + "^^^^"


def test_input_shape_parsing():
    assert parse_input_shape("2x128x128") == (2, 128, 128)
    assert parse_input_shape("3, 32, 32") == (3, 32, 32)
    assert parse_input_shape("700") == (700,)
    for bad in ("2x0x4", "ax2x2", "2x2", ""):
        with pytest.raises(ValueError, match="CxHxW"):
            parse_input_shape(bad)


def test_a_huge_mistyped_width_is_tabulated_without_allocating_it(capsys, monkeypatch):
    import sewforge.models

    built = []
    real = sewforge.models.create_model
    monkeypatch.setattr(sewforge.models, "create_model", lambda *a, **k: built.append(real(*a, **k)) or built[-1])
    # c100000 for c100: a 2x8x8 input then needs 64M weights in FC10 (256 MB) that the table only counts
    code, out, err = run(capsys, "c100000k3s1-BN-PLIF-FC10", "--input", "2x8x8")
    assert code == 0 and err == ""
    conv, bn, fc = 2 * 9 * 100_000, 2 * 100_000, 100_000 * 8 * 8 * 10 + 10
    plif = sum(p.numel() for p in built[0].parameters()) - conv - bn - fc
    assert 0 <= plif <= 1  # PLIF's learnable time constant
    assert f"total parameters: {conv + bn + fc + plif:,}" in out
    assert all(t.is_meta for t in list(built[0].parameters()) + list(built[0].buffers()))


def test_deep_nesting_and_long_unknown_words_are_short_errors(capsys):
    code, _, err = run(capsys, "{" * 500 + "BN" + "}*1" * 500, "--input", "2x8x8")
    assert code == 2 and "nested more than 64 deep" in err and "Traceback" not in err
    assert len(err) < 1000
    code, _, err = run(capsys, "c4k3s1-BN-" + "Q" * 100_000, "--input", "2x8x8")
    assert code == 2 and f"unknown layer, neuron or block '{'Q' * 40}...'" in err
    assert len(err) < 1000
