"""Third-party packages add neurons and surrogates through entry points."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "plugins" / "sewforge-qif"


def _env(extra_path, **kw):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(extra_path), str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_INTERPRET"] = "1"
    env.update(kw)
    return env


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory):
    """pip-install the example plugin (a real wheel build) into a private folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-cache-dir", "--target", str(target), str(PLUGIN)], check=True)
    return target


def test_example_plugin_passes_its_own_conformance_tests(installed_plugin, tmp_path):
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                         env=_env(installed_plugin), cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "4 passed" in res.stdout


def test_plugin_neuron_is_used_by_name(installed_plugin):
    code = """
        import torch, sewforge
        n = sewforge.create_neuron("qif", tau=3.0, surrogate="FastSigmoid")
        print(type(n).__name__, sewforge.NEURONS.entry("QIF").package, n(torch.ones(3, 2) * 2).sum().item())
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(installed_plugin),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[:2] == ["QIFNode", "sewforge-qif"]


def test_autoload_switch_turns_discovery_off(installed_plugin):
    code = "import sewforge; print('QIF' in sewforge.list_neurons())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(installed_plugin, SEWFORGE_PLUGIN_AUTOLOAD="0"))
    assert res.stdout.strip() == "False", res.stderr


def test_broken_plugin_is_reported_and_breaks_nothing_else(tmp_path):
    dist = tmp_path / "broken_neuron-2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-neuron\nVersion: 2.0\n")
    (dist / "entry_points.txt").write_text("[sewforge.neurons]\nBroken = broken_neuron\n")
    (tmp_path / "broken_neuron.py").write_text(textwrap.dedent("""
        from sewforge.registry import NEURONS, SURROGATES
        SURROGATES.add("HalfDone", object)  # registered before the failure: must be rolled back
        raise ImportError("needs libfoo")
    """))
    code = """
        import warnings, sewforge
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            names = sewforge.list_neurons()
        print(names)
        print([str(x.message) for x in w])
        print("HalfDone" in sewforge.list_surrogates())
        try:
            sewforge.create_neuron("Broken")
        except KeyError as e:
            print(e)
        print(sewforge.create_neuron("PLIF").__class__.__name__)
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(tmp_path),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert "'PLIF'" in lines[0]
    assert "broken-neuron 2.0" in lines[1] and "needs libfoo" in lines[1]
    assert lines[2] == "False"
    assert "Plugins that failed to load: broken-neuron 2.0" in lines[3]
    assert lines[4] == "PLIFNode"


def test_a_plugin_that_exits_or_is_not_callable_is_named_and_skipped(tmp_path):
    for name, value in (("exiting_neuron", "exiting_neuron"), ("constant_neuron", "constant_neuron:LIMIT")):
        dist = tmp_path / f"{name}-1.0.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: 1.0\n")
        (dist / "entry_points.txt").write_text(f"[sewforge.neurons]\n{name} = {value}\n")
    (tmp_path / "exiting_neuron.py").write_text("import sys\nsys.exit(3)\n")
    (tmp_path / "constant_neuron.py").write_text("LIMIT = 5\n")
    code = """
        import warnings, sewforge
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            names = sewforge.list_neurons()
        print("PLIF" in names)
        for group, package, err in sewforge.plugin_errors():
            print(package, "|", err)
    """
    res = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(tmp_path),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "True"
    errors = dict(line.split(" | ", 1) for line in lines[1:])
    assert "sys.exit(3)" in errors["exiting-neuron 1.0 (entry point 'exiting_neuron')"]
    assert "names an object of type int, expected a module" in errors["constant-neuron 1.0 (entry point 'constant_neuron')"]
