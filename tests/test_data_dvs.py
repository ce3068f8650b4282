"""DVS128 Gesture and CIFAR10-DVS on tiny files written here in the original formats.

The writers below are independent of sewforge's readers (struct.pack, one event at a time), and
expected frames come from a slow pure-Python integration, so the readers, the split into samples,
the frames and the cache are all checked end to end.
"""
import os
import re
import struct
import time

import numpy as np
import pytest
import torch

from sewforge.data import (CIFAR10_CLASSES, DatasetFormatError, DatasetNotFoundError, create_dataset,
                           read_aedat3, read_cifar10dvs_aedat)
from sewforge.data import cache as cache_mod


# -- writers in the original formats ------------------------------------------------------------
def write_aedat3(path, packets, header=True):
    """packets: list of (event_type, ts_overflow, [(x, y, p, t_low31, valid), ...])."""
    with open(path, "wb") as f:
        if header:
            f.write(b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 2017-01-01\r\n"
                    b"#!END-HEADER\r\n")
        for e_type, overflow, events in packets:
            n = len(events)
            f.write(struct.pack("<hhiiiiii", e_type, 1, 8, 4, overflow, n, n, n))
            for x, y, p, t, valid in events:
                f.write(struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, t))


def write_cifar10dvs_aedat(path, xs, ys, ps, ts):
    """AEDAT 2.0 as in CIFAR10-DVS: frame (x, y, p) is stored as row 127-x, column 127-y, bit 1-p."""
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
                b"# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event\r\n")
        for x, y, p, t in zip(xs, ys, ps, ts):
            address = ((127 - x) << 8) | ((127 - y) << 1) | (1 - p)
            f.write(struct.pack(">II", address, t))


