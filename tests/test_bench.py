"""The benchmark runs end to end (its numbers are recorded in BENCHMARKS.md, not asserted here)."""
import json

from sewforge.bench.cli import main


def test_neuron_benchmark_smoke(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["neurons", "--quick", "--repeat", "1", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert {r["implementation"] for r in rows} >= {"sewforge reference (torch)"}
    assert all(r["ms"] > 0 and r["saved_bytes_per_element"] > 0 for r in rows)
    assert "device: CPU" in capsys.readouterr().out
