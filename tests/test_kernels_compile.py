"""Every kind of kernel specialisation compiles with Triton's real compiler for NVIDIA GPUs.

The interpreter that runs the kernels in the other tests is more lenient than the compiler (types,
constexpr branches, pointer arithmetic), so here the kernels are compiled ahead of time down to a
cubin for sm_90 (H100) and sm_80 (A100), which needs no GPU. It runs in a subprocess because the
rest of the suite imports the kernels with TRITON_INTERPRET=1.

The cases form a covering set: on each architecture every boolean specialisation flag of both
kernels (g, ADD's shortcut-free backward, each gradient asked for or not, the spike count, the
learnable parameter, a charge that reads X, the initial and final state, saving H, reset modes)
takes both values, as do the state dtype (fp32 / fp64) and the width of N (32 / 64 bits).
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
    import dataclasses, itertools, json, re, torch
    from sewforge.elementwise import create_elementwise
    from sewforge.kernels.multistep import compile_ahead, specialize
    from sewforge.neurons import IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT
    from sewforge.surrogates import create_surrogate
    import sewforge

    LIF_READS_X = dataclasses.replace(LIF_CHARGE, name="LIF(reads X)", needs_input_in_backward=True)
    f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
    # (charge, g, (hard, detach), dtype, compile_ahead flags): together every flag value
    flags = [
        (IF_CHARGE, None, (True, True), f16, dict()),
        (LIF_CHARGE, "ADD", (False, False), bf16, dict(has_v0=True, need_vt=True, count=True)),
        (LIF_CHARGE_NO_DECAY_INPUT, "AND", (True, False), f32, dict(need_gx=False, need_gsc=False)),
        (LIF_READS_X, "IAND", (False, True), f64, dict(need_gp=False, count=True, sc_dtype=f32)),
        (IF_CHARGE, "AND", (True, True), f16, dict(training=False, need_vt=True)),
        (LIF_CHARGE, None, (False, True), f16, dict(large=True, has_v0=True)),
    ]
    surrogates = sewforge.list_surrogates()
    out = []
    for arch in (90, 80):
        for i in range(max(len(flags), len(surrogates))):  # every surrogate at least once
            charge, g, (hard, detach), dtype, kw = flags[i % len(flags)]
            sg = surrogates[i % len(surrogates)]
            spec = specialize(charge, create_surrogate(sg), create_elementwise(g) if g else None, hard, detach)
            k = compile_ahead(spec, dtype, arch=arch, **kw)
            kernels = [k[p] for p in ("forward", "backward") if k[p] is not None]
            ptx = "".join(c.asm["ptx"] for c in kernels)
            ttir = "".join(c.asm["ttir"] for c in kernels)
            const = {p: {n: (v if isinstance(v, bool) else str(v)) for n, v in (c or {}).items()
                         if isinstance(v, bool) or n == "CD"} for p, c in k["constants"].items()}
            out.append(dict(case=spec.describe() + f" {dtype} {kw} sm_{arch}", arch=arch, constants=const,
                            large=bool(kw.get("large")), count=bool(kw.get("count")),
                            cubin=all(len(c.asm["cubin"]) > 0 for c in kernels),
                            fma=("fma.rn.f32" in ptx) or ("fma.rn.f64" in ptx),
                            atomic=bool(re.search(r"\\b(red|atom)\\.global", k["forward"].asm["ptx"])),
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
    for c in cases:
        assert c["cubin"], c["case"]
        # the charge must round as the PyTorch reference does: no multiply-add contraction
        assert not c["fma"], c["case"]
        # element offsets t * N reach past 2**31 on large activations (T * N elements): 64-bit only
        assert not c["mul32"], (c["case"], c["mul32"])
        # the spike count is the forward's only atomic
        assert c["atomic"] == c["count"], c["case"]
    for arch in (90, 80):  # a covering set on each architecture
        assert {c["large"] for c in cases if c["arch"] == arch} == {False, True}, arch
    _assert_every_flag_takes_both_values(cases)


MULTISTATE_SCRIPT = textwrap.dedent("""
    import json, torch
    import sewforge
    from sewforge.elementwise import create_elementwise
    from sewforge.kernels.multistate import _Spec
    from sewforge.kernels.multistate_triton import compile_ahead_multistate
    from sewforge.neurons import ALIFNode, CUBALIFNode, ChannelLIFNode, IzhikevichNode
    from sewforge.surrogates import create_surrogate

    f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
    # (neuron, g, (hard, detach), dtype, flags): together every flag value of both kernels
    flags = [
        (ALIFNode, None, (True, True), f16, dict()),
        (IzhikevichNode, "ADD", (False, False), bf16, dict(has_sp0=True, store=True, count=True)),
        (CUBALIFNode, "AND", (True, False), f32, dict(need_gx=False, need_gsc=False)),
        (ChannelLIFNode, "IAND", (False, True), f64, dict(need_gp=False, count=True)),
        (ALIFNode, "AND", (True, True), f16, dict(training=False, store=True)),
    ]
    surrogates = sewforge.list_surrogates()
    out = []
    for arch in (90, 80):
        for i in range(max(len(flags), len(surrogates))):
            cls, g, (hard, detach), dtype, kw = flags[i % len(flags)]
            sg = type(create_surrogate(surrogates[i % len(surrogates)]))
            spec = _Spec(cls._multistate, sg, create_elementwise(g) if g else None, hard, detach)
            k = compile_ahead_multistate(spec, dtype, arch=arch, **kw)
            kernels = [k[p] for p in ("forward", "backward") if k[p] is not None]
            ptx = "".join(c.asm["ptx"] for c in kernels)
            const = {p: {n: (v if isinstance(v, bool) else str(v)) for n, v in (c or {}).items()
                         if isinstance(v, bool) or n == "CD"} for p, c in k["constants"].items()}
            out.append(dict(case=f"{cls.__name__} {sg.__name__} g={g} {dtype} {kw} sm_{arch}", arch=arch,
                            constants=const, cubin=all(len(c.asm["cubin"]) > 0 for c in kernels),
                            fma=("fma.rn.f32" in ptx) or ("fma.rn.f64" in ptx)))
    print(json.dumps(out))
""")


@pytest.mark.skipif(not HAS_TRITON, reason="Triton is not installed")
def test_multistate_kernels_compile_for_hopper_and_ampere():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    res = subprocess.run([sys.executable, "-c", MULTISTATE_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    cases = json.loads(res.stdout.strip().splitlines()[-1])
    for c in cases:
        assert c["cubin"], c["case"]
        assert not c["fma"], c["case"]  # the states round as the reference does
    _assert_every_flag_takes_both_values(cases)


def _assert_every_flag_takes_both_values(cases):
    """On sm_90 and sm_80, for the forward and the backward kernel: every constexpr flag takes both
    of its values in the compiled set, and the compute dtype both fp32 and fp64."""
    for arch in (90, 80):
        mine = [c for c in cases if c["arch"] == arch]
        for kernel in ("forward", "backward"):
            seen = {}
            for c in mine:
                for name, value in (c["constants"][kernel] or {}).items():
                    seen.setdefault(name, set()).add(value)
            assert seen["CD"] == {"fp32", "fp64"}, (arch, kernel)
            single = {name: values for name, values in seen.items() if name != "CD" and len(values) < 2}
            assert not single, (arch, kernel, single)