def slow_frames(xs, ys, ps, T, H=128, W=128):
    n = len(xs)
    per = n // T
    frames = np.zeros((T, 2, H, W), np.float32)
    for i in range(n):
        j = min(i // per, T - 1) if per else T - 1
        frames[j, ps[i], ys[i], xs[i]] += 1
    return frames


def random_events(rng, n, t0=0, span=1_000_000):
    ts = np.sort(rng.integers(t0, t0 + span, n)).tolist()
    return rng.integers(0, 128, n).tolist(), rng.integers(0, 128, n).tolist(), rng.integers(0, 2, n).tolist(), ts


# -- DVS128 Gesture ------------------------------------------------------------------------------------
GESTURE_TRIALS = {
    "train": {"user01_fluorescent": [(1, 100, 5000), (3, 6000, 9000), (3, 9500, 12000)],
              "user02_led": [(11, 0, 20000), (2, 20000, 30000)]},
    "test": {"user24_lab": [(5, 1000, 4000), (1, 4000, 8000)]},
}


def make_gesture_root(root, rng):
    """Original layout: <root>/DvsGesture/*.aedat, *_labels.csv, trials_to_{train,test}.txt."""
    raw = root / "DvsGesture"
    raw.mkdir(parents=True)
    events = {}
    for split, trials in GESTURE_TRIALS.items():
        (raw / f"trials_to_{split}.txt").write_text("".join(f"{s}.aedat\r\n" for s in trials) + "\r\n")
        for stem, rows in trials.items():
            with open(raw / f"{stem}_labels.csv", "w") as f:
                f.write("class,startTime_usec,endTime_usec\n")
                for cls, start, end in rows:
                    f.write(f"{cls},{start},{end}\n")
            xs, ys, ps, ts = random_events(rng, 400, 0, 30000)
            valid = rng.integers(0, 2, 400).tolist()
            evs = list(zip(xs, ys, ps, ts, valid))
            # A special-event packet (skipped), then the polarity events in three packets.
            write_aedat3(raw / f"{stem}.aedat", [(0, 0, [(0, 0, 0, 5, 1)]), (1, 0, evs[:150]),
                                                 (1, 0, evs[150:151]), (1, 0, evs[151:])])
            events[stem] = (xs, ys, ps, ts)
    return raw, events


def expected_gesture_samples(events, split, T):
    out = []
    for stem, rows in GESTURE_TRIALS[split].items():
        xs, ys, ps, ts = events[stem]
        for cls, start, end in rows:
            keep = [i for i, t in enumerate(ts) if start <= t < end]
            out.append((cls - 1, slow_frames([xs[i] for i in keep], [ys[i] for i in keep],
                                             [ps[i] for i in keep], T)))
    return out


def _match(dataset, expected):
    got = [(y, x.numpy()) for x, y in (dataset[i] for i in range(len(dataset)))]
    assert sorted(y for y, _ in got) == sorted(y for y, _ in expected)
    for label, frames in expected:
        assert any(y == label and np.array_equal(x, frames) for y, x in got), f"sample of label {label} missing"


def test_aedat3_reader_fields_and_timestamp_overflow(tmp_path):
    path = tmp_path / "rec.aedat"
    write_aedat3(path, [(1, 0, [(3, 4, 1, 10, 1), (127, 0, 0, 2**31 - 1, 0)]),
                        (2, 0, [(9, 9, 1, 99, 1)]),  # a non-polarity packet of the same size: skipped
                        (1, 1, [(5, 6, 0, 7, 1)])])
    ev = read_aedat3(path)
    assert ev["x"].tolist() == [3, 127, 5] and ev["y"].tolist() == [4, 0, 6] and ev["p"].tolist() == [1, 0, 0]
    assert ev["t"].tolist() == [10, 2**31 - 1, 2**31 + 7]
    assert read_aedat3(path, only_valid=True)["x"].tolist() == [3, 5]


def test_gesture_from_original_download_matches_slow_reference(tmp_path):
    rng = np.random.default_rng(0)
    raw, events = make_gesture_root(tmp_path, rng)
    T = 4
    train = create_dataset("dvs128_gesture", root=str(tmp_path), split="train", T=T, workers=1, verbose=False)
    test = create_dataset("dvs128_gesture", root=tmp_path, split="test", T=T, workers=1, verbose=False)
    assert (len(train), len(test)) == (5, 2)
    assert train.num_classes == 11 and train.input_shape == (2, 128, 128) and train.classes[0] == "hand_clapping"
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (T, 2, 128, 128) and isinstance(y, int)
    _match(train, expected_gesture_samples(events, "train", T))
    _match(test, expected_gesture_samples(events, "test", T))
    # Cached in SpikingJelly's layout: <root>/frames_number_4_split_by_number/<split>/<label>/<stem>_<k>.npz
    frames_dir = tmp_path / "frames_number_4_split_by_number"
    assert sorted(p.name for p in (frames_dir / "train" / "2").iterdir()) == ["user01_fluorescent_0.npz",
                                                                               "user01_fluorescent_1.npz"]
    # A second open converts nothing and gives the same data.
    again = create_dataset("dvs128_gesture", root=tmp_path, split="train", T=T, workers=1, verbose=False)
    assert [s[0] for s in again.samples] == [s[0] for s in train.samples]


def test_gesture_reads_spikingjelly_frames_without_recordings(tmp_path):
    T = 3
    folder = tmp_path / "frames_number_3_split_by_number"
    rng = np.random.default_rng(1)
    written = {}
    for split, label, name in [("train", 0, "user01_led_0"), ("train", 10, "user01_led_0"),
                               ("test", 4, "user25_lab_1")]:
        (folder / split / str(label)).mkdir(parents=True, exist_ok=True)
        frames = rng.integers(0, 5, (T, 2, 128, 128)).astype(np.float64)  # SpikingJelly saves float64
        np.savez(folder / split / str(label) / f"{name}.npz", frames=frames)
        written[(split, label)] = frames
    train = create_dataset("dvs128_gesture", root=tmp_path, split="train", T=T)
    assert [y for _, y in train] == [0, 10]
    np.testing.assert_array_equal(train[1][0].numpy(), written[("train", 10)])
    test = create_dataset("dvs128_gesture", root=tmp_path, split="test", T=T)
    assert len(test) == 1 and test[0][1] == 4
    with pytest.raises(DatasetNotFoundError, match="trials_to_train.txt"):
        create_dataset("dvs128_gesture", root=tmp_path, split="train", T=5)  # no frames for T=5


def test_gesture_prefers_existing_spikingjelly_frames_over_reprocessing(tmp_path):
    rng = np.random.default_rng(2)
    make_gesture_root(tmp_path, rng)
    done = tmp_path / "frames_number_2_split_by_number" / "test" / "4"
    done.mkdir(parents=True)
    marker = np.full((2, 2, 128, 128), 7.0)
    np.savez(done / "user24_lab_0.npz", frames=marker)
    test = create_dataset("dvs128_gesture", root=tmp_path, split="test", T=2, workers=1, verbose=False)
    labels = [y for _, y in test]
    assert labels == [0, 4]
    np.testing.assert_array_equal(test[1][0].numpy(), marker)  # used as is, not made again


def test_gesture_cache_dir_for_read_only_roots(tmp_path):
    rng = np.random.default_rng(3)
    make_gesture_root(tmp_path / "data", rng)
    ds = create_dataset("dvs128_gesture", root=tmp_path / "data", split="test", T=2, workers=1,
                        cache_dir=tmp_path / "cache", verbose=False)
    assert len(ds) == 2
    assert not (tmp_path / "data" / "frames_number_2_split_by_number").exists()
    assert len(list((tmp_path / "cache" / "frames_number_2_split_by_number").rglob("*.npz"))) == 2


def test_frames_that_cannot_be_written_blame_the_frames_folder_not_the_recording(tmp_path):
    rng = np.random.default_rng(3)
    make_gesture_root(tmp_path / "data", rng)
    (tmp_path / "data" / "frames_number_2_split_by_number").write_text("not a folder")
    with pytest.raises(OSError) as info:
        create_dataset("dvs128_gesture", root=tmp_path / "data", split="test", T=2, workers=1, verbose=False)
    msg = str(info.value)
    assert "frames_number_2_split_by_number" in msg and "cache_dir" in msg and "replace the files" not in msg
    assert len(msg.splitlines()) == 1 and "a file stands where a folder should be" in msg, msg
    # with a writable cache_dir the same root works
    ds = create_dataset("dvs128_gesture", root=tmp_path / "data", split="test", T=2, workers=1,
                        cache_dir=tmp_path / "cache", verbose=False)
    assert len(ds) == 2


def test_gesture_missing_and_corrupt_files_are_named(tmp_path, capsys):
    with pytest.raises(DatasetNotFoundError, match=r"does not exist[\s\S]*trials_to_train.txt"):
        create_dataset("dvs128_gesture", root=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="needs root"):
        create_dataset("dvs128_gesture")
    rng = np.random.default_rng(4)
    raw, _ = make_gesture_root(tmp_path, rng)
    os.remove(raw / "user02_led_labels.csv")
    with pytest.raises(DatasetNotFoundError, match="user02_led_labels.csv"):
        create_dataset("dvs128_gesture", root=tmp_path, workers=1, verbose=False)
    (raw / "user02_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,0,10\n")
    with pytest.raises(DatasetFormatError, match=r"user02_led_labels.csv, line 2: class 12"):
        create_dataset("dvs128_gesture", root=tmp_path, workers=1, verbose=False)
    (raw / "user02_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n2,0,10\n")
    os.remove(raw / "user02_led.aedat")
    with pytest.raises(DatasetNotFoundError, match=r"user02_led.aedat listed in .*trials_to_train.txt"):
        create_dataset("dvs128_gesture", root=tmp_path, workers=1, verbose=False)
    # Truncated recording: named, and the other recording's frames are kept.
    data = (raw / "user01_fluorescent.aedat").read_bytes()
    (raw / "user02_led.aedat").write_bytes(data[:-5])
    with pytest.raises(DatasetFormatError, match=r"user02_led.aedat: truncated file") as info:
        create_dataset("dvs128_gesture", root=tmp_path, workers=1, verbose=False)
    assert "1 of 2 recordings" in str(info.value)
    kept = tmp_path / "frames_number_16_split_by_number" / "train"
    assert len(list(kept.rglob("user01_fluorescent_*.npz"))) == 3
    assert not list(kept.rglob("user02_led_*.npz"))
    # Not an AEDAT 3 file at all.
    (raw / "user02_led.aedat").write_bytes(b"#!AER-DAT2.0\r\n" + bytes(16))
    with pytest.raises(DatasetFormatError, match=r"user02_led.aedat: not an AEDAT 3.x file"):
        create_dataset("dvs128_gesture", root=tmp_path, workers=1, verbose=False)


def test_aedat3_truncated_header_and_event_outside_sensor(tmp_path):
    path = tmp_path / "a.aedat"
    write_aedat3(path, [(1, 0, [(1, 1, 1, 1, 1)])])
    data = path.read_bytes()
    header_end = data.index(b"#!END-HEADER\r\n") + len(b"#!END-HEADER\r\n")
    path.write_bytes(data[:header_end + 10])
    with pytest.raises(DatasetFormatError, match="too few for a 28-byte packet header"):
        read_aedat3(path)
    path.write_bytes(b"#!AER-DAT3.1\r\n#Format: RA")
    with pytest.raises(DatasetFormatError, match="no end of line"):
        read_aedat3(path)


# -- CIFAR10-DVS -----------------------------------------------------------------------------------------
def make_cifar10dvs_root(root, rng, n_airplane=11, n_other=2, events=40):
    recordings = {}
    for cls in CIFAR10_CLASSES:
        (root / cls).mkdir(parents=True)
        for i in range(n_airplane if cls == "airplane" else n_other):
            ev = random_events(rng, events + i)
            write_cifar10dvs_aedat(root / cls / f"cifar10_{cls}_{i}.aedat", *ev)
            recordings[(cls, i)] = ev
    return recordings


def test_cifar10dvs_reader_decodes_spikingjelly_address_layout(tmp_path):
    path = tmp_path / "r.aedat"
    write_cifar10dvs_aedat(path, [0, 127, 5], [127, 0, 9], [1, 0, 1], [3, 4, 2**32 - 1])
    ev = read_cifar10dvs_aedat(path)
    assert ev["x"].tolist() == [0, 127, 5] and ev["y"].tolist() == [127, 0, 9] and ev["p"].tolist() == [1, 0, 1]
    assert ev["t"].tolist() == [3, 4, 2**32 - 1]
    # Raw layout: row in bits 8-14, column in bits 1-7, polarity bit 0 (inverted), big-endian.
    raw = path.read_bytes()
    assert raw.endswith(struct.pack(">II", (122 << 8) | (118 << 1) | 0, 2**32 - 1))


def test_cifar10dvs_split_is_first_90_percent_in_sorted_order(tmp_path):
    rng = np.random.default_rng(5)
    recordings = make_cifar10dvs_root(tmp_path, rng)
    T = 4
    train = create_dataset("cifar10_dvs", root=tmp_path, split="train", T=T, workers=1, verbose=False)
    test = create_dataset("cifar10_dvs", root=tmp_path, split="test", T=T, workers=1, verbose=False)
    # airplane: 11 recordings sorted as 0, 1, 10, 2, ..., 9; ceil(0.9 * 11) = 10 train, so "9" is the test one.
    # Other classes: ceil(0.9 * 2) = 2 train, none test.
    assert (len(train), len(test)) == (10 + 9 * 2, 1)
    assert os.path.basename(test.samples[0][0]) == "cifar10_airplane_9.npz"
    assert train.num_classes == 10 and train.classes == CIFAR10_CLASSES and train.input_shape == (2, 128, 128)
    x, y = test[0]
    np.testing.assert_array_equal(x.numpy(), slow_frames(*recordings[("airplane", 9)][:3], T))
    for i in (0, 10, 27):
        path, label = train.samples[i]
        cls = CIFAR10_CLASSES[label]
        index = int(os.path.basename(path)[len(f"cifar10_{cls}_"):-4])
        np.testing.assert_array_equal(train[i][0].numpy(), slow_frames(*recordings[(cls, index)][:3], T))
    half = create_dataset("cifar10_dvs", root=tmp_path, split="test", T=T, train_ratio=0.5, workers=1,
                          verbose=False)
    assert len(half) == 5 + 9 * 1


@pytest.mark.parametrize("content,problem", [
    (b"", "empty file (0 bytes)"),
    (struct.pack(">II", 5, 7) * 3, "not an AEDAT 2.0 file"),  # events without the header
    (b"# a comment\r\n" + struct.pack(">II", 5, 7), "not an AEDAT 2.0 file"),
    (b"#!AER-DAT3.1\r\n" + struct.pack(">II", 5, 7), "not an AEDAT 2.0 file"),
])
def test_cifar10dvs_recording_that_is_not_a_recording_is_named(tmp_path, content, problem):
    rng = np.random.default_rng(6)
    make_cifar10dvs_root(tmp_path, rng, n_airplane=2, n_other=2)
    bad = tmp_path / "dog" / "cifar10_dog_1.aedat"
    bad.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=re.escape(f"{bad}: {problem}")):
        read_cifar10dvs_aedat(bad)
    with pytest.raises(DatasetFormatError, match=re.escape(str(bad))):
        create_dataset("cifar10_dvs", root=tmp_path, T=2, workers=1, verbose=False)


