"""Hostile bytes and text into every reader a user feeds files to: each answers with its documented
error, naming the file, or with a valid result; never another exception, never a traceback."""
from __future__ import annotations

import itertools
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sewforge.data import DatasetFormatError
from sewforge.data.aedat import read_aedat3, read_cifar10dvs_aedat
from sewforge.train import CheckpointError, RecipeError, load_checkpoint, load_recipe

FUZZ = settings(max_examples=int(os.environ.get("SEWFORGE_FUZZ_EXAMPLES", "60")), deadline=None)

AEDAT3_HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"
AEDAT2_HEADER = b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"


_counter = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _file(folder: Path, data: bytes, name: str) -> Path:
    path = folder / str(next(_counter)) / name  # a fresh file per example: nothing carries over
    path.parent.mkdir()
    path.write_bytes(data)
    return path


def _aedat3_packet(e_type, e_size, overflow, capacity, body):
    return struct.pack("<hhiiiiii", e_type, 1, e_size, 4, overflow, capacity, capacity, capacity) + body


# -- AEDAT 3.1 (DVS128 Gesture) ----------------------------------------------------------------------
_packets = st.lists(st.builds(_aedat3_packet, st.integers(-2, 3), st.integers(-8, 16), st.integers(-2, 3),
                              st.integers(-2, 6), st.binary(max_size=64)), max_size=4)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.builds(lambda p, tail: AEDAT3_HEADER + b"".join(p) + tail,
                                                    _packets, st.binary(max_size=12))))
def test_aedat3_reader_gives_events_or_a_format_error_naming_the_file(folder, data):
    path = _file(folder, data, "user01_led.aedat")
    try:
        ev = read_aedat3(path)
    except DatasetFormatError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    n = len(ev["t"])
    assert all(len(ev[k]) == n for k in "xyp") and set(np.unique(ev["p"])) <= {0, 1}
    assert n == 0 or data.startswith(b"#!AER-DAT3")


# -- AEDAT 2.0 (CIFAR10-DVS) ------------------------------------------------------------------------
@FUZZ
@given(st.one_of(st.binary(max_size=200), st.builds(lambda b: AEDAT2_HEADER + b, st.binary(max_size=80)),
                 st.builds(lambda h, b: b"#" + h + b"\n" + b, st.binary(max_size=20), st.binary(max_size=40))))
def test_aedat2_reader_gives_events_or_a_format_error_naming_the_file(folder, data):
    path = _file(folder, data, "cifar10_cat_3.aedat")
    try:
        ev = read_cifar10dvs_aedat(path)
    except DatasetFormatError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    assert data.startswith(b"#!AER-DAT2")  # only a real AEDAT 2.0 header gives events
    assert len(ev["t"]) * 8 <= len(data) and all(len(ev[k]) == len(ev["t"]) for k in "xyp")
    assert ev["x"].max(initial=0) <= 127 and ev["y"].max(initial=0) <= 127


# -- recipes ----------------------------------------------------------------------------------------
_yaml_values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                            | st.text(max_size=12),
                            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3),
                            max_leaves=8)
_keys = st.sampled_from(["model", "data", "optimizer", "scheduler", "epochs", "batch_size", "output", "base",
                         "T_train", "amp", "seed", "name", "lr", "kwargs", "device", "clip_grad"])
_recipes = st.dictionaries(_keys, _yaml_values | st.dictionaries(_keys, _yaml_values, max_size=4), max_size=6)


@FUZZ
@given(st.one_of(st.text(max_size=120), _recipes.map(lambda d: yaml.safe_dump(d, sort_keys=False))))
def test_any_yaml_text_is_a_recipe_or_a_recipe_error_naming_the_file(folder, text):
    path = _file(folder, text.encode("utf-8", "surrogatepass"), "fuzzed.yaml")
    try:
        load_recipe(path)
    except RecipeError as err:
        assert str(path) in str(err) or "fuzzed" in str(err)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(["epochs=", "batch_size=", "optimizer.lr=", "model.name=", "data.T=", "output=",
                                 "seed=", "data.kwargs.x=", "=", "a.b.c="]), min_size=1, max_size=3),
       st.lists(st.text(max_size=10), min_size=3, max_size=3))
