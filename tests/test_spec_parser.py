"""Spec strings: the paper's notation, canonical printing, round trips and error messages."""
from __future__ import annotations

import pickle
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sewforge.registry import BLOCKS
from sewforge.spec import (BatchNorm, Block, Call, Conv, Dropout, GlobalPool, Linear, Neuron, Pool, Repeat,
                           SpecError, infer, parse, to_spec)
from sewforge.spec.graph import _count
from sewforge.spec.parser import MAX_DEPTH

# Every network string printed in the paper (Tables 4-6, section 4, Appendix A.3/A.5), as printed,
# with the line breaks and the U+FFFE pdftotext leaves where a '-' broke a line.
PAPER_STRINGS = {
    "7B-Net, section 4.2": "c32k3s1-BN-PLIF-{SEW Block-MPk2s2}*7-FC11",
    "7B-Net, Table 5": "c32k3s1-BN-PLIF-{SEW Block (c32) -MPk2s2}*7-FC11",
    "Wide-7B-Net, section 4.3": "c64k3s1-BN-PLIF-{SEW\nBlock (c64)-MPk2s2}*4-c128k3s1-BN-PLIF-{SEW Block (c128)-MPk2s2}*3-FC10",
    "Wide-7B-Net, Table 6": "c64k3s1-BN-PLIF-{SEW Block (c64)-MPk2s2}*4-c128k3s1-\nBN-PLIF-{SEW Block (c128)-MPk2s2}*3-FC10",
    "PLIF net DVS Gesture, Table 5": "{c128k3s1-BN-PLIF-MPk2s2}*5-DP\ufffeFC512-PLIF-DP-FC110-PLIF-APk10s10",
    "PLIF net CIFAR10-DVS, Table 6": "{c128k3s1-BN-PLIF-MPk2s2}*4-DP-FC512-PLIF-DP\ufffeFC100-PLIF-APk10s10",
    "SLAYER-like net, Table 5": "MPk4-c64k3-LIF-c128k3-LIF-APk2-c128k3-LIF-APk2-FC256-LIF-FC11",
    "identity 7B-Net, Appendix A.3": "c32k3s1-BN-PLIF-{MPk2s2}*7-FC11",
    "CIFAR-10 net, Table 9": "c32k3s1-BN-IF-{{SEW Block (c32)}*2-MPk2s2}*5-FC10",
    "CIFAR-10 net, supplement": "c32k3s1-BN-IF-{{SEW Block(c32k3s1)}*2-MPk2s2}*5-FC10",
}

CANONICAL = {
    "7B-Net, section 4.2": "c32k3s1-BN-PLIF-{SEW-MPk2s2}*7-FC11",
    "7B-Net, Table 5": "c32k3s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11",
    "Wide-7B-Net, section 4.3": "c64k3s1-BN-PLIF-{SEW(c64)-MPk2s2}*4-c128k3s1-BN-PLIF-{SEW(c128)-MPk2s2}*3-FC10",
    "Wide-7B-Net, Table 6": "c64k3s1-BN-PLIF-{SEW(c64)-MPk2s2}*4-c128k3s1-BN-PLIF-{SEW(c128)-MPk2s2}*3-FC10",
    "PLIF net DVS Gesture, Table 5": "{c128k3s1-BN-PLIF-MPk2s2}*5-DP-FC512-PLIF-DP-FC110-PLIF-APk10s10",
    "PLIF net CIFAR10-DVS, Table 6": "{c128k3s1-BN-PLIF-MPk2s2}*4-DP-FC512-PLIF-DP-FC100-PLIF-APk10s10",
    "SLAYER-like net, Table 5": "MPk4s4-c64k3s1-LIF-c128k3s1-LIF-APk2s2-c128k3s1-LIF-APk2s2-FC256-LIF-FC11",
    "identity 7B-Net, Appendix A.3": "c32k3s1-BN-PLIF-{MPk2s2}*7-FC11",
    "CIFAR-10 net, Table 9": "c32k3s1-BN-IF-{{SEW(c32)}*2-MPk2s2}*5-FC10",
    "CIFAR-10 net, supplement": "c32k3s1-BN-IF-{{SEW(c32)}*2-MPk2s2}*5-FC10",
}


