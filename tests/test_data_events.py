"""Event-to-frame integration against an independent, slow pure-Python implementation."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from sewforge.data import events_to_frames, slice_index, split_by_number, split_by_time


def slow_split_by_number(xs, ys, ps, T, H, W):
    """The paper's rule written out event by event: slice j = events [j*(n//T), (j+1)*(n//T)), last takes the rest."""
    n = len(xs)
    per = n // T
    frames = [[[[0] * W for _ in range(H)] for _ in range(2)] for _ in range(T)]
    for j in range(T):
        start = j * per
        stop = n if j == T - 1 else (j + 1) * per
        for i in range(start, stop):
            frames[j][1 if ps[i] else 0][ys[i]][xs[i]] += 1
    return np.array(frames, dtype=np.float64)


def slow_split_by_time(ts, xs, ys, ps, T, H, W):
    frames = np.zeros((T, 2, H, W))
    if not ts:
        return frames
    dt = max((ts[-1] - ts[0]) // T, 1)
    for t, x, y, p in zip(ts, xs, ys, ps):
        j = min((t - ts[0]) // dt, T - 1)
        frames[j, 1 if p else 0, y, x] += 1
    return frames


@st.composite
def event_streams(draw):
    H = draw(st.integers(1, 6))
    W = draw(st.integers(1, 6))
    T = draw(st.integers(1, 9))
    n = draw(st.integers(0, 120))
    xs = draw(st.lists(st.integers(0, W - 1), min_size=n, max_size=n))
    ys = draw(st.lists(st.integers(0, H - 1), min_size=n, max_size=n))
    ps = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    gaps = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    ts = list(np.cumsum(gaps).tolist())
    return ts, xs, ys, ps, T, H, W


@given(event_streams())
def test_split_by_number_matches_slow_reference(stream):
    ts, xs, ys, ps, T, H, W = stream
    events = {"t": np.array(ts, np.int64), "x": np.array(xs, np.uint16), "y": np.array(ys, np.uint16),
              "p": np.array(ps, np.uint8)}
    frames = split_by_number(events, T, H, W)
    assert frames.shape == (T, 2, H, W) and frames.dtype == np.float32
    np.testing.assert_array_equal(frames, slow_split_by_number(xs, ys, ps, T, H, W))
    assert frames.sum() == len(xs)  # nothing lost, nothing binarised


@given(event_streams())
def test_split_by_time_matches_slow_reference(stream):
    ts, xs, ys, ps, T, H, W = stream
    events = {"t": np.array(ts), "x": np.array(xs), "y": np.array(ys), "p": np.array(ps)}
    np.testing.assert_array_equal(split_by_time(events, T, H, W), slow_split_by_time(ts, xs, ys, ps, T, H, W))


@given(st.integers(0, 500), st.integers(1, 40))
def test_slice_index_equal_counts_last_takes_remainder(n, T):
    index = slice_index(n, T)
    counts = np.bincount(index, minlength=T)
    assert len(index) == n and np.all(np.diff(index) >= 0)
    assert np.all(counts[:-1] == n // T) and counts[-1] == n - (n // T) * (T - 1)


def test_large_random_stream_at_sensor_size():
    rng = np.random.default_rng(0)
    n, T = 20_011, 16
    ev = {"x": rng.integers(0, 128, n), "y": rng.integers(0, 128, n), "p": rng.integers(0, 2, n)}
    frames = split_by_number(ev, T, 128, 128, dtype=np.int64)
    per = n // T
    for j in (0, 7, T - 1):
        sl = slice(j * per, n if j == T - 1 else (j + 1) * per)
        expected = np.zeros((2, 128, 128), np.int64)
        np.add.at(expected, (ev["p"][sl], ev["y"][sl], ev["x"][sl]), 1)
        np.testing.assert_array_equal(frames[j], expected)


def test_structured_array_and_polarity_nonzero_is_on():
    ev = np.zeros(4, dtype=[("t", "<i8"), ("x", "<u2"), ("y", "<u2"), ("p", "i1")])
    ev["x"], ev["y"], ev["p"] = [0, 1, 1, 0], [0, 0, 1, 1], [-1, 0, 5, 1]
    frames = split_by_number(ev, 1, 2, 2)
    np.testing.assert_array_equal(frames[0, 0], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(frames[0, 1], [[1, 0], [1, 1]])


def test_errors_name_the_problem():
    ev = {"x": np.array([0, 5]), "y": np.array([0, 0]), "p": np.array([0, 1])}
    with pytest.raises(ValueError, match=r"x outside \[0, 3\]"):
        split_by_number(ev, 2, 4, 4)
    with pytest.raises(ValueError, match="field 'p'"):
        split_by_number({"x": np.array([0]), "y": np.array([0])}, 1, 4, 4)
    with pytest.raises(ValueError, match="differ in length"):
        split_by_number({"x": np.array([0, 1]), "y": np.array([0]), "p": np.array([0])}, 1, 4, 4)
    with pytest.raises(ValueError, match="T .* positive integer"):
        split_by_number({"x": np.array([0]), "y": np.array([0]), "p": np.array([0])}, 0, 4, 4)
    with pytest.raises(ValueError, match="split_by must be one of"):
        events_to_frames({"x": np.array([0]), "y": np.array([0]), "p": np.array([0])}, 1, 4, 4, "count")
    with pytest.raises(ValueError, match="time order"):
        split_by_time({"t": np.array([5, 1]), "x": np.array([0, 0]), "y": np.array([0, 0]),
                       "p": np.array([0, 0])}, 2, 4, 4)