def test_a_split_without_samples_is_an_error_naming_split_and_folder(tmp_path):
    make_cifar10dvs_root(tmp_path, np.random.default_rng(7), n_airplane=2, n_other=2)
    # every recording goes to the training split: the test split is empty
    with pytest.raises(ValueError, match=rf"'cifar10_dvs': the test split in {re.escape(str(tmp_path))} has no samples"):
        create_dataset("cifar10_dvs", root=tmp_path, split="test", T=2, train_ratio=1.0, workers=1, verbose=False)
    assert len(create_dataset("cifar10_dvs", root=tmp_path, split="train", T=2, train_ratio=1.0, workers=1,
                              verbose=False)) == 20


def test_cifar10dvs_spikingjelly_frames_and_missing_classes(tmp_path):
    folder = tmp_path / "frames_number_2_split_by_number"
    for label, cls in enumerate(CIFAR10_CLASSES):
        (folder / cls).mkdir(parents=True)
        for i in range(10):
            np.savez(folder / cls / f"cifar10_{cls}_{i}.npz", frames=np.full((2, 2, 128, 128), float(label)))
    test = create_dataset("cifar10_dvs", root=tmp_path, split="test", T=2)
    assert len(test) == 10 and [y for _, y in test] == list(range(10))
    assert all(os.path.basename(p).endswith("_9.npz") for p, _ in test.samples)
    assert float(test[3][0].mean()) == 3.0
    for f in (folder / "cat").iterdir():
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match="classes cat"):
        create_dataset("cifar10_dvs", root=tmp_path, T=2)
    # Recordings for only some classes: the missing ones are named.
    raw = tmp_path / "raw"
    (raw / "airplane").mkdir(parents=True)
    write_cifar10dvs_aedat(raw / "airplane" / "cifar10_airplane_0.aedat", [1], [1], [1], [1])
    with pytest.raises(DatasetNotFoundError, match="automobile, bird"):
        create_dataset("cifar10_dvs", root=raw, T=2, workers=1, verbose=False)
    with pytest.raises(DatasetNotFoundError, match=r"cifar10_<class>_<i>.aedat"):
        create_dataset("cifar10_dvs", root=tmp_path / "empty_but_missing")