@pytest.mark.parametrize("row", sorted(PAPER_STRINGS))
def test_every_paper_string_parses_to_its_canonical_form(row):
    spec = parse(PAPER_STRINGS[row])
    assert spec.to_spec() == CANONICAL[row]
    assert parse(spec.to_spec()) == spec


def test_paper_7b_net_nodes():
    spec = parse("c32k3s1-BN-PLIF-{SEW Block (c32)-MPk2s2}*7-FC11")
    assert spec.nodes == (Conv(32, 3, 1), BatchNorm(), Neuron("PLIF"),
                          Repeat((Block("SEW", 32), Pool("MP", 2, 2)), 7), Linear(11))


def test_plif_net_of_table5_has_1_70m_parameters():
    # conv layers followed by BN have no bias; the voting layer APk10s10 pools 110 features to 11
    graph = infer(PAPER_STRINGS["PLIF net DVS Gesture, Table 5"], (2, 128, 128))
    assert graph.total_params == 1_698_933  # "1.70M" in Table 5
    assert graph.output_shape == (11,)


def test_supplement_typo_points_at_the_extra_brace():
    # the supplement prints "{{SEW Block(c32k3s1)}}*2-MPk2s2}*5": one '}' too many
    text = "c32k3s1-BN-IF-{{SEW Block(c32k3s1)}}*2-MPk2s2}*5-FC10"
    with pytest.raises(SpecError) as info:
        parse(text)
    err = info.value
    assert err.pos == text.index("}}") + 1
    assert "unmatched '}'" in str(err)


@pytest.mark.parametrize("text, expected", [
    ("SEW", Block("SEW")),
    ("SEW Block", Block("SEW")),
    ("SEW(c32)", Block("SEW", 32)),
    ("sew block (C32K3S1)", Block("SEW", 32)),
    ("SEW(c64s2, g=IAND)", Block("SEW", 64, 2, kwargs=(("g", "IAND"),))),
    ("SEW(c32, g=iand, zero_init=true)", Block("SEW", 32, kwargs=(("g", "IAND"), ("zero_init", True)))),
    ("SEW(k5)", Block("SEW", kernel=5)),
    ("SEW(s2)", Block("SEW", stride=2)),
    ("Basic Block (c32)", Block("SpikingResNet", 32)),
    ("Spiking ResNet Block (c32)", Block("SpikingResNet", 32)),
    ("SpikingResNet(c32)", Block("SpikingResNet", 32)),
    ("Plain Block (c32)", Block("Plain", 32)),
    ("plain", Block("Plain")),
    ("SEW Bottleneck(c256s2)", Block("SEWBottleneck", 256, 2)),
    ("SpikingBottleneck(c256)", Block("SpikingBottleneck", 256)),
    ("SEW(c32, neuron=LIF(tau=3))", Block("SEW", 32, kwargs=(("neuron", Call("LIF", (), (("tau", 3),))),))),
    ("PLIF", Neuron("PLIF")),
    ("plif", Neuron("PLIF")),
    ("LIF(tau=2)", Neuron("LIF", (("tau", 2),))),
    ("IF(v_threshold=0.5)", Neuron("IF", (("v_threshold", 0.5),))),
    ("IF(v_reset=None, v_threshold=-1e-1)", Neuron("IF", (("v_reset", None), ("v_threshold", -0.1)))),
    ("PLIF(surrogate=Sigmoid)", Neuron("PLIF", (("surrogate", "Sigmoid"),))),
    ("PLIF(surrogate=sigmoid(alpha=4))", Neuron("PLIF", (("surrogate", Call("Sigmoid", (), (("alpha", 4),))),))),
    ("c32k3", Conv(32, 3, 1)),
    ("c32k3s2p1", Conv(32, 3, 2)),
    ("c32k3s2p0", Conv(32, 3, 2, 0)),
    ("c32k1s1(bias=True)", Conv(32, 1, 1, bias=True)),
    ("MPk2", Pool("MP", 2, 2)),
    ("MPk3s2p1", Pool("MP", 3, 2, 1)),
    ("apk10s10", Pool("AP", 10, 10)),
    ("FC10", Linear(10)),
    ("fc 10", Linear(10)),
    ("FC10(bias=False)", Linear(10, False)),
    ("DP", Dropout(0.5)),
    ("DP(0.2)", Dropout(0.2)),
    ("DP(p=0.2)", Dropout(0.2)),
    ("GAP", GlobalPool()),
    ("BN(eps=1e-3)", BatchNorm((("eps", 0.001),))),
    ("<SEW>*2", Repeat((Block("SEW"),), 2)),
    ("{SEW}\u00d72", Repeat((Block("SEW"),), 2)),
])
def test_forms(text, expected):
    assert parse(text).nodes == (expected,)
    assert parse(to_spec(parse(text))).nodes == (expected,)


