"""The trainer: recipe validation, run folder, exact resume, non-finite loss, eval-only, 2-process DDP."""
from __future__ import annotations

import csv
import hashlib
import importlib.util
import math
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sewforge.train import RecipeError, load_checkpoint, load_recipe, recipe_from_dict, recipe_to_dict
from sewforge.data.transforms import temporal_delete, time_major
from sewforge.train.runlog import SUMMARY_COLUMNS
from sewforge.cli import main as _sewforge_main


def main(argv):
    """``sewforge train ARGV`` (also ``python -m sewforge.train ARGV``) in-process."""
    return _sewforge_main(["train", *argv])


# ---------------------------------------------------------------------------------------------
# what the runs train: the built-in synthetic data, shrunk, and a SEW network from a spec string;
# a NaN-producing dataset and network for the non-finite loss test
# ---------------------------------------------------------------------------------------------
SPEC = "c4k3s1-BN-PLIF-MPk2s2-{SEW(c4)-MPk2s2}*1-FC4"
DATASET = "_train_test_bars"
MODEL = "_train_test_net"


class Bars(torch.utils.data.Dataset):
    """A bar moving left or right or standing still; ``nan_sample`` makes one sample NaN."""

    num_classes = 3
    input_shape = (2, 8, 8)
    classes = ("left", "right", "still")

    def __init__(self, root=None, split="train", T=4, *, samples=48, nan_sample=None, nan_test_sample=None,
                 interrupt_after=None):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        n = samples if split == "train" else samples // 2
        self.y = torch.arange(n) % 3
        self.x = torch.rand(n, T, 2, 8, 8, generator=g).lt(0.05).float()
        for i in range(n):
            start = int(torch.randint(2, 6, (1,), generator=g))
            for t in range(T):
                self.x[i, t, 0, :, (start + (-t, t, 0)[int(self.y[i])]) % 8] += 2.0
        self.nan_sample = nan_sample if split == "train" or nan_test_sample is None else nan_test_sample
        self.interrupt_after = interrupt_after if split == "train" else None  # Ctrl-C after that many reads
        self.reads = 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        if self.interrupt_after is not None and self.reads > self.interrupt_after:
            raise KeyboardInterrupt
        x = self.x[i]
        if self.nan_sample is not None and i == self.nan_sample:
            x = x * float("nan")
        return x, int(self.y[i])


class TinyNet(torch.nn.Module):
    """conv-BN-PLIF-FC whose logits turn NaN with a NaN input, as a diverging network's would
    (a spiking neuron alone swallows NaN: NaN >= threshold is false)."""

    def __init__(self, num_classes=3, T=4, input_shape=(2, 8, 8), poison=None, poison_after=0, **_):
        import sewforge

        self.poison, self.poison_after, self.calls = poison, poison_after, 0  # a diverging run, on demand
        super().__init__()
        self.T, self.num_classes, self.input_shape = T, num_classes, tuple(input_shape)
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4))
        self.sn = sewforge.create_neuron("PLIF")
        self.fc = torch.nn.Linear(4 * 64, num_classes)

    def forward(self, x):
        steps, batch = x.shape[:2]
        self.calls += int(self.training)
        poisoned = self.training and self.calls > self.poison_after
        if poisoned and self.poison == "running_var":
            with torch.no_grad():
                self.conv[1].running_var[2] = float("inf")  # the loss stays finite
        s = self.sn(self.conv(x.flatten(0, 1)).unflatten(0, (steps, batch)))
        out = self.fc(s.flatten(2)).mean(0) + 0.0 * x.sum()
        return out * float("inf") if poisoned and self.poison == "loss" else out


@pytest.fixture(autouse=True)
def _test_components():
    from sewforge.registry import DATASETS, MODELS

    DATASETS.add(DATASET, Bars, description="test bars")
    MODELS.add(MODEL, TinyNet, description="test net")
    yield
    DATASETS.unregister(DATASET)
    MODELS.unregister(MODEL)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def tiny_recipe(tmp_path: Path, **top) -> Path:
    """A recipe that trains in about a second on one CPU core."""
    data = {"model": {"name": SPEC},
            "data": {"name": "synthetic", "T": 4, "kwargs": {"num_train": 48, "num_test": 24, "size": 16}},
            "optimizer": {"name": "sgd", "lr": 0.05},
            "scheduler": {"name": "cosine"},
            "epochs": 2, "batch_size": 8, "T_train": 3, "output": str(tmp_path / "run")}
    for k, v in top.items():
        data[k] = v
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# recipes
# ---------------------------------------------------------------------------------------------
def test_unknown_key_names_file_line_and_suggests(tmp_path):
    path = write(tmp_path / "r.yaml", """\
        model:
          name: sew7b_gesture
        optimizer:
          lrr: 0.1
        """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert f"{path}:4: optimizer.lrr: unknown key" in msg
    assert "did you mean 'lr'" in msg
    assert "allowed keys in section 'optimizer'" in msg and "momentum" in msg


def test_wrong_type_and_all_problems_reported_at_once(tmp_path):
    path = write(tmp_path / "r.yaml", f"""\
        model: {{name: sew7b_gesture}}
        data: {{name: {DATASET}}}
        epochs: ten
        amp: 1
        batch_size: 2.5
        epoch: 3
        """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert f"{path}:3: epochs: expected an integer, got 'ten'" in msg
    assert f"{path}:4: amp: expected true or false, got 1" in msg
    assert f"{path}:5: batch_size: expected an integer, got 2.5" in msg
    assert f"{path}:6: epoch: unknown key; did you mean 'epochs'?" in msg
    assert len(info.value.problems) == 4


def test_float_written_without_dot_is_a_float(tmp_path):
    # PyYAML reads 1e-3 as the string '1e-3' (YAML 1.1 wants 1.0e-3)
    path = write(tmp_path / "r.yaml", "model: {name: sew7b_gesture}\noptimizer: {lr: 1e-3, weight_decay: 5E-5}\n")
    assert yaml.safe_load(path.read_text())["optimizer"]["lr"] == "1e-3"
    r = load_recipe(path)
    assert r.optimizer.lr == 1e-3 and isinstance(r.optimizer.lr, float)
    assert r.optimizer.weight_decay == 5e-5
    assert load_recipe(path, ["optimizer.lr=2e-2"]).optimizer.lr == 0.02


@settings(max_examples=20)
@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False),
       st.sampled_from(["{!r}", "{:e}", "{:E}", "{:.3e}"]))