def test_frames_of_wrong_shape_or_damaged_file_are_named(tmp_path):
    folder = tmp_path / "frames_number_2_split_by_number" / "train" / "0"
    folder.mkdir(parents=True)
    np.savez(folder / "a_0.npz", frames=np.zeros((3, 2, 128, 128)))
    (folder / "b_0.npz").write_bytes(b"PK\x03\x04 not really a zip")
    ds = create_dataset("dvs128_gesture", root=tmp_path, T=2)
    with pytest.raises(DatasetFormatError, match=r"a_0.npz: frames of shape \(3, 2, 128, 128\)"):
        ds[0]
    with pytest.raises(DatasetFormatError, match=r"b_0.npz: cannot read frames"):
        ds[1]


def test_corrupt_recording_keeps_finished_frames_and_resume_converts_only_the_rest(tmp_path):
    rng = np.random.default_rng(6)
    make_cifar10dvs_root(tmp_path, rng, n_airplane=3, n_other=1, events=30)
    bad = tmp_path / "dog" / "cifar10_dog_0.aedat"
    good_bytes = bad.read_bytes()
    bad.write_bytes(good_bytes[:-3])
    with pytest.raises(DatasetFormatError, match=r"cifar10_dog_0.aedat: truncated or corrupt") as info:
        create_dataset("cifar10_dvs", root=tmp_path, T=2, train_ratio=1.0, workers=1, verbose=False)
    assert "1 of 12 recordings" in str(info.value) and "11 frames files were written and are kept" in str(info.value)
    frames_dir = tmp_path / "frames_number_2_split_by_number"
    done = sorted(frames_dir.rglob("*.npz"))
    assert len(done) == 11 and not (frames_dir / "dog" / "cifar10_dog_0.npz").exists()
    stamps = {p: p.stat().st_mtime_ns for p in done}
    bad.write_bytes(good_bytes)
    time.sleep(0.01)
    ds = create_dataset("cifar10_dvs", root=tmp_path, T=2, train_ratio=1.0, workers=1, verbose=False)
    assert len(ds) == 12
    assert all(p.stat().st_mtime_ns == m for p, m in stamps.items())  # kept, not rewritten
    assert not [p for p in frames_dir.rglob("*") if p.name.startswith(".")]