def test_nested_repetition_and_angle_brackets():
    spec = parse("c8k3-<{SEW-MPk2s2}*2-PLIF>*3")
    assert spec.nodes[1] == Repeat((Repeat((Block("SEW"), Pool("MP", 2, 2)), 2), Neuron("PLIF")), 3)
    assert spec.to_spec() == "c8k3s1-{{SEW-MPk2s2}*2-PLIF}*3"
    assert _count(spec.nodes) == 1 + 3 * (2 * 2 + 1)


def test_whitespace_and_case_do_not_matter():
    reference = parse("c32k3s1-BN-PLIF-{SEW(c32)-MPk2s2}*7-FC11")
    assert parse(" C32 K3 S1 - bn - plif - { sew block ( c 32 ) - mp k2 s2 } * 7 - fc 11 ") == reference
    assert parse("c32k3s1\u2013BN\u2212PLIF\u00ad{SEW(c32)-MPk2s2}*7-FC11") == reference  # dashes from PDFs
    assert parse("C32K3S1-BN-PLIF-{SEW BLOCK (C32)-MPK2S2}*7-FC11") == reference


def test_plugin_block_resolves_through_the_registry():
    class Twin(nn.Module):
        """A plugin block: two SEW blocks in a row."""

        expansion = 1

        def __init__(self, in_channels, out_channels, stride=1, *, neuron, g="ADD", zero_init=False,
                     kernel_size=3, fuse=True, depth=2):
            super().__init__()
            factory = BLOCKS.get("SEW")
            self.inner = nn.Sequential(*[factory(in_channels if i == 0 else out_channels, out_channels,
                                                 stride if i == 0 else 1, neuron=neuron, g=g, fuse=fuse)
                                         for i in range(depth)])
            self.fuse = fuse
            self.sn_last = self.inner[-1].sn_last

        def out_shape(self, shape):
            return self.inner[-1].out_shape(self.inner[0].out_shape(shape))

        def forward(self, x):
            return self.inner(x)

    BLOCKS.add("TwinSEW", Twin, description="test plugin block", uses_g=True)
    try:
        spec = parse("c4k3-BN-IF-TwinSEW Block (c8s2, depth=3, g=IAND)-FC2")
        assert spec.nodes[3] == Block("TwinSEW", 8, 2, kwargs=(("depth", 3), ("g", "IAND")))
        graph = infer(spec, (2, 8, 8))
        assert graph.nodes[3].out_shape == (8, 4, 4)
        assert parse(spec.to_spec()) == spec
        with pytest.raises(SpecError, match="no argument 'dept'") as info:
            infer("c4k3-TwinSEW(dept=3)", (2, 8, 8))
        assert "depth" in info.value.suggestions
    finally:
        BLOCKS.unregister("TwinSEW")


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, token, message, suggestion", [
    ("c32k3s1-BN-PLFI-FC10", "PLFI", "unknown layer, neuron or block 'PLFI'", "PLIF"),
    ("c32k3s1-BN-PLIF-{SEW Blok (c32)-MPk2s2}*7-FC11", "SEW Blok", "unknown", None),
    ("c32k3s1-BN-LIFF(tau=2)-FC10", "LIFF", "unknown", "LIF"),
    ("c32k3s1-BN-PLIF-{SEW(c32, g=IAN)}*2", "g=IAN", "unknown element-wise function 'IAN'", "IAND"),
    ("c32k3s1-BN-PLIF(surrogate=Atann)", "surrogate=Atann", "unknown surrogate", "ATan"),
    ("c32k3s1-BN-PLIF-FC0", "FC0", "at least 1", None),
    ("c32k3s1-BN-PLIF-{SEW}*0", "0", "between 1 and", None),
    ("c32s1-BN", "c32s1", "kernel size is missing", None),
    ("c32k3s1-BN-MP2-FC10", "MP2", "pooling is written", None),
    ("c32k3s1--BN", "-", "two '-' in a row", None),
    ("-c32k3s1", "-", "starts with '-'", None),
    ("c32k3s1-", "", "ends with '-'", None),
    ("c32k3s1-{BN-PLIF", "{", "never closed", None),
    ("c32k3s1-{BN-PLIF}", "", "expected '*N'", None),
    ("c32k3s1-{BN-PLIF>*2", ">", "closed by '>'", None),
    ("c32k3s1-BN}", "}", "unmatched '}'", None),
    ("c32k3s1-{}*2", "}", "empty group", None),
    ("c32k3s1-BN-PLIF[8]", "[", "unexpected character '['", None),
    ("c32k3s1-BN-DP(1.5)", "1.5", "drop probability", None),
    ("c32k3s1-SEW(c32, c64)", "c64", "positional argument is its shape", None),
    ("c32k3s1-SEW(c32, stride=2)", "stride=2", "not a spec argument", None),
    ("c32k3s1-BN(foo=1)", "foo=1", "no argument 'foo'", None),
    ("", "", "empty spec", None),
])
def test_error_messages_point_at_the_token(text, token, message, suggestion):
    with pytest.raises(SpecError) as info:
        parse(text)
    err = info.value
    assert message in str(err)
    assert err.spec == text and err.pos is not None
    if token:
        assert text[err.pos:err.end] == token
    lines = str(err).splitlines()
    assert lines[-2].strip() == text.strip() or not text
    caret = lines[-1]
    assert caret.strip().startswith("^")
    assert caret.index("^") - 4 == err.pos - (text.rfind("\n", 0, err.pos) + 1)
    assert f"char {err.pos}" in lines[0]
    if suggestion:
        assert suggestion in err.suggestions
        assert "did you mean" in str(err)


