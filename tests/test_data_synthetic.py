"""The built-in synthetic data: deterministic, balanced, and only solvable from the order of events."""
import numpy as np
import pytest
import torch

from sewforge.data import SYNTHETIC_CLASSES, create_dataset, split_by_number, synthetic_events, synthetic_frames
from sewforge.registry import DATASETS


def _rng(seed):
    return np.random.default_rng(seed)


def test_contract_shapes_and_attributes():
    ds = create_dataset("synthetic", split="train", T=8, num_train=12, seed=3)
    assert len(ds) == 12 and ds.num_classes == 4 and ds.classes == SYNTHETIC_CLASSES
    assert ds.input_shape == (2, 32, 32)
    x, y = ds[5]
    assert x.dtype == torch.float32 and x.shape == (8, 2, 32, 32) and isinstance(y, int)
    assert torch.all(x >= 0) and torch.all(x == x.round())  # counts, not normalised
    assert x.sum() > 500
    assert ds.targets().tolist() == [i % 4 for i in range(12)]  # balanced
    test = create_dataset("synthetic", split="test", T=8, num_test=6, size=24)
    assert len(test) == 6 and test[0][0].shape == (8, 2, 24, 24)
    assert "synthetic" in DATASETS.names()


def test_deterministic_per_seed_and_prefix_stable():
    a, la = synthetic_frames(7, "train", 16, 4)
    b, lb = synthetic_frames(7, "train", 16, 4)
    assert torch.equal(a, b) and torch.equal(la, lb)
    c, _ = synthetic_frames(8, "train", 16, 4)
    assert not torch.equal(a, c)
    longer, _ = synthetic_frames(7, "train", 24, 4)
    assert torch.equal(longer[:16], a)  # sample i depends on (seed, split, i) only
    test, _ = synthetic_frames(7, "test", 16, 4)
    assert not torch.equal(test, a)


@pytest.mark.parametrize("label, mirror", [(0, 1), (2, 3)])
def test_mirrored_classes_are_the_same_events_in_reverse_time(label, mirror):
    ev = synthetic_events(label, _rng(11))
    ev_m = synthetic_events(mirror, _rng(11))
    key = lambda e: sorted(zip(e["x"].tolist(), e["y"].tolist(), e["p"].tolist()))  # noqa: E731
    assert key(ev) == key(ev_m)
    assert np.all(np.diff(ev["t"]) >= 0) and np.all(np.diff(ev_m["t"]) >= 0)
    n = len(ev["x"])
    # Reversed stream: the first event of one is the last of the other.
    assert (ev["x"][0], ev["y"][0]) == (ev_m["x"][-1], ev_m["y"][-1])
    f = split_by_number(ev, 8, 32, 32)
    f_m = split_by_number(ev_m, 8, 32, 32)
    np.testing.assert_array_equal(f.sum(0), f_m.sum(0))  # identical time-summed frame
    if n % 8 == 0:
        np.testing.assert_array_equal(f, f_m[::-1])
    assert not np.array_equal(f, f_m)


def _centre_track(frames):
    """Centre of mass (x, y) of the events of each frame: [N, T, 2]."""
    counts = frames.sum(2).double()  # [N, T, H, W]
    H, W = counts.shape[-2:]
    total = counts.sum((-1, -2)).clamp_min(1)
    xs = (counts * torch.arange(W).double()).sum((-1, -2)) / total
    ys = (counts * torch.arange(H).double().view(-1, 1)).sum((-1, -2)) / total
    return torch.stack([xs, ys], -1)


def _spread(counts):
    """Spatial spread of events along x minus along y, per sample ([N, H, W] counts)."""
    H, W = counts.shape[-2:]
    total = counts.sum((1, 2))
    gx, gy = torch.arange(W).double(), torch.arange(H).double().view(-1, 1)
    mx, my = (counts * gx).sum((1, 2)) / total, (counts * gy).sum((1, 2)) / total
    vx = (counts * (gx - mx.view(-1, 1, 1)) ** 2).sum((1, 2)) / total
    vy = (counts * (gy - my.view(-1, 1, 1)) ** 2).sum((1, 2)) / total
    return vx.sqrt() - vy.sqrt(), mx, my