def test_any_float_spelling_reads_back(tmp_path_factory, value, spelling):
    text = spelling.format(value)
    r = recipe_from_dict({"model": {"name": "sew7b_gesture"}}, overrides=[f"optimizer.lr={text}"])
    assert r.optimizer.lr == float(text)


def test_override_errors_name_the_override(tmp_path):
    path = write(tmp_path / "r.yaml", "model: {name: sew7b_gesture}\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["data.TT=4", "optimizer.lr=-1", "seed"])
    msg = str(info.value)
    assert "override 'seed': expected KEY=VALUE" in msg
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["data.TT=4", "optimizer.lr=-1"])
    msg = str(info.value)
    assert "override 'data.TT=4': data.TT: unknown key; did you mean 'T'?" in msg
    assert "override 'optimizer.lr=-1': optimizer.lr: must be > 0.0, got -1.0" in msg


def test_choices_registries_and_relations_are_checked(tmp_path):
    path = write(tmp_path / "r.yaml", """\
        model: {name: sew7b_gesture, g: ADDD, neuron: PLFI}
        data: {name: no_such_data, T: 4}
        T_train: 6
        optimizer: {name: sgdd}
        scheduler: {name: cosin}
        device: gpu
        """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert "scheduler.name: 'cosin' is not one of" in msg and "did you mean 'cosine'" in msg
    assert "model.g: unknown element-wise function 'ADDD'" in msg
    assert "model.neuron: unknown neuron 'PLFI'; did you mean 'PLIF'" in msg
    assert "data.name: unknown dataset 'no_such_data'" in msg
    assert "T_train: must be <= data.T = 4" in msg
    assert "optimizer.name: unknown optimizer 'sgdd'; did you mean 'sgd'" in msg
    assert "device: expected auto, cpu, cuda or cuda:N, got 'gpu'" in msg
    with pytest.raises(RecipeError) as info:
        load_recipe(path, ["model.name=c32k3s1-BN-PLFI-FC10"])
    assert f"{path}:1: model.name" not in str(info.value)
    assert "override 'model.name=c32k3s1-BN-PLFI-FC10': model.name: unknown layer, neuron or block 'PLFI'" in str(
        info.value)
    assert "did you mean 'PLIF'" in str(info.value)
    with pytest.raises(RecipeError, match="did you mean 'sew7b_gesture'"):
        load_recipe(path, ["model.name=sew7b_gestur"])


def test_missing_model_yaml_errors_and_duplicate_keys(tmp_path):
    with pytest.raises(RecipeError, match="model.name: required"):
        load_recipe(write(tmp_path / "a.yaml", "epochs: 2\n"))
    with pytest.raises(RecipeError, match=r"b.yaml: not valid YAML"):
        load_recipe(write(tmp_path / "b.yaml", "model: {name: [\n"))
    with pytest.raises(RecipeError, match=r"c.yaml:3: epochs: key given twice"):
        load_recipe(write(tmp_path / "c.yaml", "model: {name: sew7b_gesture}\nepochs: 2\nepochs: 3\n"))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_base_recipe_merge_and_output_placeholders(tmp_path):
    write(tmp_path / "base.yaml", """\
        model: {name: sew7b_gesture, g: ADD}
        data: {T: 16, kwargs: {a: 1}}
        optimizer: {lr: 0.1}
        output: runs/{recipe}_T{data.T}
        """)
    child = write(tmp_path / "child.yaml", """\
        base: base.yaml
        model: {g: IAND}
        data: {kwargs: {b: 2}}
        """)
    r = load_recipe(child, ["data.T=8"])
    assert (r.model.name, r.model.g, r.data.T, r.optimizer.lr) == ("sew7b_gesture", "IAND", 8, 0.1)
    assert r.data.kwargs == {"a": 1, "b": 2}
    assert r.output == "runs/child_T8"
    with pytest.raises(RecipeError, match="output: cannot fill in"):
        load_recipe(child, ["output=runs/{nope}"])


def test_resolved_recipe_round_trips(tmp_path):
    r = load_recipe(tiny_recipe(tmp_path), ["optimizer.lr=1e-3", "scheduler.name=step", "scheduler.step_size=64"])
    again = recipe_from_dict(yaml.safe_load(yaml.safe_dump(recipe_to_dict(r))))
    assert again == r


@settings(max_examples=15)
@given(st.integers(1, 9), st.data())
def test_temporal_delete_keeps_ordered_frames_shared_by_the_batch(steps, data):
    keep = data.draw(st.integers(1, steps))
    x = torch.arange(steps, dtype=torch.float32).view(steps, 1, 1).expand(steps, 3, 2).contiguous()
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    y = temporal_delete(x, keep)
    assert y.shape == (keep, 3, 2)
    kept = y[:, 0, 0]
    assert torch.equal(y, kept.view(keep, 1, 1).expand(keep, 3, 2))  # the same frames for every sample
    assert bool((kept[1:] > kept[:-1]).all())  # in order, without repeats
    assert time_major(torch.zeros(5, steps, 2, 4, 4)).shape == (steps, 5, 2, 4, 4)
    assert time_major(torch.zeros(5, 3, 4, 4)).shape == (5, 3, 4, 4)


# ---------------------------------------------------------------------------------------------
# training runs
# ---------------------------------------------------------------------------------------------
def rows(folder: Path):
    with open(folder / "summary.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_run_folder_contents_and_exact_resume(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    full = tmp_path / "full"
    assert main([str(recipe), f"output={full}", "--no-progress"]) == 0
    half = tmp_path / "half"
    assert main([str(recipe), f"output={half}", "epochs=1", "--no-progress"]) == 0
    # a crash between saving last.pt and appending its row: the resumed run repairs summary.csv
    (half / "summary.csv").write_text((half / "summary.csv").read_text().splitlines()[0] + "\n")
    assert main([str(recipe), f"output={half}", "--resume", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out

    # the run folder
    names = {p.name for p in full.iterdir()}
    assert {"args.yaml", "summary.csv", "last.pt", "best.pt", "curves.png"} <= names
    assert not [n for n in names if ".tmp" in n]
    assert load_recipe(full / "args.yaml") == load_recipe(recipe, [f"output={full}"])
    assert (full / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if importlib.util.find_spec("tensorboard") is not None:  # TensorBoard events only where it is installed
        assert any(p.name.startswith("events.out.tfevents") for p in (full / "tensorboard").iterdir())
    else:
        assert "tensorboard" not in names
    table = rows(full)
    assert tuple(table[0]) == SUMMARY_COLUMNS and [r["epoch"] for r in table] == ["1", "2"]
    for r in table:
        assert 0 <= float(r["train_acc"]) <= 100 and 0 <= float(r["firing_rate"]) <= 1
        assert float(r["best_test_acc"]) == max(float(q["test_acc"]) for q in table[: int(r["epoch"])])
    assert float(table[1]["lr"]) < float(table[0]["lr"])  # cosine over 2 epochs

    # resumed == uninterrupted, bit for bit (all but the wall-clock column)
    drop = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert drop(rows(half)) == drop(table)
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(half / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    ma = a["optimizer"]["state"]
    mb = b["optimizer"]["state"]
    assert all(torch.equal(ma[i]["momentum_buffer"], mb[i]["momentum_buffer"]) for i in ma)

    # checkpoints hold only safe types
    for name in ("last.pt", "best.pt"):
        state = torch.load(full / name, weights_only=True)
        assert state["epoch"] >= 1 and "recipe" in state


# ---------------------------------------------------------------------------------------------
# train.log and the logger sewforge.train
# ---------------------------------------------------------------------------------------------
_STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


def _logged(folder: Path):
    """The lines of ``folder/train.log`` without their times (each must have one)."""
    lines = (folder / "train.log").read_text().splitlines()
    assert all(_STAMP.match(line) for line in lines), lines
    return [_STAMP.sub("", line, count=1) for line in lines]


def test_train_log_holds_the_printed_lines_with_their_time_and_resume_appends(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1)
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "INFO" not in "\n".join(printed)
    first = _logged(run)
    assert first == [line for line in printed if not line.startswith("done:")]  # done: is the command's own
    assert any(line.startswith("epoch 1/1  train loss") for line in first)
    before = (run / "train.log").read_text()
    assert main([str(recipe), "epochs=2", "--resume", "--no-progress"]) == 0
    assert (run / "train.log").read_text().startswith(before)
    again = _logged(run)[len(first):]
    assert again[0].startswith("resuming with a changed recipe") and again[-1].startswith("epoch 2/2  train loss")
    assert main([str(recipe), "--overwrite", "--no-progress"]) == 0  # a new run starts a new log
    assert len([line for line in _logged(run) if line.startswith("run folder")]) == 1


def test_a_handler_on_the_sewforge_train_logger_hears_every_line(tmp_path):
    import logging

    from sewforge.train import evaluate_checkpoint, train

    heard = []

    class Keep(logging.Handler):
        def emit(self, record):
            heard.append(record.getMessage())

    handler = Keep()
    logging.getLogger("sewforge.train").addHandler(handler)
    try:
        printed = []
        recipe = load_recipe(tiny_recipe(tmp_path))
        train(recipe, progress=False, log=printed.append)
        evaluate_checkpoint(recipe, tmp_path / "run" / "last.pt", progress=False, log=printed.append)
    finally:
        logging.getLogger("sewforge.train").removeHandler(handler)
    assert heard == printed and len([line for line in heard if line.startswith("epoch ")]) == 2
    assert "(epoch 2): test loss" in heard[-1]
    assert _logged(tmp_path / "run") == printed[:-1]  # the evaluation writes no run folder


@pytest.mark.parametrize("failure", ["a folder in its place", "a full disk after the first line"])
def test_a_train_log_that_cannot_be_written_is_said_once_and_the_run_goes_on(tmp_path, capsys, monkeypatch,
                                                                           failure):
    import types

    from sewforge.train import logs

    run = tmp_path / "run"
    if failure == "a folder in its place":
        (run / "train.log").mkdir(parents=True)
        reason = "(Is a directory); a folder stands where that file should be"
    else:
        writes = []

        def write(fd, data):
            writes.append(data)
            if len(writes) > 1:
                raise OSError(28, "No space left on device")
            return os.write(fd, data)

        monkeypatch.setattr(logs, "os", types.SimpleNamespace(
            **{name: getattr(os, name) for name in ("open", "close", "O_WRONLY", "O_APPEND", "O_CREAT")}, write=write))
        reason = "(No space left on device); free space on that disk"
    assert main([str(tiny_recipe(tmp_path)), "--no-progress"]) == 0
    captured = capsys.readouterr()
    said = [line for line in captured.out.splitlines() if "train.log" in line]
    assert said == [f"output={str(run)!r}: cannot write {str(run / 'train.log')!r} {reason}"
                    + said[0].split(reason, 1)[1]], captured.out
    assert said[0].endswith("; the run goes on, with its lines on the console only") and not captured.err
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]
    if failure != "a folder in its place":
        assert _logged(run) == [captured.out.splitlines()[0]]  # whole lines only


def test_existing_run_is_not_overwritten_by_accident(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1)
    assert main([str(recipe), "--no-progress"]) == 0
    before = digest(tmp_path / "run" / "last.pt")
    assert main([str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert digest(tmp_path / "run" / "last.pt") == before
    assert main([str(recipe), "--overwrite", "--no-progress", "seed=7"]) == 0
    assert len(rows(tmp_path / "run")) == 1


def test_amp_on_cpu_and_resume_without_checkpoint(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1, amp=True)  # bfloat16 autocast on CPUs
    assert main([str(recipe), "--resume", "--no-progress"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert main([str(recipe), "--no-progress"]) == 0
    row = rows(tmp_path / "run")[0]
    assert math.isfinite(float(row["train_loss"])) and math.isfinite(float(row["test_loss"]))


def test_progress_bar_on_a_terminal_plain_lines_otherwise():
    import io

    from sewforge.train.runlog import Progress

    out = io.StringIO()
    bar = Progress(10, "epoch 1/2 train", stream=out, bar=True)
    for step in range(1, 11):
        bar.update(step, loss=0.5)
    text = out.getvalue()
    assert "\r" in text and "10/10" in text and "|" in text and "\n" not in text
    out = io.StringIO()
    plain = Progress(10, "epoch 1/2 train", stream=out, interval=0.0)
    for step in range(1, 11):
        plain.update(step, loss=0.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 9 and lines[0].startswith("epoch 1/2 train 1/10") and "\r" not in out.getvalue()
    quiet = io.StringIO()
    Progress(10, "x", stream=quiet).update(5)  # not a terminal, under the interval: nothing
    assert quiet.getvalue() == ""


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": MODEL}, data={"name": DATASET, "T": 4})
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    good = digest(run / "last.pt")
    # from epoch 2 on, the logits overflow on the second step (the inputs are finite)
    code = main([str(recipe), "--resume", "epochs=3", "model.kwargs.poison=loss", "model.kwargs.poison_after=1",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "training loss is nan at epoch 2, step 2/" in err
    assert "checkpoints of epoch 1" in err and "are kept" in err and len(err.strip().splitlines()) == 1
    assert digest(run / "last.pt") == good
    assert len(rows(run)) == 1
    last = (run / "train.log").read_text().splitlines()[-1]  # the log keeps why the run stopped
    assert "stopped: NonFiniteLossError: training loss is nan at epoch 2" in last


@pytest.mark.parametrize("model", [MODEL, SPEC.replace("FC4", "FC3")])
def test_a_nan_sample_stops_the_run_naming_it_even_when_the_loss_stays_finite(tmp_path, capsys, model):
    # with the spec network, the NaN sample becomes "no spike": the loss stays finite while the
    # batch-norm statistics and weights would turn NaN
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": model}, data={"name": DATASET, "T": 4})
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    good, best = digest(run / "last.pt"), digest(run / "best.pt")
    code = main([str(recipe), "--resume", "epochs=2", "data.kwargs.nan_sample=37", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"training sample 37 of data {DATASET!r} (split 'train') holds NaN" in err and "epoch 2, step" in err
    assert digest(run / "last.pt") == good and digest(run / "best.pt") == best and len(rows(run)) == 1
    state = load_checkpoint(run / "last.pt")
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


def test_a_nan_test_sample_stops_the_run_and_the_evaluation_naming_it(tmp_path, capsys):
    """A test accuracy is never computed on NaN frames: training stops before saving the epoch,
    --eval-only reports no accuracy; both name the test sample."""
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": SPEC.replace("FC4", "FC3")}, data={"name": DATASET, "T": 4},
                         test_batch_size=5)
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    good, best = digest(run / "last.pt"), digest(run / "best.pt")
    code = main([str(recipe), "--resume", "epochs=2", "data.kwargs.nan_test_sample=13", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert (f"test sample 13 of data {DATASET!r} (split 'test') holds NaN or infinite values (testing after epoch 2): "
            "stopped; the checkpoints of epoch 1") in err and "fix or remove that sample" in err
    assert digest(run / "last.pt") == good and digest(run / "best.pt") == best and len(rows(run)) == 1
    capsys.readouterr()
    code = main(["--eval-only", "--checkpoint", str(run / "best.pt"), "data.kwargs.nan_test_sample=13",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "test sample 13" in captured.err and "no accuracy is reported" in captured.err
    assert "acc" not in captured.out


def test_a_non_finite_batch_norm_statistic_is_never_saved(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": MODEL}, data={"name": DATASET, "T": 4})
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    good = digest(run / "last.pt")
    code = main([str(recipe), "--resume", "epochs=2", "model.kwargs.poison=running_var", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "model tensor 'conv.1.running_var' holds NaN or infinite values after epoch 2" in err
    assert digest(run / "last.pt") == good and len(rows(run)) == 1


def test_a_run_folder_in_use_is_refused_naming_its_holder(tmp_path, capsys):
    import fcntl

    recipe = tiny_recipe(tmp_path, epochs=1)
    run = tmp_path / "run"
    run.mkdir()
    holder = open(run / ".lock", "w")  # another training holds the folder (an OS lock, as sewforge takes it)
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    holder.write("pid 4242 on host gpu7, started 2026-11-30 10:00:00\n")
    holder.flush()
    assert main([str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "is in use by another training (pid 4242 on host gpu7, started 2026-11-30 10:00:00)" in err
    assert len(err.strip().splitlines()) == 1 and not (run / "args.yaml").exists()
    holder.close()  # the holder ends: the folder is free again
    assert main([str(recipe), "--no-progress"]) == 0
    # while training, the lock file names this process; a second lock attempt fails
    assert f"pid {os.getpid()} on host {socket.gethostname()}" in (run / ".lock").read_text()


def test_a_killed_training_does_not_leave_its_folder_locked(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, os, sys; f = open(sys.argv[1], 'w'); fcntl.flock(f.fileno(), fcntl.LOCK_EX); "
            "print('locked', flush=True); os.kill(os.getpid(), 9)")
    proc = subprocess.run([sys.executable, "-c", code, str(run / ".lock")], capture_output=True, text=True)
    assert proc.stdout.strip() == "locked" and proc.returncode == -9
    assert main([str(tiny_recipe(tmp_path, epochs=1)), "--no-progress"]) == 0


def test_ctrl_c_says_how_to_go_on_and_both_ways_work(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=2, model={"name": MODEL}, data={"name": DATASET, "T": 4})
    run = tmp_path / "run"
    # stopped during the first epoch: no checkpoint; a plain rerun starts over
    assert main([str(recipe), "data.kwargs.interrupt_after=10", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted before the first epoch ended") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and not (run / "last.pt").exists()
    assert main([str(recipe), "epochs=1", "--no-progress"]) == 0
    assert "starting it over" in capsys.readouterr().out and len(rows(run)) == 1
    # stopped during epoch 2: --resume continues, --overwrite starts over
    assert main([str(recipe), "--resume", "data.kwargs.interrupt_after=10", "--no-progress"]) == 130
    err = capsys.readouterr().err.strip()
    assert "keeps the checkpoint of epoch 1" in err and "--resume" in err and "--overwrite" in err
    assert len(err.splitlines()) == 1 and len(rows(run)) == 1
    assert main([str(recipe), "--resume", "--no-progress"]) == 0
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]
    assert main([str(recipe), "--overwrite", "epochs=1", "--no-progress"]) == 0
    assert [r["epoch"] for r in rows(run)] == ["1"]


def test_eval_only_reproduces_the_best_test_accuracy(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path)
    assert main([str(recipe), "--no-progress"]) == 0
    table = rows(tmp_path / "run")
    capsys.readouterr()
    best = tmp_path / "run" / "best.pt"
    assert main(["--eval-only", "--checkpoint", str(best), "--no-progress"]) == 0
    out = capsys.readouterr().out
    epoch = load_checkpoint(best)["epoch"]
    assert f"acc {float(table[epoch - 1]['test_acc']):.2f}%" in out
    assert main(["--eval-only", "--no-progress"]) == 2
    assert "--eval-only needs --checkpoint" in capsys.readouterr().err
    (tmp_path / "broken.pt").write_bytes(best.read_bytes()[:100])
    assert main(["--eval-only", "--checkpoint", str(tmp_path / "broken.pt")]) == 2
    assert "cannot be read" in capsys.readouterr().err


def test_cli_subcommand_and_print_recipe(tmp_path, capsys):
    from sewforge.cli import main as sewforge_main

    recipe = tiny_recipe(tmp_path)
    assert sewforge_main(["train", str(recipe), "optimizer.lr=1e-3", "--print-recipe"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["optimizer"]["lr"] == 1e-3
    assert not (tmp_path / "run").exists()
    assert sewforge_main(["train", str(recipe), "optimizer.lrr=1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    # a spec string states its classes; a mismatch with the data is reported before any file is written
    assert sewforge_main(["train", str(recipe), "model.name=c4k3s1-BN-PLIF-FC10"]) == 2
    assert "has 10 outputs but dataset 'synthetic' has 4 classes" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------
# several processes
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_run_ends_with_identical_weights(tmp_path):
    recipe = tiny_recipe(tmp_path, epochs=2)
    script = write(tmp_path / "ddp_worker.py", f"""\
        import os, sys, time
        import torch
        from sewforge.train import load_recipe, train
        from sewforge.train.distributed import main_process_first, setup
        ctx = setup("cpu")  # the trainer below reuses this process group
        with main_process_first(ctx):  # rank 0 first (it would fill the frame cache), then the others
            start = time.time()
            if ctx.is_main:
                time.sleep(1.0)
            end = time.time()
        with open(os.path.join({str(tmp_path)!r}, "order%d.txt" % ctx.rank), "w") as f:
            f.write("%r %r" % (start, end))
        result = train(load_recipe({str(recipe)!r}), progress=False)
        state = {{k: v for k, v in result.model.state_dict().items()}}
        torch.save(state, os.path.join({str(tmp_path)!r}, "rank%s.pt" % os.environ["RANK"]))
        torch.distributed.destroy_process_group()
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    s0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    s1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in s0:
        assert torch.equal(s0[k], s1[k]), k
    start0, end0 = map(float, (tmp_path / "order0.txt").read_text().split())
    start1, end1 = map(float, (tmp_path / "order1.txt").read_text().split())
    assert start1 >= end0, "rank 1 entered the data preparation before rank 0 had finished it"
    # only rank 0 wrote the run folder; each process trained on half of each epoch
    table = rows(tmp_path / "run")
    assert [r["epoch"] for r in table] == ["1", "2"]
    assert "x 2 processes" in proc.stdout
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["world_size"] == 2 and len(saved["rng"]) == 2
    for k in s0:
        assert torch.equal(saved["model"][k], s0[k]), k


def test_evaluation_reports_top1_and_top5_accuracy():
    """Table 2 reports Acc@1 and Acc@5: the evaluation computes both (top-5 only with >= 5 classes)."""
    from sewforge.train.distributed import DistContext
    from sewforge.train.epochs import evaluate
    from sewforge.train.meters import FiringRateMeter
    from sewforge.train.recipe import recipe_from_dict

    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits

        def forward(self, x):
            return self.logits[x.reshape(x.shape[0], -1)[:, 0].long()]

    # four samples of class 0, which ranks 1st, 2nd, 6th and 5th among 6 classes
    ranks = torch.tensor([[9., 1, 2, 3, 4, 5], [8, 9, 1, 2, 3, 4], [1, 5, 4, 3, 2, 9], [2, 9, 8, 7, 6, 1]])
    y = torch.tensor([0, 0, 0, 0])
    x = torch.arange(4.0).reshape(4, 1)  # the sample index, read back by Fixed
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=3)
    recipe = recipe_from_dict({"model": {"name": SPEC}, "data": {"name": "synthetic", "T": 1}})
    model = Fixed(ranks)
    stats = evaluate(DistContext(), model, loader, recipe, FiringRateMeter(model), progress=False)
    assert stats.acc == pytest.approx(25.0) and stats.acc5 == pytest.approx(75.0)
    three = Fixed(ranks[:, :3])
    stats = evaluate(DistContext(), three, loader, recipe, FiringRateMeter(three), progress=False)
    assert math.isnan(stats.acc5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_asking_for_a_missing_gpu_is_an_error_message_not_a_traceback(tmp_path, capsys, device):
    recipe = tiny_recipe(tmp_path, device=device)
    assert main([str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "device=cpu" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_data_that_cannot_be_written_is_an_error_message_not_a_traceback(tmp_path, capsys, monkeypatch):
    """A read-only dataset root (frames cannot be cached there) or output folder: exit 2, one message."""
    import sewforge.train.loop as loop

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/data/DVS128Gesture/frames_number_16_split_by_number")

    monkeypatch.setattr(loop, "build_datasets", read_only)
    assert main([str(tiny_recipe(tmp_path)), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Permission denied" in err and "frames_number_16_split_by_number" in err


def test_resume_with_a_model_that_does_not_fit_the_checkpoint_names_both(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1)
    assert main([str(recipe), "--no-progress"]) == 0
    before = digest(tmp_path / "run" / "last.pt")
    other = "c6k3s1-BN-PLIF-MPk2s2-{SEW(c6)-MPk2s2}*1-FC4"
    assert main([str(recipe), "epochs=2", f"model.name={other}", "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "last.pt" in err and "do not fit" in err and "args.yaml" in err and "Traceback" not in err
    assert digest(tmp_path / "run" / "last.pt") == before and len(rows(tmp_path / "run")) == 1


def test_resume_with_another_optimizer_says_which_and_what_to_do(tmp_path, capsys):
    recipe = tiny_recipe(tmp_path, epochs=1)
    assert main([str(recipe), "--no-progress"]) == 0
    assert main([str(recipe), "epochs=2", "optimizer.name=adamw", "optimizer.lr=1e-3", "--resume",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'sgd'" in err and "'adamw'" in err and "optimizer.name=sgd" in err
    assert len(rows(tmp_path / "run")) == 1


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    """Disk full while writing args.yaml / summary.csv / curves.png / a checkpoint / frames: the
    previous file stays, nothing else."""
    from sewforge import fileio
    from sewforge.data import save_frames
    from sewforge.train import checkpoint

    target = tmp_path / "summary.csv"
    fileio.atomic_write_text(target, "epoch\n1\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fileio.atomic_write_text(target, "epoch\n1\n2\n")
    with pytest.raises(OSError, match="No space left"):
        save_frames(tmp_path / "frames.npz", np.zeros((2, 2, 4, 4), dtype=np.int64))
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    assert target.read_text() == "epoch\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.csv"]


# ---------------------------------------------------------------------------------------------
# how the network runs: memory, channels_last, compile
# ---------------------------------------------------------------------------------------------
def test_memory_channels_last_and_compile_keys_are_checked_with_file_and_line(tmp_path):
    path = write(tmp_path / "r.yaml", f"""\
        model:
          name: sew7b_gesture
          memory: tiny
          channels_last: yes please
        data: {{name: {DATASET}}}
        compile: 1
        """)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    msg = str(info.value)
    assert f"{path}:3: model.memory: 'tiny' is not one of compact, dense, recompute, lean" in msg
    assert f"{path}:4: model.channels_last: expected true or false, got 'yes please'" in msg
    assert f"{path}:6: compile: expected true or false, got 1" in msg
    with pytest.raises(RecipeError, match="override 'model.memory=recompte': model.memory: 'recompte' is not one of "
                                          r"compact, dense, recompute, lean \(did you mean 'recompute'\?\)"):
        load_recipe(write(tmp_path / "ok.yaml", "model: {name: sew7b_gesture}\n"), ["model.memory=recompte"])
    recipe = load_recipe(tmp_path / "ok.yaml")
    assert (recipe.model.memory, recipe.model.channels_last, recipe.compile) == ("compact", False, False)


def test_recipe_memory_and_channels_last_reach_the_model(tmp_path):
    from types import SimpleNamespace

    from sewforge.train.factories import build_model

    data = SimpleNamespace(num_classes=11, input_shape=(2, 128, 128))
    recipe = load_recipe(write(tmp_path / "r.yaml", "model: {name: sew7b_gesture, memory: recompute, "
                                                    "channels_last: true}\n"))
    model = build_model(recipe, data)
    assert model.memory == "recompute" and model.channels_last
    assert model.layers[0].module.weight.is_contiguous(memory_format=torch.channels_last)
    plain = build_model(load_recipe(write(tmp_path / "p.yaml", f"model: {{name: {MODEL}}}\n")), data)
    assert isinstance(plain, TinyNet)  # a plugin model without these arguments still builds with the defaults


def _weights(folder: Path):
    return load_checkpoint(folder / "last.pt")["model"]


def test_training_with_recompute_and_channels_last_ends_with_the_same_weights(tmp_path):
    recipe = tiny_recipe(tmp_path, epochs=1)
    runs = {}
    for name, extra in (("dense", ["model.memory=dense"]), ("recompute", ["model.memory=recompute"]),
                        ("compact", [])):
        assert main([str(recipe), f"output={tmp_path / name}", "--no-progress", *extra]) == 0
        runs[name] = _weights(tmp_path / name)
    for name in ("recompute", "compact"):
        for key, value in runs["dense"].items():
            torch.testing.assert_close(runs[name][key], value, rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")
    assert main([str(recipe), f"output={tmp_path / 'cl'}", "--no-progress", "model.channels_last=true"]) == 0
    row = rows(tmp_path / "cl")[0]
    assert math.isfinite(float(row["train_loss"])) and 0 <= float(row["firing_rate"]) <= 1


def test_compile_without_a_working_compiler_warns_once_and_trains_eager(tmp_path, capsys, monkeypatch):
    import sewforge.train.compile as compiling

    def no_compiler(*args, **kwargs):
        raise RuntimeError("no C++ compiler found\nsecond line")

    monkeypatch.setattr(torch, "compile", no_compiler)
    monkeypatch.setattr(compiling, "_COMPILER_PROBLEMS", {})
    recipe = tiny_recipe(tmp_path, epochs=1, compile=True)
    assert main([str(recipe), "--no-progress"]) == 0
    out = capsys.readouterr().out
    warning = [line for line in out.splitlines() if line.startswith("compile:")]
    assert warning == ["compile: true, but torch.compile does not work here (RuntimeError: no C++ compiler found); "
                       "training runs eager"]
    assert math.isfinite(float(rows(tmp_path / "run")[0]["train_loss"]))


def test_compile_that_fails_on_the_first_step_falls_back_to_eager(tmp_path, capsys, monkeypatch):
    import sewforge.train.compile as compiling

    def compile_that_breaks(module, **kwargs):
        def run(*args, **kw):
            raise RuntimeError("backend failed: unsupported operator")
        return run

    monkeypatch.setattr(torch, "compile", compile_that_breaks)
    monkeypatch.setattr(compiling, "compiler_problem", lambda device: None)
    recipe = tiny_recipe(tmp_path, epochs=1, compile=True)
    assert main([str(recipe), "--no-progress", f"output={tmp_path / 'fallback'}"]) == 0
    out = capsys.readouterr().out
    assert out.count("compile: torch.compile failed on the first step (RuntimeError: backend failed: unsupported "
                     "operator); training runs eager") == 1
    assert main([str(recipe), "--no-progress", f"output={tmp_path / 'eager'}"]) == 0
    for key, value in _weights(tmp_path / "eager").items():  # the eager run it fell back to, step for step
        assert torch.equal(_weights(tmp_path / "fallback")[key], value), key


# ---------------------------------------------------------------------------------------------
# OS errors while writing a run folder (tests run as root, where chmod stops no write: the
# failures are raised where the files are renamed into place)
# ---------------------------------------------------------------------------------------------
def _fail_writing(monkeypatch, name: str, exc: OSError) -> None:
    from sewforge import fileio

    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "replace", replace)


@pytest.mark.parametrize("name, exc, advice", [
    ("last.pt", OSError(28, "No space left on device"), "free space on that disk"),
    ("summary.csv", OSError(28, "No space left on device"), "free space on that disk"),
    ("args.yaml", PermissionError(13, "Permission denied"), "writable"),
    ("curves.png", PermissionError(13, "Permission denied"), "writable"),
])
def test_a_run_file_that_cannot_be_written_names_key_file_and_reason(tmp_path, capsys, monkeypatch, name, exc,
                                                                      advice):
    recipe = tiny_recipe(tmp_path, epochs=1)
    run = tmp_path / "run"
    assert main([str(recipe), "--no-progress"]) == 0
    before = {p.name: digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    _fail_writing(monkeypatch, name, exc)
    assert main([str(recipe), "--resume", "epochs=2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"output={str(run)!r}: cannot write {str(run / name)!r} ({exc.strerror}); " in err and advice in err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    after = {p.name: digest(p) for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    assert after[name] == before[name]  # the previous good file is untouched
    if name in ("args.yaml", "last.pt"):
        assert after["summary.csv"] == before["summary.csv"] and after["last.pt"] == before["last.pt"]
    monkeypatch.undo()
    assert main([str(recipe), "--resume", "epochs=2", "--no-progress"]) == 0  # and the run goes on
    assert [r["epoch"] for r in rows(run)] == ["1", "2"]


def test_a_full_disk_on_the_first_checkpoint_and_a_file_for_a_folder_are_one_line(tmp_path, capsys, monkeypatch):
    recipe = tiny_recipe(tmp_path, epochs=1)
    _fail_writing(monkeypatch, "best.pt", OSError(28, "No space left on device"))
    assert main([str(recipe), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "best.pt" in err and "no checkpoint was written" in err, err
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()
    monkeypatch.undo()
    (tmp_path / "afile").write_text("not a folder")
    for output in (tmp_path / "afile", tmp_path / "afile" / "run"):
        assert main([str(recipe), f"output={output}", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"output={str(output)!r}" in err, err
        assert "a file stands where a folder should be" in err
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_ctrl_c_with_loading_workers_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C goes to the whole process group, loading workers included: the main process says one
    line and exits 130; no worker prints a traceback, none is left running."""
    import signal
    import time

    child = write(tmp_path / "child.py", f"""\
        import sys, time
        import torch
        from sewforge.registry import DATASETS
        from sewforge.cli import main

        class Slow(torch.utils.data.Dataset):
            num_classes, input_shape = 3, (2, 8, 8)

            def __init__(self, root=None, split="train", T=4, **_):
                self.T = T

            def __len__(self):
                return 400

            def __getitem__(self, i):
                open({str(tmp_path / "loading")!r}, "a").close()  # a worker is loading
                time.sleep(0.02)
                return torch.zeros(self.T, 2, 8, 8), i % 3

        DATASETS.add("_slow", Slow, description="slow")
        sys.exit(main(["train", *sys.argv[1:]]))
        """)
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": "c4k3s1-BN-PLIF-FC3"},
                         data={"name": "_slow", "T": 4, "workers": 2}, T_train=None)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(child), str(recipe), "--no-progress"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env, cwd=str(tmp_path))
    try:
        deadline = time.time() + 60
        while not (tmp_path / "loading").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(1.0)  # batches are flowing
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.strip().startswith("interrupted before the first epoch ended")
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.killpg(proc.pid, 0)  # a worker of the group still runs
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("a data-loading worker outlived the interrupted training")


@pytest.mark.slow
def test_every_process_of_a_distributed_run_names_the_bad_sample(tmp_path):
    """Only one process loads the NaN sample; both stop naming it (and the same bad test sample).
    When process 0 cannot write the run folder, the other stops too instead of waiting for it."""
    recipe = tiny_recipe(tmp_path, epochs=1, model={"name": SPEC.replace("FC4", "FC3")}, data={"name": DATASET, "T": 4})
    script = write(tmp_path / "ddp_worker.py", f"""\
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_train  # registers the test data set and model
        from sewforge.registry import DATASETS
        from sewforge.train import load_recipe, train
        from sewforge.train import NonFiniteError
        from sewforge.train.distributed import setup
        DATASETS.add(test_train.DATASET, test_train.Bars, description="test bars")
        setup("cpu")  # one process group for the three runs below
        rank = os.environ["RANK"]
        for name, override in (("train", "data.kwargs.nan_sample=37"), ("test", "data.kwargs.nan_test_sample=13")):
            try:
                train(load_recipe({str(recipe)!r}, [override, "output=" + os.path.join({str(tmp_path)!r}, name)]),
                      progress=False)
                message = "no error"
            except NonFiniteError as exc:
                message = str(exc)
            with open(os.path.join({str(tmp_path)!r}, "%s%s.txt" % (name, rank)), "w") as f:
                f.write(message)
        # process 0 meets a full disk writing last.pt: both stop, with the one line
        from sewforge import fileio
        from sewforge.train import RunFolderError
        real = os.replace
        def replace(src, dst, *args, **kwargs):
            if os.path.basename(dst) == "last.pt":
                raise OSError(28, "No space left on device")
            return real(src, dst, *args, **kwargs)
        fileio.os.replace = replace
        try:
            train(load_recipe({str(recipe)!r}, ["output=" + os.path.join({str(tmp_path)!r}, "full")]), progress=False)
            message = "no error"
        except RunFolderError as exc:
            message = str(exc)
        with open(os.path.join({str(tmp_path)!r}, "full%s.txt" % rank), "w") as f:
            f.write(message)
        sys.stdout.flush()
        os._exit(0)
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    for name, expected in (("train", f"training sample 37 of data {DATASET!r} (split 'train') holds NaN"),
                           ("test", f"test sample 13 of data {DATASET!r} (split 'test') holds NaN"),
                           ("full", f"cannot write {str(tmp_path / 'full' / 'last.pt')!r} (No space left on device)")):
        for rank in (0, 1):
            path = tmp_path / f"{name}{rank}.txt"
            assert path.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
            assert expected in path.read_text(), (rank, path.read_text())


@pytest.mark.slow
def test_two_process_run_whose_data_fails_on_process_0_stops_both_with_one_line_each(tmp_path):
    """Process 0 prepares the data first; when that fails, process 1 does not redo the work (or
    wait): both commands end with exit code 2 and one line, process 1's naming process 0's error."""
    recipe = tiny_recipe(tmp_path, epochs=1)
    script = write(tmp_path / "ddp_worker.py", f"""\
        import contextlib, io, os
        import sewforge.train.loop as loop
        from sewforge.cli import main
        rank = os.environ["RANK"]
        real = loop.build_datasets
        def build_datasets(recipe, *args, **kwargs):
            open(os.path.join({str(tmp_path)!r}, "built%s" % rank), "w").close()
            if rank == "0":
                raise ValueError("data root /data/gesture: no recordings found")
            return real(recipe, *args, **kwargs)
        loop.build_datasets = build_datasets
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main(["train", {str(recipe)!r}, "--no-progress"])
        with open(os.path.join({str(tmp_path)!r}, "rank%s.txt" % rank), "w") as f:
            f.write("%d\\n%s" % (rc, err.getvalue()))
        """)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rc0, err0 = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    rc1, err1 = (tmp_path / "rank1.txt").read_text().split("\n", 1)
    assert (rc0, rc1) == ("2", "2")
    assert err0.strip() == "error: data root /data/gesture: no recordings found"
    assert err1.strip() == ("error: process 0 failed preparing the run, so process 1 stops too: "
                            "ValueError: data root /data/gesture: no recordings found")
    assert (tmp_path / "built0").exists() and not (tmp_path / "built1").exists()