@pytest.mark.parametrize("star", ["\u2217", "\uff0a", "\\*"])
def test_asterisks_copied_from_pdf_or_markdown_repeat(star):
    """PDF text layers give the asterisk operator U+2217; Markdown copies of the paper escape '*'."""
    plain = "c32k3s1-BN-IF-{{SEW Block (c32)}*2-MPk2s2}*5-FC10"
    assert parse(plain.replace("*", star)).to_spec() == parse(plain).to_spec()


def test_missing_dash_between_known_names_is_hinted():
    with pytest.raises(SpecError) as info:
        parse("c32k3s1-BN PLIF-FC10")
    assert "'-' missing between 'BN' and 'PLIF'" in str(info.value)


@pytest.mark.parametrize("row, label", [
    ("c32k3s1-BN-PLIF-{SEW Block (c32) -MPk2s2}*7-FC11 (7B-Net)", "(7B-Net)"),
    ("c64k3s1-BN-PLIF-{SEW Block (c64)-MPk2s2}*4-c128k3s1-\nBN-PLIF-{SEW Block (c128)-MPk2s2}*3-FC10 (Wide-7B-Net)",
     "(Wide-7B-Net)"),
])
def test_table_row_with_its_network_label_says_to_remove_the_label(row, label):
    """A row copied from Table 5 or 6 ends with the network's name in parentheses."""
    with pytest.raises(SpecError) as info:
        parse(row)
    err = info.value
    assert err.hint and label in err.hint and "remove" in err.hint
    assert err.pos == row.rindex("(")
    parse(row[:row.rindex("(")])  # without the label the row is a valid spec


