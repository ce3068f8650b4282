"""Neurons with several state variables, the previous spike and per-channel parameters: the fused
CPU kernel against the reference (the author's step function under autograd), hand-computed traces,
the derived Jacobian against finite differences, per-channel gradients against per-channel runs
of a scalar neuron, and the errors raised when a class is defined or built."""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

import sewforge
from sewforge.kernels.multistate import multistate_from_step
from sewforge.neurons import ALIFNode, CUBALIFNode, ChannelLIFNode, IzhikevichNode, LTLIFNode, Param, StepNeuron
from sewforge.neurons import StepFunctionError, create_neuron
from sewforge.testing import check_neuron, compare_to_reference, fused_backends

BACKENDS = ("torch",) + fused_backends("cpu")  # the reference, the C kernel, Triton's interpreter


def run(neuron, x, backend):
    neuron.backend = backend
    return neuron(x)


# ---- hand-computed traces -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_adaptive_lif_trace_by_hand(backend):
    # k = 0.5, rho = 0.9, beta = 0.5, hard reset to 0, x = 1.5 at every step:
    # t0 h=0.75 a=0 -> 0; t1 h=1.125 a=0 -> spike, v=0; t2 h=0.75 a=1 (the spike of t1) f=0.25 -> 0;
    # t3 h=1.125 a=0.9 f=0.675 -> 0; t4 h=1.3125 a=0.81 f=0.9075 -> 0; t5 h=1.40625 a=0.729 f=1.04175 -> spike
    n = ALIFNode(stateful=True)
    out = run(n, torch.full((6, 1), 1.5, dtype=torch.float64), backend)
    assert out.flatten().tolist() == [0, 1, 0, 0, 0, 1]
    v, a, s = (t.item() for t in n.v)
    assert v == 0.0 and a == pytest.approx(0.729, abs=1e-12) and s == 1.0
    lif = create_neuron("LIF", tau=2.0)  # the same neuron without adaptation fires every other step
    assert lif(torch.full((6, 1), 1.5)).flatten().tolist() == [0, 1, 0, 1, 0, 1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_cuba_lif_trace_by_hand(backend):
    # k = 0.5, syn = 0.5, x = 1, 1, 0, 0: i = 1, 1.5, 0.75, 0.375; v = 0.5, 1.0 (spike, reset), 0.375, 0.375
    n = CUBALIFNode(stateful=True)
    out = run(n, torch.tensor([[1.0], [1.0], [0.0], [0.0]], dtype=torch.float64), backend)
    assert out.flatten().tolist() == [0, 1, 0, 0]
    assert [t.item() for t in n.v] == [0.375, 0.375, 0.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_izhikevich_spike_raises_recovery_next_step(backend):
    n = IzhikevichNode(stateful=True, d=0.25)
    run(n, torch.tensor([[4.0]]), backend)  # one spike: v = 2 >= 1
    u1 = n.v[1].item()
    run(n, torch.tensor([[0.0]]), backend)  # u += dt * a * (b * v - u) + d * s with v = 0, s = 1
    assert n.v[1].item() == pytest.approx(u1 + 0.5 * 0.2 * (0.2 * 0.0 - u1) + 0.25, abs=1e-6)
    assert n.v[2].item() == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_equals_one_call(backend):
    x = torch.randn(8, 3, 5, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.4
    for cls in (ALIFNode, IzhikevichNode, CUBALIFNode):
        whole = cls(backend=backend)(x)
        n = cls(stateful=True, backend=backend)
        parts = torch.cat([n(x[:3]), n(x[3:])])
        assert torch.equal(whole, parts), cls.__name__


def test_spike_count_is_the_same_on_every_backend():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(7, 2, 3, 4, generator=gen) * 1.5 + 0.5
    sc = (torch.rand(x.shape, generator=gen) > 0.5).float()
    counts = []
    for b in BACKENDS:
        n = ChannelLIFNode(channels=3, k=[0.3, 0.5, 0.8], backend=b)
        n.count_spikes = True
        n(x, shortcut=sc, g="IAND")  # the neuron's own spikes, before g
        counts.append(n.spike_count.item())
    want = ChannelLIFNode(channels=3, k=[0.3, 0.5, 0.8], backend="torch")(x).sum().item()
    assert counts == [want] * len(BACKENDS) and want > 0


# ---- fused CPU kernel against the reference -------------------------------------------------------
# every registered neuron (these included) runs check_neuron's full grid in test_kernels.py; here fp64 too
@pytest.mark.parametrize("name,kw", [("ALIF", {}), ("Izhikevich", {}), ("CUBALIF", {}), ("ChannelLIF", {"channels": 2})])
def test_new_neurons_match_reference_in_float64(name, kw):
    assert check_neuron(name, dtypes=(torch.float64,), gs=(None, "IAND"), **kw) == 12


@settings(max_examples=15)
@given(name=st.sampled_from(["ALIF", "Izhikevich", "CUBALIF", "ChannelLIF"]),
       T=st.integers(1, 7), dims=st.lists(st.sampled_from([1, 2, 3, 5]), min_size=1, max_size=3),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
       surrogate=st.sampled_from(["ATan", "Sigmoid", "PiecewiseQuadratic", "Rectangular"]),
       v_reset=st.sampled_from([0.0, None, -0.25]), detach=st.booleans(), g=st.sampled_from([None, "ADD", "AND"]),
       seed=st.integers(0, 2 ** 16))
def test_hypothesis_fused_kernels_match_reference(name, T, dims, dtype, surrogate, v_reset, detach, g, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (T,) + tuple(dims)
    kw = {}
    if name == "ChannelLIF":
        shape = (T, dims[0], 3) + tuple(dims[1:])
        kw = {"channels": 3, "k": torch.rand(3, generator=gen).mul(0.8).add(0.1).tolist(),
              "theta": torch.rand(3, generator=gen).add(0.5).tolist()}
    n = create_neuron(name, v_reset=v_reset, detach_reset=detach, surrogate=surrogate, **kw)
    x = (torch.randn(shape, generator=gen) * 1.5 + 0.3).to(dtype)
    sc = (torch.rand(shape, generator=gen) > 0.5).to(dtype) if g else None
    compare_to_reference(n, x, shortcut=sc, g=g, grad_out=torch.randn(shape, generator=gen))  # every fused path


def test_triton_backend_runs_the_multistate_kernels(monkeypatch):
    if "triton" not in fused_backends("cpu"):
        pytest.skip("no Triton interpreter")
    import sewforge.kernels.multistate_triton as mt

    calls = []
    for name in ("forward_launch", "backward_launch"):
        orig = getattr(mt, name)
        monkeypatch.setattr(mt, name, lambda *a, _o=orig, _n=name: (calls.append(_n), _o(*a))[1])
    x = (torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0)) * 1.5).requires_grad_(True)
    ALIFNode(backend="triton")(x).sum().backward()
    assert calls == ["forward_launch", "backward_launch"]
    assert "ms_fwd" in mt.triton_source(ALIFNode._multistate)


class Refractory(StepNeuron):
    """One state and the previous spike: a spike holds the potential down for the next step."""

    params = {"r": Param(0.75, learnable=True)}

    @staticmethod
    def step(v, x, s, p):
        return v + (x - (v - p.v_rest)) * 0.5 - p.r * s


class ConstantState(StepNeuron):
    """A state that is a constant and one the step never reads."""

    states = ("v", "c", "unused")

    @staticmethod
    def step(v, c, unused, x, p):
        return v * 0.5 + x + c, 0.25, 2


@pytest.mark.parametrize("cls", [Refractory, ConstantState])
def test_single_state_with_previous_spike_and_constant_states(cls):
    assert cls._multistate is not None
    gen = torch.Generator().manual_seed(5)
    for v_reset in (0.0, None):
        for detach in (True, False):
            x = torch.randn(6, 3, 4, generator=gen) * 1.5 + 0.3
            compare_to_reference(cls(v_reset=v_reset, detach_reset=detach), x,
                                 grad_out=torch.randn(x.shape, generator=gen))


@pytest.mark.parametrize("backend", fused_backends("cpu"))
def test_torch_compile_captures_the_neuron_whole(backend):
    torch._dynamo.reset()
    n = ChannelLIFNode(channels=3, backend=backend)
    x = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(2)) * 1.5 + 0.3
    explained = torch._dynamo.explain(n)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    xc, xe = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = torch.compile(n, fullgraph=True, backend="aot_eager")(xc)
    out.sum().backward()
    grads = [p.grad.clone() for p in n.parameters()]
    n.zero_grad()
    want = n(xe)
    want.sum().backward()
    assert torch.equal(out, want) and torch.equal(xc.grad, xe.grad)
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, n.parameters()))