def test_crash_while_writing_leaves_no_half_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(7)
    make_cifar10dvs_root(tmp_path, rng, n_airplane=3, n_other=1, events=30)
    real = np.savez_compressed
    calls = []

    def dying_savez(f, **arrays):
        calls.append(1)
        if len(calls) == 5:
            f.write(b"PK\x03\x04 half of a file")
            raise KeyboardInterrupt  # the run is killed mid-write
        return real(f, **arrays)

    monkeypatch.setattr(cache_mod.np, "savez_compressed", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        create_dataset("cifar10_dvs", root=tmp_path, T=2, train_ratio=1.0, workers=1, verbose=False)
    frames_dir = tmp_path / "frames_number_2_split_by_number"
    files = [p for p in frames_dir.rglob("*") if p.is_file()]
    assert len(files) == 4 and all(p.suffix == ".npz" and not p.name.startswith(".") for p in files)
    for p in files:
        assert np.load(p)["frames"].shape == (2, 2, 128, 128)  # complete files only
    monkeypatch.setattr(cache_mod.np, "savez_compressed", real)
    ds = create_dataset("cifar10_dvs", root=tmp_path, T=2, train_ratio=1.0, workers=1, verbose=False)
    assert len(ds) == 12 and len(list(frames_dir.rglob("*.npz"))) == 12


def test_stale_temp_files_of_a_killed_run_are_removed(tmp_path):
    rng = np.random.default_rng(8)
    make_cifar10dvs_root(tmp_path, rng, n_airplane=2, n_other=1, events=10)
    folder = tmp_path / "frames_number_2_split_by_number" / "cat"
    folder.mkdir(parents=True)
    stale = folder / ".cifar10_cat_0.npz.1234.abcd1234.tmp"
    fresh = folder / ".cifar10_cat_0.npz.1235.abcd1235.tmp"  # maybe another process writing right now
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    old = time.time() - 2 * cache_mod.STALE_TEMP_SECONDS
    os.utime(stale, (old, old))
    create_dataset("cifar10_dvs", root=tmp_path, T=2, workers=1, verbose=False)
    assert not stale.exists() and fresh.exists()


def test_parallel_conversion_equals_serial(tmp_path):
    rng = np.random.default_rng(9)
    make_cifar10dvs_root(tmp_path / "data", rng, n_airplane=4, n_other=2, events=50)
    serial = create_dataset("cifar10_dvs", root=tmp_path / "data", T=3, train_ratio=1.0, workers=1,
                            cache_dir=tmp_path / "serial", verbose=False)
    parallel = create_dataset("cifar10_dvs", root=tmp_path / "data", T=3, train_ratio=1.0, workers=2,
                              cache_dir=tmp_path / "parallel", verbose=False)
    assert len(serial) == len(parallel) == 22
    for i in range(len(serial)):
        assert serial[i][1] == parallel[i][1]
        assert torch.equal(serial[i][0], parallel[i][0])


def test_progress_is_reported(tmp_path, capsys):
    rng = np.random.default_rng(10)
    make_cifar10dvs_root(tmp_path, rng, n_airplane=1, n_other=1, events=5)
    create_dataset("cifar10_dvs", root=tmp_path, T=2, train_ratio=1.0, workers=1)
    err = capsys.readouterr().err
    assert "cifar10_dvs: converting 10 recordings to frames (T=2, split by number)" in err and "10/10" in err


def test_event_dataset_arguments_are_checked(tmp_path):
    for kwargs, word in [({"split_by": "count"}, "split_by"), ({"workers": -1}, "workers"),
                         ({"train_ratio": 0}, "train_ratio"), ({"train_ratio": 1.5}, "train_ratio")]:
        with pytest.raises(ValueError, match=word):
            create_dataset("cifar10_dvs", root=tmp_path, **kwargs)
    with pytest.raises(ValueError, match="no argument 'train_ratio'"):
        create_dataset("dvs128_gesture", root=tmp_path, train_ratio=0.5)


def _python_loop_aedat3(path):
    """A per-event Python loop over the packets, as event readers are often written."""
    out = {"t": [], "x": [], "y": [], "p": []}
    with open(path, "rb") as f:
        line = f.readline()
        while line.startswith(b"#") and not line.startswith(b"#!END-HEADER"):
            line = f.readline()
        while True:
            header = f.read(28)
            if len(header) < 28:
                break
            e_type, _, size, _, overflow, capacity, _, _ = struct.unpack("<hhiiiiii", header)
            data = f.read(capacity * size)
            if e_type != 1:
                continue
            for k in range(0, len(data), size):
                word, t = struct.unpack("<Ii", data[k:k + 8])
                out["x"].append((word >> 17) & 0x7FFF)
                out["y"].append((word >> 2) & 0x7FFF)
                out["p"].append((word >> 1) & 1)
                out["t"].append(t | overflow << 31)
    return out


def test_vectorised_reader_is_an_order_of_magnitude_faster_than_a_python_loop(tmp_path):
    rng = np.random.default_rng(11)
    n = 60_000
    xs, ys, ps = rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n)
    words = (xs << 17) | (ys << 2) | (ps << 1) | 1
    body = np.stack([words.astype("<u4"), np.arange(n, dtype="<u4")], 1).tobytes()
    path = tmp_path / "big.aedat"
    with open(path, "wb") as f:
        f.write(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n")
        per = 4096
        for s in range(0, n, per):
            m = min(per, n - s)
            f.write(struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, m, m, m))
            f.write(body[s * 8:(s + m) * 8])

    def best_of(fn, repeat):
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            result = fn(path)
            times.append(time.perf_counter() - start)
        return min(times), result

    fast, ev = best_of(read_aedat3, 5)
    slow, ref = best_of(_python_loop_aedat3, 1)
    for key in ("t", "x", "y", "p"):
        assert ev[key].tolist() == ref[key]
    assert slow > 10 * fast, (slow, fast)