def test_unknown_whole_spec_suggests_models():
    import sewforge.models  # noqa: F401  (registers the zoo)

    with pytest.raises(SpecError) as info:
        parse("sew7b_gestur")
    assert "sew7b_gesture" in info.value.suggestions


def test_error_on_second_line_reports_line_and_column():
    text = "c32k3s1-BN-PLIF-\n{SEW(c32)-MPk2s2}*7-FCC11"
    with pytest.raises(SpecError) as info:
        parse(text)
    assert (info.value.lineno, info.value.colno) == (2, 21)
    assert str(info.value).splitlines()[-2].strip() == "{SEW(c32)-MPk2s2}*7-FCC11"


def test_spec_error_is_a_value_error_and_pickles():
    with pytest.raises(ValueError):
        parse("c32k3s1-XYZ")
    try:
        parse("c32k3s1-XYZ")
    except SpecError as err:
        again = pickle.loads(pickle.dumps(err))
        assert str(again) == str(err) and again.pos == err.pos


# -- properties -------------------------------------------------------------------------------
_names = st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(lambda s: s not in ("true", "false", "none"))
_plain_values = st.one_of(
    st.integers(-1000, 10**6), st.booleans(), st.none(),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    _names, st.text(alphabet=string.ascii_letters + string.digits + " -_(),*{}", min_size=1, max_size=8))
_kwargs = st.lists(st.tuples(_names.filter(lambda k: k not in ("surrogate", "g", "neuron", "zero_init")),
                             _plain_values), max_size=3, unique_by=lambda kv: kv[0]).map(lambda kv: tuple(sorted(kv)))
_surrogate = st.one_of(st.sampled_from(["ATan", "Sigmoid", "Rectangular"]),
                       st.floats(0.5, 8).map(lambda a: Call("Sigmoid", (), (("alpha", a),))))


