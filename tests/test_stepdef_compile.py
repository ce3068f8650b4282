"""Derived charges compile with Triton's real compiler for sm_90 and sm_80 (no GPU needed): several
learnable parameters (the [R, BLOCK] dp rows), a backward that reads X, exp/tanh/atan/sigmoid/abs.
A subprocess, because the rest of the suite imports the kernels with TRITON_INTERPRET=1."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sewforge.kernels import HAS_TRITON

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import torch
    from sewforge.elementwise import create_elementwise
    from sewforge.kernels.multistep import compile_ahead, specialize
    from sewforge.neurons import charge_from_step
    from sewforge.surrogates import create_surrogate

    def gain_lif(v, x, p):
        return v + (p.gain * x - (v - p.v_rest)) * p.k

    def odd(v, x, p):
        return v * p.a + torch.tanh(x) * p.b + torch.atan(v) * p.c - torch.sigmoid(abs(x - v)) + torch.exp(v) * p.c

    cases = [(charge_from_step(gain_lif, ("k", "gain")), "ADD", torch.float16),
             (charge_from_step(odd, ("a", "b", "c")), None, torch.float32),
             (charge_from_step(odd, ("a", "b", "c"), learnable=("b",)), "IAND", torch.float64)]
    for arch in (90, 80):
        for charge, g, dtype in cases:
            spec = specialize(charge, create_surrogate("ATan"), create_elementwise(g) if g else None, True, False)
            k = compile_ahead(spec, dtype, arch=arch)
            assert all(len(k[p].asm["cubin"]) > 0 for p in ("forward", "backward")), spec.describe()
            assert k["constants"]["backward"]["NUM_DP"] == charge.dp_rows
    print("compiled", 2 * len(cases))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")
def test_derived_charges_compile_for_nvidia_gpus(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["TRITON_CACHE_DIR"] = str(tmp_path / "triton")
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-4000:]
    assert "compiled 6" in res.stdout