@pytest.mark.parametrize("exc, advice", [(OSError(28, "No space left on device"), "free space on that disk"),
                                         (PermissionError(13, "Permission denied"), "writable")])
def test_a_full_or_read_only_frame_cache_is_one_line_naming_key_folder_and_reason(tmp_path, monkeypatch, exc,
                                                                                  advice):
    """Tests run as root, where chmod stops no write: the failure is raised where a frames file is
    renamed into place.  The frames written before stay; nothing half-written is left."""
    from sewforge import fileio

    rng = np.random.default_rng(3)
    make_gesture_root(tmp_path / "data", rng)
    cache = tmp_path / "cache" / "frames_number_2_split_by_number"
    create_dataset("dvs128_gesture", root=tmp_path / "data", split="test", T=2, workers=1, cache_dir=tmp_path / "cache",
                   verbose=False)
    before = {p: p.read_bytes() for p in cache.rglob("*.npz")}
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(".npz"):
            raise exc
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(fileio.os, "replace", replace)
    with pytest.raises(OSError) as info:
        create_dataset("dvs128_gesture", root=tmp_path / "data", split="train", T=2, workers=1,
                       cache_dir=tmp_path / "cache", verbose=False)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1, msg
    assert msg.startswith(f"dvs128_gesture: data.kwargs.cache_dir={str(cache)!r}: cannot write '{cache}")
    assert f"({exc.strerror}); " in msg and advice in msg and "the 0 frames files written are kept" in msg
    assert {p: p.read_bytes() for p in cache.rglob("*.npz")} == before
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]