@st.composite
def _conv(draw):
    k = draw(st.integers(1, 7))
    p = draw(st.one_of(st.none(), st.integers(0, 4).filter(lambda p: p != k // 2)))
    return Conv(draw(st.integers(1, 512)), k, draw(st.integers(1, 4)), p, draw(st.sampled_from([None, True, False])))


@st.composite
def _pool(draw):
    k = draw(st.integers(1, 8))
    return Pool(draw(st.sampled_from(["MP", "AP"])), k, draw(st.integers(1, 8)), draw(st.integers(0, k // 2)))


@st.composite
def _neuron(draw):
    kw = dict(draw(_kwargs))
    if draw(st.booleans()):
        kw["surrogate"] = draw(_surrogate)
    return Neuron(draw(st.sampled_from(["IF", "LIF", "PLIF"])), tuple(sorted(kw.items())))


@st.composite
def _block(draw):
    name = draw(st.sampled_from(["SEW", "SpikingResNet", "Plain", "SEWBottleneck", "SpikingBottleneck"]))
    kw = dict(draw(_kwargs))
    if draw(st.booleans()):
        kw["g"] = draw(st.sampled_from(["ADD", "AND", "IAND"]))
    if draw(st.booleans()):
        kw["zero_init"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["neuron"] = draw(st.one_of(st.sampled_from(["IF", "LIF"]), _neuron().map(
            lambda n: Call(n.name, (), n.kwargs) if n.kwargs else n.name)))
    return Block(name, draw(st.one_of(st.none(), st.integers(1, 512))), draw(st.integers(1, 3)),
                 draw(st.sampled_from([None, 1, 5, 7])), tuple(sorted(kw.items())))


_leaf = st.one_of(_conv(), st.builds(BatchNorm, st.just(()) | st.just((("eps", 1e-3),))), _neuron(), _pool(),
                  st.builds(GlobalPool), st.builds(Linear, st.integers(1, 1000), st.sampled_from([None, False])),
                  st.builds(Dropout, st.floats(0, 0.99)), _block())
_sequences = st.recursive(
    st.lists(_leaf, min_size=1, max_size=4).map(tuple),
    lambda inner: st.lists(st.one_of(_leaf, st.builds(Repeat, inner, st.integers(1, 9))), min_size=1,
                           max_size=4).map(tuple),
    max_leaves=12)


@given(_sequences)
def test_round_trip_of_random_specs(nodes):
    text = to_spec(nodes)
    assert parse(text).nodes == nodes
    assert parse(text).to_spec() == text


@given(_sequences, st.data())
def test_whitespace_anywhere_outside_quotes_is_ignored(nodes, data):
    text = to_spec(nodes)
    quoted = set()
    inside = None
    for i, ch in enumerate(text):
        if inside is None and ch in "'\"":
            inside = ch
        elif inside == ch:
            inside = None
        if inside is not None or ch in "'\"":
            quoted.add(i)
    spots = [i for i in range(len(text) + 1) if i not in quoted and i - 1 not in quoted or i in (0, len(text))]
    chosen = sorted(set(data.draw(st.lists(st.sampled_from(spots), max_size=8))), reverse=True)
    noisy = text
    for i in chosen:
        noisy = noisy[:i] + data.draw(st.sampled_from([" ", "\n", "\t", "  "])) + noisy[i:]
    assert parse(noisy).nodes == nodes


_VALID = ["c32k3s1-BN-PLIF-{SEW(c32)-MPk2s2}*3-FC11", "c8k3-BN-IF-{{SEW}*2-MPk2s2}*2-FC10",
          "MPk2-c16k3s2-LIF(tau=2.5)-APk2-GAP-FC5", "c8k1s1-BN-PLIF-<Plain(c16)-SpikingResNet(c16s2)>*2-DP(0.2)-FC3",
          "c4k3-BN-IF(v_threshold=0.5, surrogate=Sigmoid(alpha=4))-SEW(c8, g=IAND, zero_init=True)-FC2"]
_ALPHABET = "{}<>()*-,= ._'" + string.ascii_letters[:12] + "SEWPLIFBNMCKxX" + string.digits


@st.composite
def _mutated(draw):
    text = draw(st.sampled_from(_VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        ch = draw(st.sampled_from(_ALPHABET))
        if op == "insert":
            text = text[:i] + ch + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1:]
        elif op == "replace":
            text = text[:i] + ch + text[i + 1:]
        else:
            j = draw(st.integers(i, min(len(text), i + 6)))
            text = text[:j] + text[i:j] + text[j:]
    return text


def _compile_or_spec_error(text):
    try:
        spec = parse(text)
        if _count(spec.nodes) <= 200:
            infer(spec, (2, 16, 16), T=2)
    except SpecError as err:
        assert err.msg and str(err)
        if err.pos is not None:
            assert 0 <= err.pos <= len(text)
            assert "^" in str(err)


@settings(max_examples=150)
@given(_mutated())
def test_mutated_specs_raise_only_spec_error(text):
    _compile_or_spec_error(text)


@settings(max_examples=100)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
       | st.text(alphabet=_ALPHABET, max_size=40))
def test_garbage_raises_only_spec_error(text):
    _compile_or_spec_error(text)


def test_non_string_spec_is_a_spec_error():
    with pytest.raises(SpecError, match="must be a string"):
        parse(42)  # type: ignore[arg-type]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 300), st.sampled_from(["{", "<"]), st.sampled_from(["BN", "PLIF", "SEW(c2)", "Zz" * 300]),
       st.booleans())
def test_deep_or_long_specs_raise_only_short_spec_errors(depth, opener, inner, closed):
    close = {"{": "}*1", "<": ">*1"}[opener]
    text = "c2k3s1-" + opener * depth + inner + (close * depth if closed else "")
    try:
        spec = parse(text)
    except SpecError as err:
        assert len(str(err)) < 1200  # the mistake is shown, the 600-character word is not echoed whole
        if depth > MAX_DEPTH:
            assert f"nested more than {MAX_DEPTH} deep" in err.msg and err.pos == 7 + MAX_DEPTH
        return
    assert depth <= MAX_DEPTH and (closed or depth == 0) and not inner.startswith("Zz")
    node, levels = spec.nodes[-1], 0
    while isinstance(node, Repeat):
        node, levels = node.body[0], levels + 1
    assert levels == depth