def test_summed_frame_cannot_tell_direction_but_event_order_can():
    frames, labels = synthetic_frames(0, "train", 400, 8)
    summed = frames.sum(1).double()  # [N, 2, H, W]
    # Mirrored classes share the distribution of summed frames; the two axes do not.
    spread, _, _ = _spread(summed.sum(1))
    m = [spread[labels == c].mean().item() for c in range(4)]
    assert abs(m[0] - m[1]) + abs(m[2] - m[3]) < 0.25 * (abs(m[0] - m[2]) + abs(m[1] - m[3]))
    # Polarity carries nothing: no offset between ON and OFF events along the motion, in any class.
    _, on_x, on_y = _spread(summed[:, 1])
    _, off_x, off_y = _spread(summed[:, 0])
    for c, offset in ((0, on_x - off_x), (1, on_x - off_x), (2, on_y - off_y), (3, on_y - off_y)):
        d = offset[labels == c]
        assert abs(d.mean()) < 3 * d.std() / len(d) ** 0.5 + 0.05
    # A nearest-centroid classifier on summed frames stays far from solving it on held-out data ...
    means = torch.stack([summed.flatten(1)[labels == c].mean(0) for c in range(4)])
    test_frames, test_labels = synthetic_frames(0, "test", 200, 8)
    pred = torch.cdist(test_frames.sum(1).double().flatten(1), means).argmin(1)
    assert (pred == test_labels).double().mean() < 0.6
    # ... while the order of frames solves it: the direction in which the event centroid moves.
    track = _centre_track(test_frames)
    motion = track[:, -2:].mean(1) - track[:, :2].mean(1)  # late minus early, (dx, dy)
    horizontal = motion[:, 0].abs() > motion[:, 1].abs()
    guess = torch.where(horizontal, torch.where(motion[:, 0] > 0, 0, 1), torch.where(motion[:, 1] > 0, 2, 3))
    assert (guess == test_labels).double().mean() > 0.95


def test_generation_is_fast_and_cached():
    import time
    start = time.perf_counter()
    a = create_dataset("synthetic", T=8, num_train=300, seed=123)
    first = time.perf_counter() - start
    start = time.perf_counter()
    b = create_dataset("synthetic", T=8, num_train=300, seed=123)
    assert time.perf_counter() - start < 0.05 and b.frames is a.frames
    assert first < 10  # about 0.5 ms per sample; generous for a busy machine


def test_noise_and_size_change_the_data():
    quiet, _ = synthetic_frames(1, "train", 8, 4, noise=0.0)
    noisy, _ = synthetic_frames(1, "train", 8, 4, noise=1.0)
    assert noisy.sum() > 1.5 * quiet.sum()
    big, _ = synthetic_frames(1, "train", 4, 4, size=64)
    assert big.shape == (4, 4, 2, 64, 64)


@pytest.mark.parametrize("kwargs, word", [
    ({"seed": -1}, "seed"), ({"num_train": 0}, "num_train"), ({"size": 8}, "size"),
    ({"noise": "lots"}, "noise"), ({"split": "validation"}, "split"), ({"T": 0}, "T"),
    ({"nosie": 0.1}, "nosie"), ({"transform": 3}, "transform"),
])
def test_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        create_dataset("synthetic", **{"num_train": 4, **kwargs})


def test_unknown_name_is_the_registry_keyerror_and_none_kwargs_are_defaults():
    with pytest.raises(KeyError, match="did you mean 'synthetic'"):
        create_dataset("synthetik")
    ds = create_dataset("synthetic", T=2, num_train=4, seed=None, noise=None, split="val", num_test=3)
    assert len(ds) == 3 and ds.split == "test"


def test_transform_is_applied():
    ds = create_dataset("synthetic", T=2, num_train=4, transform=lambda x: x.clamp(max=1))
    assert ds[0][0].max() == 1