def test_any_override_is_applied_or_a_recipe_error(keys, values):
    base = Path(__file__).resolve().parents[1] / "recipes"
    recipe = next(iter(sorted(base.glob("*.yaml"))))
    try:
        load_recipe(recipe, [k + v for k, v in zip(keys, values)])
    except RecipeError as err:
        assert str(err)


# -- checkpoints ------------------------------------------------------------------------------------
def _valid_checkpoint_bytes() -> bytes:
    import io

    out = io.BytesIO()
    torch.save({"format": "sewforge-train-checkpoint", "version": 1, "epoch": 1, "model": {"w": torch.ones(3)},
                "history": []}, out)
    return out.getvalue()


_GOOD = _valid_checkpoint_bytes()


@FUZZ
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.integers(0, len(_GOOD) - 1), st.binary(min_size=1, max_size=8)).map(
                     lambda t: _GOOD[:t[0]] + t[1] + _GOOD[t[0] + len(t[1]):]),
                 st.integers(0, len(_GOOD) - 1).map(lambda n: _GOOD[:n])))
def test_any_bytes_are_a_checkpoint_or_a_checkpoint_error_naming_the_file(folder, data):
    path = _file(folder, data, "last.pt")
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        assert str(path) in str(err)
        return
    assert state["format"] == "sewforge-train-checkpoint"


# findings of the fuzzing above and of hand-made hostile recipes, kept as regressions
RECIPE_BODY = "model: {name: sew7b_gesture}\ndata: {name: synthetic}\n"


@pytest.mark.parametrize("text,problem", [
    ("a: &x [*x]\n", "a YAML anchor (&name) is used inside itself"),
    ("!!python/object:os.system 'echo hi'\n", "not valid YAML"),
    ("output: '{model.__class__}'\n" + RECIPE_BODY, "'model' has no key '__class__'"),
    ("output: '{model.name.__class__}'\n" + RECIPE_BODY, "is not a field name"),
    ("output: '{data.name[0]}'\n" + RECIPE_BODY, "is not a field name"),
    ("output: '{epochs:99999999999}'\n" + RECIPE_BODY, "is not a simple format"),
    ("output: '{seed:{epochs}}'\n" + RECIPE_BODY, "is not a simple format"),
    ("output: '{model.kwargs}'\n" + RECIPE_BODY, "is a dict, not a single value"),
    ("output: '{seed!r}'\n" + RECIPE_BODY, "conversions"),
    ("output: 'runs/{nope}'\n" + RECIPE_BODY, "the recipe has no key 'nope'"),
    ("output: 'runs/{'\n" + RECIPE_BODY, "cannot fill in"),
])
def test_hostile_recipes_are_one_recipe_error_naming_file_and_key(tmp_path, text, problem):
    path = tmp_path / "hostile.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert problem in message and str(path) in message and len(message) < 600


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("output: runs/caf\u00e9\n".encode("latin-1"))
    with pytest.raises(RecipeError, match=r"latin1.yaml: not UTF-8 text \(byte 16 is b'\\xe9'\)"):
        load_recipe(path)


def test_simple_output_templates_still_fill_in(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("output: 'runs/{recipe}_{model.name}_T{data.T}_s{seed:03d}_lr{optimizer.lr:.0e}'\n"
                    + RECIPE_BODY)
    recipe = load_recipe(path)
    assert recipe.output == f"runs/ok_sew7b_gesture_T{recipe.data.T}_s{recipe.seed:03d}_lr{recipe.optimizer.lr:.0e}"


_values = st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                    st.just({"w": torch.zeros(2)}), st.just({"w": 1}), st.just(torch.ones(1)))


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.sampled_from(["version", "model", "epoch", "optimizer", "best_test_acc", "best_epoch",
                                        "history", "recipe"]), _values, max_size=8))
def test_a_checkpoint_with_wrong_contents_is_refused_before_use(folder, contents):
    import io

    buf = io.BytesIO()
    torch.save({"format": "sewforge-train-checkpoint", **contents}, buf)
    path = _file(folder, buf.getvalue(), "best.pt")
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    # what evaluation and resuming read has the right type
    assert isinstance(state["model"], dict) and all(isinstance(v, torch.Tensor) for v in state["model"].values())
    assert isinstance(state.get("epoch", 0), int) and isinstance(state.get("history", []), list)
    assert isinstance(state.get("recipe", {}), dict) and isinstance(state.get("optimizer", {}), dict)