# ---- per-channel parameters ---------------------------------------------------------------------------
def _channel_oracle(k, theta, x, go, **kw):
    """Per-channel gradients from one scalar LTLIF run per channel (its own, single-state kernels)."""
    spikes, gk, gt = [], [], []
    for c in range(x.shape[2]):
        n = LTLIFNode(k=k[c], theta=theta[c], backend="torch", **kw)
        xc = x[:, :, c].detach().clone()
        o = n(xc)
        (o * go[:, :, c]).sum().backward()
        spikes.append(o.detach())
        gk.append(n.k.grad.item())
        gt.append(n.theta.grad.item())
    return torch.stack(spikes, 2), torch.tensor(gk), torch.tensor(gt)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_per_channel_gradient_equals_per_channel_runs(backend, channels_last):
    gen = torch.Generator().manual_seed(7)
    C = 4
    k, theta = [0.2, 0.5, 0.7, 0.9], [0.6, 1.0, 1.3, 0.8]
    x = torch.randn(5, 2, 3, 3, C, generator=gen).permute(0, 1, 4, 2, 3) * 1.5 + 0.3  # [T, B, C, H, W]
    if not channels_last:
        x = x.contiguous()
    else:
        assert x[0].is_contiguous(memory_format=torch.channels_last)
    go = torch.randn(x.shape, generator=gen)
    n = ChannelLIFNode(channels=C, k=k, theta=theta, v_reset=None, backend=backend)
    xb = x.clone().requires_grad_(True)
    out = n(xb)
    (out * go).sum().backward()
    s_ref, gk, gt = _channel_oracle(k, theta, x, go, v_reset=None)
    assert torch.equal(out, s_ref)
    torch.testing.assert_close(n.k.grad, gk, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(n.theta.grad, gt, rtol=1e-5, atol=1e-5)


def test_per_channel_parameters_train_with_an_optimizer():
    n = ChannelLIFNode(channels=3)
    assert n.k.shape == (3,) and n.theta.shape == (3,)
    opt = torch.optim.SGD(n.parameters(), lr=0.1)
    x = torch.randn(4, 2, 3, 5, generator=torch.Generator().manual_seed(1)) + 0.8
    n(x).sum().backward()
    before = n.k.detach().clone()
    opt.step()
    assert not torch.equal(before, n.k.detach())
    assert "channels=3" in repr(n)


def test_per_channel_channel_errors():
    with pytest.raises(ValueError, match=r"ChannelLIFNode: the per-channel parameters k, theta need channels="):
        ChannelLIFNode()
    n = ChannelLIFNode(channels=3)
    with pytest.raises(ValueError, match=r"hold 3 values \(channels=3\) but the input \(2, 1, 4\) has 4 channels.*"
                                         r"channels=4"):
        n(torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match=r"need an input \[T, B, C, \.\.\.\] with C = 3 channels"):
        n(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="k has 2 values but channels=3"):
        ChannelLIFNode(channels=3, k=[0.5, 0.5])
    with pytest.raises(ValueError, match="no parameter is per-channel"):
        ALIFNode(channels=3)


# ---- the derived Jacobian against finite differences of the step function ---------------------------
@pytest.mark.parametrize("cls", [ALIFNode, IzhikevichNode, CUBALIFNode, ChannelLIFNode])
def test_derived_jacobian_matches_finite_differences(cls):
    eq = cls._multistate
    K = eq.num_states
    gen = torch.Generator().manual_seed(11)
    u = [torch.randn((), generator=gen, dtype=torch.float64) for _ in range(K)]
    xv = torch.randn((), generator=gen, dtype=torch.float64)
    sp = torch.tensor(0.3, dtype=torch.float64)
    p = torch.rand(len(eq.param_names), generator=gen, dtype=torch.float64) + 0.5
    v_rest = -0.25
    jac = eq.jacobian(u, xv, sp, p, v_rest)

    class P:
        def __init__(self, vals):
            self.__dict__.update(dict(zip(eq.param_names, vals)))
            self.v_rest = v_rest

    def F(u_, x_, s_, p_):
        args = list(u_) + [x_] + ([s_] if eq.uses_s else [])
        out = eq.step(*args, P(p_))
        return [float(o) for o in (out if isinstance(out, tuple) else (out,))]

    eps = 1e-6

    def fd(shift):
        hi, lo = F(*shift(eps)), F(*shift(-eps))
        return [(a - b) / (2 * eps) for a, b in zip(hi, lo)]

    for i in range(K):
        col = fd(lambda e: ([ui + (e if j == i else 0) for j, ui in enumerate(u)], xv, sp, p))
        for m in range(K):
            assert float(jac["d_u"][m][i]) == pytest.approx(col[m], abs=1e-6), (m, i)
    col = fd(lambda e: (u, xv + e, sp, p))
    assert [float(d) for d in jac["d_x"]] == pytest.approx(col, abs=1e-6)
    if eq.uses_s:
        col = fd(lambda e: (u, xv, sp + e, p))
        assert [float(d) for d in jac["d_s"]] == pytest.approx(col, abs=1e-6)
    for k, name in enumerate(eq.learnable_names):
        j = eq.param_names.index(name)
        col = fd(lambda e: (u, xv, sp, p + e * torch.nn.functional.one_hot(torch.tensor(j), len(p))))
        assert [float(jac["d_p"][m][k]) for m in range(K)] == pytest.approx(col, abs=1e-6), name


# ---- the single-state path is untouched ---------------------------------------------------------------
def test_single_state_neurons_keep_the_charge_kernels():
    assert LTLIFNode._multistate is None and LTLIFNode().charge_equation() is LTLIFNode._charge
    assert ALIFNode._charge is None
    with pytest.raises(TypeError, match="no single-state charge equation"):
        ALIFNode().charge_equation()


def test_multistate_neuron_in_a_sew_block():
    block = sewforge.BLOCKS.get("SEW")(4, 4, neuron="ALIF", g="AND", zero_init=True)
    x = (torch.rand(3, 2, 4, 6, 6) > 0.5).float().requires_grad_(True)
    out = block(x)
    assert torch.equal(out, x)  # zero-init AND: the adapting neuron fires at every step, g(A, S) = S
    out.sum().backward()
    assert x.grad is not None


# ---- errors when the class is defined -------------------------------------------------------------------
def _define(**attrs):
    return type("Bad", (StepNeuron,), attrs)


def test_wrong_number_of_returned_states():
    def step(v, a, x, p):
        return v + x

    with pytest.raises(StepFunctionError, match=r"step function .*step \(.*test_multistate.py:\d+\) returns 1 value but "
                                                r"states = \('v', 'a'\): return one new value per state"):
        _define(states=("v", "a"), step=staticmethod(step))


def test_states_must_match_the_step_arguments():
    def step(v, b, x, p):
        return v + x, b

    with pytest.raises(StepFunctionError, match=r"test_multistate.py:\d+\) takes \(v, b, x, p\) but states = "
                                                r"\('v', 'a'\): a step takes the states in that order, then x, "
                                                r"optionally s"):
        _define(states=("v", "a"), step=staticmethod(step))


def test_state_names_must_not_shadow_x_s_p():
    def step(v, s, x, p):
        return v + x, s

    with pytest.raises(StepFunctionError, match=r"state name \['s'\] taken: x is the input, s the previous spike"):
        _define(states=("v", "s"), step=staticmethod(step))


def test_izhikevich_fires_for_inputs_of_order_one():
    for b in BACKENDS:
        assert IzhikevichNode(backend=b)(torch.full((20, 1), 0.5)).sum().item() >= 1
        assert IzhikevichNode(backend=b)(torch.full((20, 1), 0.1)).sum().item() == 0  # settles below threshold


def test_fire_reading_unknown_names():
    def step(v, a, x, p):
        return v + x, a

    def fire(v, a, p):
        return v - p.gamma * a

    with pytest.raises(StepFunctionError, match=r"fire, .*test_multistate.py:\d+: `return v - p.gamma \* a`: reads "
                                                r"the parameter p.gamma, which is not declared"):
        _define(states=("v", "a"), step=staticmethod(step), fire=staticmethod(fire))

    def fire2(v, x, p):
        return v - x

    with pytest.raises(StepFunctionError, match=r"takes \(v, x, p\); fire takes the states \(v, a\) and p"):
        _define(states=("v", "a"), step=staticmethod(step), fire=staticmethod(fire2))


def test_undeclared_parameter_and_unsupported_operation_name_the_line():
    def step(v, a, x, s, p):
        return v + x * p.k, a + s

    with pytest.raises(StepFunctionError, match=r"test_multistate.py:\d+: `return v \+ x \* p.k, a \+ s`: reads the "
                                                r"parameter p.k, which is not declared"):
        _define(states=("v", "a"), step=staticmethod(step))

    def step2(v, a, x, p):
        return v + math.exp(x), a

    with pytest.raises(StepFunctionError, match=r"test_multistate.py:\d+: `return v \+ math.exp\(x\), a`: .*allowed"):
        _define(states=("v", "a"), step=staticmethod(step2))


def test_initial_values_of_other_states():
    class Init(StepNeuron):
        states = ("v", "a")
        initial = {"a": 0.5}

        @staticmethod
        def step(v, a, x, p):
            return v + x + a, a

    for b in BACKENDS:
        assert Init(backend=b)(torch.tensor([[0.6]])).item() == 1.0  # 0 + 0.6 + 0.5 >= 1
    with pytest.raises(StepFunctionError, match=r"initial values for \['v'\]"):
        multistate_from_step(Init.step, ("v", "a"), initial={"v": 1.0})


def test_derivation_is_cached_on_disk(tmp_path, monkeypatch):
    import sewforge.kernels.multistate as ms

    monkeypatch.setenv("SEWFORGE_KERNEL_CACHE", str(tmp_path))
    first = ms.multistate_from_step(ALIFNode.step, ("v", "a"), ("k", "rho", "beta"), learnable=("beta",),
                                    fire=ALIFNode.fire)
    assert list(tmp_path.glob("derived/multistate_*.json"))

    def no_sympy(*a, **kw):
        raise AssertionError("derived again")

    monkeypatch.setattr(ms, "_derive_sympy", no_sympy)
    again = ms.multistate_from_step(ALIFNode.step, ("v", "a"), ("k", "rho", "beta"), learnable=("beta",),
                                    fire=ALIFNode.fire)
    assert again.c == first.c and again.c == ALIFNode._multistate.c


def test_networks_give_per_channel_neurons_their_channels():
    import functools

    from sewforge.neurons import neuron_needs_channels
    from sewforge.spec import build

    assert neuron_needs_channels("ChannelLIF") and neuron_needs_channels(ChannelLIFNode)
    assert neuron_needs_channels(functools.partial(create_neuron, "ChannelLIF", v_reset=None))
    assert not neuron_needs_channels(functools.partial(create_neuron, "ChannelLIF", channels=3))
    assert not neuron_needs_channels("PLIF") and not neuron_needs_channels(lambda: None)
    block = sewforge.BLOCKS.get("SEWBottleneck")(8, 16, stride=2, neuron="ChannelLIF")
    assert [tuple(m.k.shape) for m in (block.sn1, block.sn2, block.sn3, block.downsample_sn)] == [(4,), (4,), (16,),
                                                                                                   (16,)]
    net = build("c8k3s1-BN-ChannelLIF-{SEW Block (c16)-MPk2s2}*1-FC4-ChannelLIF", (2, 8, 8))
    sizes = sorted({tuple(p.shape) for n, p in net.named_parameters() if n.endswith(".theta")})
    assert sizes == [(4,), (8,), (16,)]
    x = torch.rand(3, 2, 2, 8, 8)
    out = net(x)
    out.sum().backward()
    assert out.shape == (2, 4) and all(p.grad is not None for n, p in net.named_parameters() if n.endswith(".k"))


@pytest.mark.parametrize("channels_last", [False, True])
def test_custom_op_schema_fake_and_autograd_registration(channels_last):
    from sewforge.kernels import multistate as ms
    from sewforge.surrogates import create_surrogate

    eq = ChannelLIFNode._multistate
    key, how = ms._resolve(eq, type(create_surrogate("ATan")), None, False, True, torch.float32, "cpu")
    assert how == "cpu"
    x = torch.randn(3, 2, 4, 3, 3)
    if channels_last:
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    x.requires_grad_(True)
    P = ms.param_table(eq, {"k": torch.full((4,), 0.5, requires_grad=True), "theta": torch.ones(4)}, 4)
    S = ms._initial(x, eq, None, None)
    for need_state in (False, True):
        result = torch.library.opcheck(
            torch.ops.sewforge.multistate_forward.default,
            (x, None, P, S, key, how, 1.0, None, 2.0, True, need_state, True),
            test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
        assert set(result.values()) == {"SUCCESS"}, result


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_double_backward_through_a_multistate_kernel_is_refused_with_a_clear_error(backend):
    """A gradient penalty through a fused multi-state neuron: the kernels' gradients have no
    derivative, so differentiating them again must say so (the reference can)."""
    x = torch.randn(4, 2, 6, requires_grad=True)
    weights = torch.arange(48.0).reshape(4, 2, 6)
    out = create_neuron("ALIF", backend=backend)(x)
    (gx,) = torch.autograd.grad((out * weights).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        (gx.pow(2).sum() + x.sum()).backward()
    x.grad = None
    out = create_neuron("ALIF", backend="torch")(x)
    (gx,) = torch.autograd.grad((out * weights).sum(), x, create_graph=True)
    (gx.pow(2).sum() + x.sum()).backward()  # the reference differentiates its own backward
    assert x.grad is not None