def test_ctrl_c_during_parallel_conversion_stops_cleanly_and_keeps_finished_files(tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the workers finish the recording in
    hand, the rest are cancelled, one line says what is kept, and no worker prints a traceback."""
    import signal
    import subprocess
    import sys
    import textwrap

    (tmp_path / "slowjob.py").write_text(textwrap.dedent(f"""\
        import os, time
        from dataclasses import dataclass

        @dataclass
        class Job:
            i: int
            T: int = 4
            split_by: str = "number"

            @property
            def source(self):
                return "recording%d" % self.i

            @property
            def outputs(self):
                return []

        def slow(job):
            time.sleep(0.4)
            open(os.path.join({str(tmp_path)!r}, "done%d" % job.i), "w").close()
            return 1
        """))
    (tmp_path / "run.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import slowjob
        from sewforge.data import cache
        cache.run_job = slowjob.slow
        try:
            cache.convert_recordings([slowjob.Job(i) for i in range(40)], workers=2, label="test data")
        except KeyboardInterrupt:
            sys.exit(130)
        """))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py")], stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stderr:  # wait until conversion is under way
        lines.append(line)
        if "/40 recordings" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rest = proc.communicate(timeout=30)[1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "test data: interrupted; the" in err and "next run converts only what is missing" in err, err
    done = len(list(tmp_path.glob("done*")))
    assert 2 <= done < 40, done  # the recordings in hand were finished, the rest never started
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(proc.pid, 0)
