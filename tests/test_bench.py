"""The benchmarks measure what they say: same input for every implementation, SpikingJelly as an
oracle, alternating runs, matching networks, and the GPU check's report. (Numbers are recorded in
BENCHMARKS.md, not asserted here.)"""
import json

import pytest
import torch

import sewforge
from sewforge.bench import common, neurons, step
from sewforge.cli import main as sewforge_main


def main(argv):
    """``sewforge bench ARGV`` in-process."""
    return sewforge_main(["bench", *argv])

sj_installed = pytest.mark.skipif(not common.has_spikingjelly(), reason="spikingjelly not installed")


@sj_installed
@pytest.mark.parametrize("name", ["PLIF", "LIF", "IF"])
def test_spikingjelly_neuron_of_the_bench_is_an_oracle_for_sewforge(name):
    """The bench's SpikingJelly neuron and sewforge's default neuron give identical spikes and
    input gradients on the same input (so their timings compare the same computation)."""
    from sewforge.bench import sj

    x = neurons.make_input((16, 3, 257), torch.float32, torch.device("cpu"))
    xs = x.detach().clone().requires_grad_(True)
    ours = sewforge.create_neuron(name)(x)
    theirs = sj.make_neuron(name)(xs)
    assert 0 < ours.mean() < 1  # the input makes some neurons fire and others not
    assert torch.equal(ours, theirs)
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    ours.backward(g)
    theirs.backward(g)
    torch.testing.assert_close(x.grad, xs.grad, rtol=1e-5, atol=1e-6)


def test_alternate_interleaves_the_cases():
    calls = []
    cases = {k: (lambda k=k: calls.append(k)) for k in "ABC"}
    order = []
    times = common.alternate(cases, repeat=3, warmup=1, device=torch.device("cpu"), order=order)
    assert calls == list("ABC") * 4  # one warm-up round, then three timed rounds
    assert order == [(k, r) for r in range(3) for k in "ABC"]
    assert all(len(t) == 3 for t in times.values())


def test_neuron_benchmark_rows_order_and_fields(tmp_path, capsys):
    out = tmp_path / "neurons.json"
    shapes = [(4, 2, 96), (8, 1, 3, 8, 8)]
    argv = ["neurons", "--device", "cpu", "--repeat", "3", "--warmup", "1", "--no-rss", "--json", str(out)]
    for s in shapes:
        argv += ["--shape", ",".join(map(str, s))]
    assert main(argv) == 0
    data = json.loads(out.read_text())
    impls = ["sewforge", "sewforge-ref"] + (["spikingjelly"] if common.has_spikingjelly() else [])
    rows = data["rows"]
    assert [(tuple(r["shape"]), r["impl"]) for r in rows] == [(s, k) for s in shapes for k in impls]
    meta = data["meta"]
    assert meta["copy_bandwidth_gbs"] > 0 and meta["threads"] == 1 and meta["traffic_bytes"]["float32"] > 0
    for r in rows:
        assert r["spike_diff"] == 0, r  # every implementation ran on the same input as the reference
        assert r["ms"] > 0 and len(r["times_ms"]) == 3
        assert r["ms_per_step"] == pytest.approx(r["ms"] / r["shape"][0])
        assert r["saved_b_per_elem"] > 0
        if r["impl"].startswith("sewforge"):
            floor_ms = r["numel"] * meta["traffic_bytes"]["float32"] / (meta["copy_bandwidth_gbs"] * 1e9) * 1e3
            assert r["floor_x"] == pytest.approx(r["ms"] / floor_ms)
    if common.has_spikingjelly():
        for s in shapes:
            by = {r["impl"]: r for r in rows if tuple(r["shape"]) == s}
            assert by["spikingjelly"]["implementation"].startswith("spikingjelly 2.0")
            assert by["sewforge"]["vs_sj"] == pytest.approx(by["sewforge"]["ms"] / by["spikingjelly"]["ms"])
    # the timed runs alternated: impl A rep 1, impl B rep 1, ..., A rep 2, ...
    for s in shapes:
        seq = [(k, r) for shape, _, k, r in data["order"] if tuple(shape) == s]
        assert seq == [(k, r) for r in range(3) for k in impls]
    assert "x floor" in capsys.readouterr().out


