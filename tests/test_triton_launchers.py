"""The host launchers of the fused kernel (``triton_forward`` / ``triton_backward``), interpreted on
the CPU, against the PyTorch reference differentiated by autograd."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from sewforge.elementwise import create_elementwise
from sewforge.kernels import multistep
from sewforge.kernels import multistep_neuron
from sewforge.kernels.multistep import (compile_ahead, fill_outputs_with, force_block, specialize, time_dense,
                                        traffic_bytes, triton_backward, triton_forward)
from sewforge.kernels.reference import compute_dtype, multistep_reference
from sewforge.neurons import IF_CHARGE, LIF_CHARGE, LIF_CHARGE_NO_DECAY_INPUT
from sewforge.surrogates import create_surrogate
from sewforge.testing import TOLERANCES

T, B, C, HW = 3, 2, 3, 2


def channels_last(*shape_tail, T=T, B=B, dtype=torch.float32, gen=None, scale=1.5):
    """``[T, B, C, H, W]``, channels_last within each step (not contiguous)."""
    x = torch.randn(T * B, *shape_tail, generator=gen) * scale + 0.3
    return x.to(dtype).to(memory_format=torch.channels_last).unflatten(0, (T, B))


def spikes_like(x, gen, dtype=None):
    """Binary spikes with the shape and strides of ``x``."""
    return torch.empty_like(x, dtype=dtype or x.dtype).copy_(torch.rand(x.shape, generator=gen) > 0.5)


def reference(x, charge, params, sg, v_th, v_reset, detach, go, v0=None, sc=None, g=None):
    """(out, v_last, spike count of the neuron, dX, dparams[0] or None, dS or None)."""
    xr = x.detach().clone().requires_grad_(True)
    pr = params.detach().clone().requires_grad_(charge.triton_dh_dp is not None)
    scr = sc.detach().clone().requires_grad_(True) if sc is not None else None
    out, v = multistep_reference(xr, charge, pr, sg, v_th, v_reset, detach, v0=v0, shortcut=scr, g=g)
    a, _ = multistep_reference(x, charge, params, sg, v_th, v_reset, detach, v0=v0)
    wrt = [t for t in (xr, pr, scr) if t is not None and t.requires_grad]
    grads = dict(zip(map(id, wrt), torch.autograd.grad(out, wrt, go.to(out.dtype)))) if out.numel() else {}
    return (out.detach(), v.detach(), a.sum().double(), grads.get(id(xr)),
            grads.get(id(pr)) if pr.requires_grad else None, grads.get(id(scr)) if scr is not None else None)


def close(got, want, dtype, scale=None):
    rtol, atol = TOLERANCES[dtype]
    if scale is not None:  # a sum over every element and step
        atol = atol * scale
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)


def run_case(x, charge, params, sg, v_th, v_reset, detach, *, g=None, sc=None, v0=None, go=None, need_gx=True,
             need_gsc=True, need_gp=True, pass_shortcut_to_backward=True):
    """Forward and backward through the launchers; checks everything against the reference."""
    cd = compute_dtype(x.dtype)
    g_fn = create_elementwise(g) if g else None
    spec = specialize(charge, sg, g_fn, v_reset is not None, detach)
    p = params.to(cd)
    go = go if go is not None else torch.randn(x.shape).to(x.dtype)
    go = torch.empty_like(x, dtype=go.dtype).copy_(go)  # the layout of x
    with fill_outputs_with(float("nan")):
        out, h, vt, cnt = triton_forward(x, sc, p, v0, spec, v_th, v_reset, save_h=True, need_vt=True, count=True)
        gx, gsc, gp = triton_backward(
            go, x if charge.needs_input_in_backward else None, h,
            sc if pass_shortcut_to_backward else None, p, v0, spec, v_th, v_reset, sg.alpha,
            need_gx=need_gx, need_gsc=need_gsc, need_gp=need_gp, x_dtype=x.dtype,
            sc_dtype=sc.dtype if sc is not None else None)
    r_out, r_v, r_cnt, r_gx, r_gp, r_gsc = reference(x, charge, params, sg, v_th, v_reset, detach, go, v0, sc, g_fn)
    assert out.dtype == r_out.dtype and torch.equal(out, r_out)
    assert out.stride() == x.stride() and h.stride() == x.stride() and h.dtype == cd
    if x.shape[0]:
        assert vt.stride() == x[0].stride()
    close(vt, r_v, x.dtype)
    assert cnt.dtype == torch.float64 and cnt.shape == (1,) and cnt.item() == r_cnt.item()
    if need_gx:
        assert gx.dtype == x.dtype and gx.stride() == x.stride()
        close(gx, r_gx, x.dtype)
    else:
        assert gx is None
    if g is not None and need_gsc:
        assert gsc.dtype == sc.dtype and gsc.stride() == x.stride()
        close(gsc, r_gsc, sc.dtype)
    else:
        assert gsc is None
    if need_gp:
        assert gp.shape == p.shape and gp.dtype == cd
        if r_gp is None:
            assert torch.equal(gp, torch.zeros_like(p))
        else:
            close(gp[:1], r_gp[:1], x.dtype, scale=max(1.0, r_gx.double().abs().sum().item()))
    else:
        assert gp is None
    return out, h, vt, cnt, gx, gsc, gp


@pytest.mark.parametrize("g", [None, "ADD", "AND", "IAND"])
def test_channels_last_layout_is_kept_and_matches_the_reference(g):
    gen = torch.Generator().manual_seed(1)
    x = channels_last(C, HW, HW, gen=gen)
    assert not x.is_contiguous() and time_dense(x)
    sc = spikes_like(x, gen) if g else None
    v0 = torch.empty_like(x[0]).copy_(torch.randn(x.shape[1:], generator=gen) * 0.3)
    run_case(x, LIF_CHARGE, torch.tensor([0.5]), create_surrogate("ATan"), 1.0, 0.0, False, g=g, sc=sc, v0=v0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_channels_last_with_a_promoted_shortcut(dtype):
    gen = torch.Generator().manual_seed(2)
    x = channels_last(C, HW, HW, dtype=dtype, gen=gen)
    sc = spikes_like(x, gen, torch.float32)
    out, *_ = run_case(x, LIF_CHARGE_NO_DECAY_INPUT, torch.tensor([0.25]), create_surrogate("Sigmoid"), 0.75, None,
                       True, g="IAND", sc=sc)
    assert out.dtype == torch.float32


def test_add_backward_reads_no_shortcut():
    gen = torch.Generator().manual_seed(3)
    x = channels_last(C, HW, HW, gen=gen)
    sc = spikes_like(x, gen)
    # shortcut=None in the backward: ADD's derivatives do not depend on S
    run_case(x, LIF_CHARGE, torch.tensor([0.5]), create_surrogate("ATan"), 1.0, -0.25, False, g="ADD", sc=sc,
             pass_shortcut_to_backward=False)


def test_and_backward_without_its_shortcut_is_refused():
    x = torch.randn(2, 5)
    spec = specialize(IF_CHARGE, create_surrogate("ATan"), create_elementwise("AND"), True, True)
    p = torch.zeros(1)
    out, h, _, _ = triton_forward(x, torch.ones_like(x), p, None, spec, 1.0, 0.0, save_h=True, need_vt=False,
                                  count=False)
    with pytest.raises(ValueError, match="read the shortcut"):
        triton_backward(torch.ones_like(x), None, h, None, p, None, spec, 1.0, 0.0, 2.0, need_gx=True,
                        need_gsc=True, need_gp=False, x_dtype=x.dtype, sc_dtype=x.dtype)


@pytest.mark.parametrize("need", [(False, True, True), (True, False, True), (True, True, False), (False, False, True)])
def test_gradients_not_asked_for_are_none(need):
    need_gx, need_gsc, need_gp = need
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, 5, generator=gen) * 2
    sc = (torch.rand(x.shape, generator=gen) > 0.5).float()
    run_case(x, LIF_CHARGE, torch.tensor([0.5]), create_surrogate("ATan"), 1.0, 0.0, True, g="AND", sc=sc,
             need_gx=need_gx, need_gsc=need_gsc, need_gp=need_gp)


def test_a_neuron_without_learnable_parameter_gives_a_zero_parameter_gradient():
    x = torch.randn(3, 7) * 2
    run_case(x, IF_CHARGE, torch.tensor([0.0, 5.0]), create_surrogate("Rectangular"), 0.5, None, False)


def test_spike_count_over_many_programs_with_any_block():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, 25, generator=gen) * 2
    sc = (torch.rand(x.shape, generator=gen) > 0.5).float()
    for block in (16, 64):  # 7 and 2 programs: per-program counts and parameter partial sums
        with force_block(block):
            run_case(x, LIF_CHARGE, torch.tensor([0.5]), create_surrogate("ATan"), 1.0, 0.0, False, g="AND", sc=sc)


def test_the_autotuned_path_with_one_config(monkeypatch):
    """On the GPU the launchers go through ``triton.autotune``; run that path in the interpreter
    with one small config (more than one cannot run there)."""
    import triton

    for tuned in (multistep._multistep_fwd_tuned, multistep._multistep_bwd_tuned):
        monkeypatch.setattr(tuned, "configs", [triton.Config({"BLOCK": 32}, num_warps=1)])
        monkeypatch.setattr(tuned, "best_config", None, raising=False)
    monkeypatch.setattr(multistep, "interpreting", lambda: False)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(4, 100, generator=gen) * 2  # 4 programs of 32
    run_case(x, LIF_CHARGE, torch.tensor([0.5]), create_surrogate("ATan"), 1.0, 0.0, False)
    for tuned in (multistep._multistep_fwd_tuned, multistep._multistep_bwd_tuned):
        assert tuned.best_config.kwargs["BLOCK"] == 32


def test_autotune_settings_name_real_kernel_arguments():
    for tuned, acc in ((multistep._multistep_fwd_tuned, "CNT"), (multistep._multistep_bwd_tuned, "GP")):
        names = tuned.arg_names
        assert set(tuned.keys) <= set(names) and tuned.reset_to_zero == [acc] and acc in names
        blocks = [c.kwargs["BLOCK"] for c in tuned.configs]
        assert all(b & (b - 1) == 0 for b in blocks) and len(set(map(str, tuned.configs))) > 1
    configs = multistep._multistep_fwd_tuned.configs
    assert [c.kwargs["BLOCK"] for c in multistep._prune(configs, {"N": 3})] == [128]
    assert len(multistep._prune(configs, {"N": 10 ** 6})) == len(configs)


@pytest.mark.parametrize("g", [None, "AND"])
def test_empty_sequences_and_steps(g):
    spec = specialize(LIF_CHARGE, create_surrogate("ATan"), create_elementwise(g) if g else None, True, True)
    p = torch.tensor([0.5])
    for shape in [(0, 2, 3), (3, 0, 2)]:
        x = torch.randn(shape)
        sc = torch.ones(shape, dtype=torch.float64) if g else None
        v0 = torch.full(shape[1:], 0.5)
        for v0_ in (None, v0):
            out, h, vt, cnt = triton_forward(x, sc, p, v0_, spec, 1.0, -0.25, save_h=True, need_vt=True, count=True)
            assert out.shape == shape and out.dtype == (torch.float64 if g else torch.float32)
            assert h.shape == shape and cnt.item() == 0.0
            assert vt.shape == shape[1:] and vt.dtype == torch.float32
            assert torch.equal(vt, v0 if v0_ is not None else torch.full(shape[1:], -0.25))
            gx, gsc, gp = triton_backward(torch.ones_like(out), None, h, sc, p, v0_, spec, 1.0, -0.25, 2.0,
                                          need_gx=True, need_gsc=g is not None, need_gp=True, x_dtype=x.dtype,
                                          sc_dtype=sc.dtype if g else None)
            assert gx.shape == shape and torch.equal(gp, torch.zeros(1))
            assert (gsc.shape == shape and gsc.dtype == torch.float64) if g else gsc is None


def test_fp64_fires_at_a_threshold_fp32_cannot_represent():
    # 0.1 in fp64 is below fp32(0.1): an fp32 threshold would not fire where the reference does
    x = torch.tensor([[0.1, 0.05, 0.1 - 1e-17, 0.1 + 2e-17]], dtype=torch.float64).repeat(3, 1)
    gen = torch.Generator().manual_seed(7)
    go = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out, *_ = run_case(x, IF_CHARGE, torch.zeros(1), create_surrogate("ATan"), 0.1, 0.0, True, go=go)
    assert out[0].tolist() == [1.0, 0.0, 0.0, 1.0]  # an fp32 threshold (0.100000001) fires on none


def test_fp64_gradients_at_fp64_precision():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(6, 2, 7, generator=gen, dtype=torch.float64) * 1.5 + 0.3
    sc = (torch.rand(x.shape, generator=gen) > 0.5).double()
    go = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    _, h, _, _, gx, gsc, gp = run_case(x, LIF_CHARGE, torch.tensor([1 / 3], dtype=torch.float64),
                                       create_surrogate("ATan", alpha=1.7), 0.3, -0.1, False, g="IAND", sc=sc, go=go)
    r = reference(x, LIF_CHARGE, torch.tensor([1 / 3], dtype=torch.float64), create_surrogate("ATan", alpha=1.7),
                  0.3, -0.1, False, go, sc=sc, g=create_elementwise("IAND"))
    assert h.dtype == torch.float64
    torch.testing.assert_close(gx, r[3], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gsc, r[5], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gp, r[4], rtol=1e-11, atol=1e-11)


def test_layouts_the_kernel_cannot_address_are_refused():
    spec = specialize(IF_CHARGE, create_surrogate("ATan"), create_elementwise("ADD"), True, True)
    x = torch.randn(3, 4, 5)
    p = torch.zeros(1)
    with pytest.raises(ValueError, match="time outermost"):
        triton_forward(x.transpose(0, 1), x.transpose(0, 1), p, None, spec, 1.0, 0.0, save_h=False,
                       need_vt=False, count=False)
    with pytest.raises(ValueError, match="strides"):
        triton_forward(x, x.transpose(1, 2).contiguous().transpose(1, 2), p, None, spec, 1.0, 0.0, save_h=False,
                       need_vt=False, count=False)
    with pytest.raises(ValueError, match="params"):
        triton_forward(x, x, p.double(), None, spec, 1.0, 0.0, save_h=False, need_vt=False, count=False)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_fused_op_keeps_channels_last_and_accepts_any_layout(backend):
    gen = torch.Generator().manual_seed(9)
    x = channels_last(C, HW, HW, gen=gen).requires_grad_(True)
    sg = create_surrogate("ATan")

    def fused(inp):
        return multistep_neuron(inp, LIF_CHARGE, torch.tensor([0.5]), sg, 1.0, 0.0, True, backend=backend)

    out = fused(x)[0]
    assert out.stride() == x.stride()
    out.sum().backward()  # an expanded (stride 0) gradient is laid out again before the kernel
    xr = x.detach().clone().requires_grad_(True)
    multistep_reference(xr, LIF_CHARGE, torch.tensor([0.5]), sg, 1.0, 0.0, True)[0].sum().backward()
    close(x.grad, xr.grad, torch.float32)
    y = x.detach().transpose(0, 1)  # time not outermost: copied for the kernel
    torch.testing.assert_close(fused(y)[0], multistep_reference(y, LIF_CHARGE, torch.tensor([0.5]), sg, 1.0, 0.0,
                                                                True)[0])


@settings(max_examples=8)
@given(g=st.sampled_from([None, "ADD", "AND", "IAND"]), hard=st.booleans(), detach=st.booleans(),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]), steps=st.integers(1, 4),
       seed=st.integers(0, 2 ** 16))
def test_launchers_equal_the_reference(g, hard, detach, dtype, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = channels_last(2, 1, 3, T=steps, dtype=dtype, gen=gen, scale=2.0)
    sc = spikes_like(x, gen) if g else None
    run_case(x, LIF_CHARGE, torch.tensor([0.4]), create_surrogate("Sigmoid"), 0.8, -0.2 if hard else None, detach,
             g=g, sc=sc)


# ---- traffic ------------------------------------------------------------------------------------
def test_traffic_table():
    assert traffic_bytes(torch.float16, None, True) == dict(forward=8, backward=8, total=16, min_forward=4,
                                                            min_backward=6, minimum=10)
    assert traffic_bytes(torch.bfloat16, "ADD", True)["total"] == 20
    assert traffic_bytes(torch.float16, "IAND", True)["total"] == 22
    assert traffic_bytes(torch.float32, "AND", True)["total"] == 36
    assert traffic_bytes(torch.float32, None, True)["minimum"] == 20
    inference = traffic_bytes(torch.float16, "ADD", False)
    assert inference["forward"] == inference["minimum"] == 6 and inference["backward"] == 0
    assert traffic_bytes(torch.float64, None, True)["total"] == 48


def test_compile_ahead_refuses_the_interpreter():
    spec = specialize(IF_CHARGE, create_surrogate("ATan"), None, True, True)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        compile_ahead(spec)


def test_block_is_forced_only_to_powers_of_two():
    with pytest.raises(ValueError):
        with force_block(48):
            pass
