"""Every kind of kernel specialisation compiles with Triton's real compiler for NVIDIA GPUs.

The interpreter that runs the kernels in the other tests is more lenient than the compiler (types,
constexpr branches, pointer arithmetic), so here the kernels are compiled ahead of time down to a
cubin for sm_90 (H100) and sm_80 (A100), which needs no GPU. It runs in a subprocess because the
rest of the suite imports the kernels with TRITON_INTERPRET=1.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sewforge.kernels import HAS_TRITON

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import itertools, json, re, torch
    from sewforge.elementwise import create_elementwise
    from sewforge.kernels.multistep import compile_ahead, specialize
    from sewforge.neurons import IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT
    from sewforge.surrogates import create_surrogate
    import sewforge

    charges = [IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT]
    surrogates = sewforge.list_surrogates()
    gs = [None, "ADD", "AND", "IAND"]
    modes = [(True, True), (False, False), (True, False), (False, True)]
    dtypes = [torch.float16, torch.bfloat16, torch.float32]
    cases = []
    for i, sg in enumerate(surrogates):  # every surrogate, every g, charge, reset mode and dtype at least once
        cases.append((charges[i % 3], sg, gs[i % 4], modes[i % 4], dtypes[i % 3], 90))
    cases.append((LIF_CHARGE, "ATan", "IAND", (True, True), torch.float16, 80))
    out = []
    for charge, sg, g, (hard, detach), dtype, arch in cases:
        spec = specialize(charge, create_surrogate(sg), create_elementwise(g) if g else None, hard, detach)
        k = compile_ahead(spec, dtype, arch=arch)
        ptx = k["forward"].asm["ptx"] + k["backward"].asm["ptx"]
        ttir = k["forward"].asm["ttir"] + k["backward"].asm["ttir"]
        out.append(dict(case=spec.describe() + f" {dtype} sm_{arch}",
                        cubin=all(len(k[p].asm["cubin"]) > 0 for p in ("forward", "backward")),
                        fma="fma.rn.f32" in ptx,
                        mul32=[m.group(0) for m in re.finditer(r"arith.muli[^:]*: i32", ttir)]))
    print(json.dumps(out))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_kernels_compile_for_hopper_and_ampere_without_fused_multiply_add():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    cases = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(cases) >= 7
    for c in cases:
        assert c["cubin"], c["case"]
        # the charge must round as the PyTorch reference does: no multiply-add contraction
        assert not c["fma"], c["case"]
        # element offsets t * N reach past 2**31 on large activations (T * N elements): 64-bit only
        assert not c["mul32"], (c["case"], c["mul32"])