def test_neuron_benchmark_runs_a_neuron_with_two_states_against_its_reference(tmp_path, capsys):
    """Any registered neuron can be timed; for one with several states the fused path fires the
    reference's spikes, no SpikingJelly row is invented and no one-state traffic floor is claimed."""
    out = tmp_path / "neurons.json"
    assert main(["neurons", "--neuron", "ALIF", "--device", "cpu", "--repeat", "2", "--warmup", "1", "--no-rss",
                 "--shape", "4,2,96", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["impl"] for r in data["rows"]] == ["sewforge", "sewforge-ref"]
    for r in data["rows"]:
        assert r["spike_diff"] == 0 and r["ms"] > 0 and "floor_x" not in r
    text = capsys.readouterr().out
    assert "x floor: not given for ALIF" in text
    if common.has_spikingjelly():
        assert "no SpikingJelly counterpart for neuron 'ALIF'" in text


def test_cpu_peak_rss_probe_sees_the_tensors_kept_for_backward():
    """A fresh process, one fwd+bwd of the reference on 8 MiB tensors: the measured peak above
    the baseline is at least what autograd keeps for backward, and not absurdly more."""
    shape = [8, 64, 4096]
    res = common.probe_in_subprocess(dict(kind="neuron", impl="sewforge-ref", neuron="PLIF", shape=shape,
                                          dtype="float32", threads=1, device="cpu"), timeout=120)
    assert "error" not in res, res
    numel = 8 * 64 * 4096
    assert 12 * numel <= res["peak_bytes"] <= 40 * numel
    assert "VmHWM" in res["method"] or "ru_maxrss" in res["method"]


@sj_installed
def test_spikingjelly_7bnet_matches_sewforge_layout_and_parameters():
    from sewforge.bench import sj

    ours = sewforge.create_model("sew7b_gesture")
    theirs = sj.sew7b()
    count = step.param_count
    assert count(ours) == count(theirs) == 130_426
    plif = lambda m, cls: sum(isinstance(x, cls) for x in m.modules())  # noqa: E731
    from spikingjelly.activation_based import neuron as sjn

    assert plif(ours, sewforge.neurons.PLIFNode) == plif(theirs, sjn.ParametricLIFNode) == 15
    convs = lambda m: sorted(tuple(c.weight.shape) for c in m.modules() if isinstance(c, torch.nn.Conv2d))  # noqa: E731
    assert convs(ours) == convs(theirs)
    x = (torch.rand(1, 1, 2, 128, 128) < 0.2).float()
    assert theirs(x).shape == (1, 1, 11)


@sj_installed
def test_step_benchmark_compares_equal_networks(tmp_path):
    out = tmp_path / "step.json"
    assert main(["step", "sew_resnet18", "--device", "cpu", "--T", "1", "--batch", "2", "--size", "32",
                 "--repeat", "2", "--warmup", "1", "--no-rss", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    by = {r["impl"]: r for r in data["rows"]}
    impls = ("sewforge", "sewforge-cl", "spikingjelly")
    assert set(by) == set(impls)
    assert by["sewforge-cl"]["implementation"] == "sewforge (channels_last)"
    assert by["sewforge"]["params"] == by["sewforge-cl"]["params"] == by["spikingjelly"]["params"] == 11_689_512
    assert by["sewforge"]["vs_sj"] == pytest.approx(by["sewforge"]["ms"] / by["spikingjelly"]["ms"])
    assert [(k, r) for _, k, r in data["order"]] == [(k, r) for r in range(2) for k in impls]


@sj_installed
def test_step_benchmark_times_the_same_function_in_both_frameworks(tmp_path):
    """The two networks the step benchmark times compute the same logits once they hold the same
    weights (SpikingJelly's weights converted by sewforge.interop): the timings compare equal work."""
    from sewforge.interop import convert_state_dict

    torch.manual_seed(0)
    cfg = dict(step.MODELS["sew_resnet18"], T=2, batch=2, size=32, classes=10, model="sew_resnet18")
    theirs, forward, label, _ = step.build("spikingjelly", cfg, torch.device("cpu"))
    assert label.startswith("spikingjelly 2.0")
    path = tmp_path / "sj.pth"
    torch.save(theirs.state_dict(), path)
    ours = convert_state_dict(path, "sew_resnet18", g="ADD", T=2).model
    theirs.eval()
    ours.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = forward(x)
        got = ours(x)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_gpu_check_without_cuda_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = tmp_path / "r.md"
    assert main(["gpu-check", "--out", str(report)]) == 2
    assert not report.exists()
    assert "CUDA" in capsys.readouterr().err


@pytest.mark.slow
def test_gpu_check_dry_run_reports_every_section(tmp_path):
    report = tmp_path / "r.md"
    summary = tmp_path / "r.json"
    rc = main(["gpu-check", "--device", "cpu", "--quick", "--out", str(report), "--json", str(summary)])
    text = report.read_text()
    results = json.loads(summary.read_text())["results"]
    assert set(results) == set("abcd")
    for title in ("(a) Kernel tests", "(b) Neuron benchmark", "(c) Training steps", "(d) torch.compile"):
        assert text.count(title) == 2, title  # a summary row and a section
    assert "| shape | implementation |" in text and "| model | implementation |" in text
    assert "graph breaks" in text
    assert all(r["status"] in ("PASS", "FAIL", "SKIPPED (over budget)") for r in results.values())
    assert rc == (0 if all(r["status"] == "PASS" for r in results.values()) else 1)
    assert results["a"]["status"] == "PASS", results["a"]["note"]


def test_sewforge_bench_and_python_m_sewforge_bench_are_one_command(capsys):
    """``python -m sewforge.bench`` goes through the one ``sewforge`` dispatcher: same parser,
    same suites, same exit status."""
    import subprocess
    import sys

    env = common.subprocess_env()
    with pytest.raises(SystemExit) as info:
        main(["neurons", "--help"])
    assert info.value.code == 0
    in_process = capsys.readouterr().out
    proc = subprocess.run([sys.executable, "-m", "sewforge.bench", "neurons", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0 and proc.stdout == in_process
    assert in_process.startswith("usage: sewforge bench neurons")
    assert main([]) == 2 and "name a suite: neurons, step, compile, gpu-check" in capsys.readouterr().out


def test_conv_census_counts_the_convolutions_that_ran_event_driven():
    from torch import nn

    from sewforge.kernels import spikeconv
    from sewforge.layers import Conv2d
    from sewforge.memory import mark_spikes

    torch.manual_seed(0)
    conv = Conv2d(32, 32, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    plain = nn.Conv2d(32, 4, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
    model = nn.Sequential(conv, plain)
    sparse = (torch.rand(64, 32, 8, 8) < 0.05).float().contiguous(memory_format=torch.channels_last)

    def forward(x):
        return model(mark_spikes(x.requires_grad_(True), binary=True))

    text = step.conv_census(model, forward, sparse)
    if spikeconv.available():  # 4096 output positions x 32 x 32 x 9 multiply-adds, 5% non-zero: event-driven
        assert text.startswith("1 of 2 convolutions event-driven (inputs 5.")
    assert "the others dense" in text
    assert step.conv_census(nn.Linear(2, 2), lambda x: x, sparse) is None
