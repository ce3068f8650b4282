"""Every recipe in recipes/ loads, validates and builds its network (on the meta device, no data,
no training), and says which result of the paper it reproduces."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sewforge.train import load_recipe
from sewforge.train.factories import build_model

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))

#: what each dataset gives the model, so networks can be built without the data
DATA_SHAPES = {
    "synthetic": (4, None),  # input size from the recipe's data.kwargs.size
    "dvs128_gesture": (11, (2, 128, 128)),
    "cifar10_dvs": (10, (2, 128, 128)),
    "imagenet": (1000, (3, 224, 224)),
    "cifar10": (10, (3, 32, 32)),
}


def test_the_paper_experiments_all_have_a_recipe():
    names = {p.stem for p in RECIPES}
    expected = {"quickstart", "dvs_gesture_sew_add", "dvs_gesture_sew_iand", "dvs_gesture_sew_and",
                "dvs_gesture_plain", "dvs_gesture_spiking_resnet", "cifar10dvs_wide7b"}
    expected |= {f"imagenet_{family}_resnet{d}" for family in ("sew", "spiking") for d in (18, 34, 50, 101, 152)}
    expected |= {f"cifar10_table9_{net}_{s}" for net in ("sew", "spiking_resnet")
                 for s in ("atan", "rectangular", "constant")}
    assert expected <= names, sorted(expected - names)


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates_builds_and_cites_the_paper(path):
    recipe = load_recipe(path)
    comments = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    if path.stem != "quickstart":
        assert re.search(r"Reproduces: Table \d", comments), f"{path.name}: no 'Reproduces: Table N' comment"
        assert re.search(r"\d+\.\d+", comments), f"{path.name}: the paper's number is missing"
        assert recipe.seed == 2020 and recipe.optimizer.weight_decay == 0.0 and recipe.optimizer.momentum == 0.9
        assert recipe.optimizer.name == "sgd" and not recipe.optimizer.nesterov
    classes, shape = DATA_SHAPES[recipe.data.name]
    if shape is None:
        shape = (2, recipe.data.kwargs.get("size", 32), recipe.data.kwargs.get("size", 32))
    with torch.device("meta"):
        model = build_model(recipe, SimpleNamespace(num_classes=classes, input_shape=shape))
    assert model.num_classes == classes


def test_paper_hyper_parameters():
    """Spot checks against Tables 7 and 8 (learning rates of the DVS Gesture nets)."""
    by = {p.stem: load_recipe(p) for p in RECIPES}
    lrs = {"sew_add": 0.001, "sew_and": 0.03, "sew_iand": 0.063, "spiking_resnet": 0.1, "plain": 0.005}
    for name, lr in lrs.items():
        r = by[f"dvs_gesture_{name}"]
        assert (r.optimizer.lr, r.epochs, r.batch_size, r.data.T, r.T_train) == (lr, 192, 16, 16, 12)
        assert (r.scheduler.name, r.scheduler.step_size, r.scheduler.gamma, r.amp) == ("step", 64, 0.1, True)
    assert by["dvs_gesture_sew_and"].model.g == "AND" and by["dvs_gesture_sew_iand"].model.g == "IAND"
    r = by["cifar10dvs_wide7b"]
    assert (r.optimizer.lr, r.scheduler.name, r.scheduler.T_max, r.epochs, r.drop_last) == (0.01, "cosine", 64, 64, True)
    assert load_recipe(RECIPES[0].parent / "cifar10dvs_wide7b.yaml", ["data.T=4"]).output.endswith("_T4")
    for d in (18, 34, 50, 101, 152):
        for family in ("sew", "spiking"):
            r = by[f"imagenet_{family}_resnet{d}"]
            assert r.model.name == f"{family}_resnet{d}"
            assert (r.optimizer.lr, r.scheduler.T_max, r.epochs, r.batch_size, r.data.T) == (0.1, 320, 320, 32, 4)
            assert bool(r.model.zero_init) == (family == "spiking")
    assert {by[f"cifar10_table9_sew_{s}"].model.surrogate for s in ("atan", "rectangular", "constant")} == {
        "ATan", "Rectangular", "Constant"}
