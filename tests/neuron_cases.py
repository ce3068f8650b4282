"""A Hypothesis strategy over every core neuron x surrogate x reset x detach x g x dtype x shape,
shared by the tests of the fused implementations."""
import torch
from hypothesis import strategies as st

import sewforge


@st.composite
def neuron_cases(draw, max_T=9, sizes=(1, 2, 3, 5, 7, 11, 13), max_dims=3,
                 dtypes=(torch.float32, torch.float16, torch.bfloat16)):
    """``(name, kwargs, shape, dtype, g, scale, seed)``; ``kwargs`` always has ``v_reset`` below
    ``v_threshold``."""
    name = draw(st.sampled_from(["IF", "LIF", "PLIF"]))
    kw = dict(
        v_threshold=draw(st.sampled_from([1.0, 0.5, 0.75])),
        v_reset=draw(st.sampled_from([0.0, None, -0.25])),
        detach_reset=draw(st.booleans()),
        surrogate=draw(st.sampled_from(sewforge.list_surrogates())),
    )
    if name == "LIF":
        kw.update(tau=draw(st.floats(1.1, 10.0)), decay_input=draw(st.booleans()))
    if name == "PLIF":
        kw.update(init_tau=draw(st.floats(1.1, 10.0)), decay_input=draw(st.booleans()))
    if kw["v_reset"] is not None and kw["v_reset"] >= kw["v_threshold"]:
        kw["v_reset"] = 0.0
    T = draw(st.integers(1, max_T))
    shape = (T,) + tuple(draw(st.lists(st.sampled_from(sizes), min_size=0, max_size=max_dims)))
    dtype = draw(st.sampled_from(list(dtypes)))
    g = draw(st.sampled_from([None, "ADD", "AND", "IAND"]))
    scale = draw(st.sampled_from([0.5, 1.5, 4.0]))
    seed = draw(st.integers(0, 2 ** 16))
    return name, kw, shape, dtype, g, scale, seed
