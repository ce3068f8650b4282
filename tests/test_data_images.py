"""CIFAR-10 python batches and ImageNet-style folders, on tiny files written here."""
import pickle

import numpy as np
import pytest
import torch

from sewforge.data import DatasetFormatError, DatasetNotFoundError, create_dataset
from sewforge.data.images import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD


def write_cifar_batches(folder, n=6, seed=0):
    """The python version's layout: pickled dicts with bytes keys, data uint8 [N, 3072] (R, G, B planes)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [f"img_{i}.png".encode() for i in range(n)]}, f, protocol=2)
        batches[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"num_cases_per_batch": n, b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return batches


def test_cifar10_batches_normalised_and_augmented(tmp_path):
    batches = write_cifar_batches(tmp_path / "cifar-10-batches-py")
    test = create_dataset("cifar10", root=tmp_path, split="test")
    assert len(test) == 6 and test.num_classes == 10 and test.input_shape == (3, 32, 32)
    assert test.classes[0] == "airplane" and test.classes[9] == "truck"
    data, labels = batches["test_batch"]
    x, y = test[2]
    expected = (torch.from_numpy(data[2].reshape(3, 32, 32)).float() / 255
                - torch.tensor(CIFAR10_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR10_STD).view(3, 1, 1)
    assert x.dtype == torch.float32 and y == labels[2]
    torch.testing.assert_close(x, expected)
    train = create_dataset("cifar10", root=tmp_path / "cifar-10-batches-py", split="train", T=4)
    assert len(train) == 30 and train.targets().tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(8)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert any(not torch.equal(views[0], v) for v in views[1:])  # random crop / flip
    plain = create_dataset("cifar10", root=tmp_path, split="train", augment=False)
    assert torch.equal(plain[0][0], plain[0][0])


def test_cifar10_bad_files_are_named(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar_batches(folder)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="test_batch not found"):
        create_dataset("cifar10", root=tmp_path, split="test")
    raw = (folder / "data_batch_1").read_bytes()
    (folder / "data_batch_3").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetFormatError, match=r"data_batch_3: not a readable CIFAR-10 python batch"):
        create_dataset("cifar10", root=tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"labels": [1], b"data": np.zeros((1, 100), np.uint8)}))
    with pytest.raises(DatasetFormatError, match=r"data_batch_3: b'data' must be a uint8 array \[N, 3072\]"):
        create_dataset("cifar10", root=tmp_path)
    (folder / "data_batch_3").write_bytes(pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}))
    with pytest.raises(DatasetFormatError, match="b'labels' is missing"):
        create_dataset("cifar10", root=tmp_path)

    class Exploit:
        def __reduce__(self):
            return (print, ("this must never run",))

    (folder / "data_batch_3").write_bytes(pickle.dumps({b"labels": Exploit()}))
    with pytest.raises(DatasetFormatError, match="refusing to load builtins.print"):
        create_dataset("cifar10", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        create_dataset("cifar10", root=tmp_path / "missing")


def write_image_folder(root, classes, per_class, seed=0, size=(40, 30)):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for cls in classes:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{cls}_{i}.png")


def test_imagenet_folder_with_paper_augmentation(tmp_path):
    write_image_folder(tmp_path, ["n01440764", "n01443537", "n01484850"], 2)
    train = create_dataset("imagenet", root=tmp_path, split="train")
    val = create_dataset("imagenet", root=tmp_path, split="val")
    assert len(train) == 6 and len(val) == 6 and train.num_classes == 3
    assert train.classes == ("n01440764", "n01443537", "n01484850") and train.input_shape == (3, 224, 224)
    x, y = val[3]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == 1
    assert torch.equal(val[3][0], x)  # test preprocessing is deterministic
    # resize 256 + centre crop 224 of a uniform image gives the normalised colour everywhere.
    from PIL import Image
    Image.new("RGB", (50, 40), (255, 0, 128)).save(tmp_path / "val" / "n01440764" / "n01440764_9.png")
    val = create_dataset("imagenet", root=tmp_path, split="test")
    uniform = [x for x, _ in (val[i] for i in range(len(val))) if x.std(dim=(1, 2)).max() < 1e-5]
    assert len(uniform) == 1
    expected = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(uniform[0][:, 0, 0], expected, atol=1e-5, rtol=0)
    torch.manual_seed(0)
    views = [train[0][0] for _ in range(4)]
    assert all(v.shape == (3, 224, 224) for v in views) and not torch.equal(views[0], views[1])
    small = create_dataset("imagenet", root=tmp_path, split="train", image_size=64)
    assert small[0][0].shape == (3, 64, 64) and small.input_shape == (3, 64, 64)


def test_imagenet_errors_name_folder_and_file(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        create_dataset("imagenet", root=tmp_path / "nothing")
    write_image_folder(tmp_path, ["a", "b"], 1)
    (tmp_path / "val" / "c").mkdir()
    (tmp_path / "val" / "c" / "x.png").write_bytes((tmp_path / "val" / "a" / "a_0.png").read_bytes())
    with pytest.raises(DatasetFormatError, match=r"only in val: \['c'\]"):
        create_dataset("imagenet", root=tmp_path, split="val")
    (tmp_path / "train" / "b" / "b_0.png").write_bytes(b"\x89PNG not an image")
    train = create_dataset("imagenet", root=tmp_path, split="train")
    with pytest.raises(DatasetFormatError, match=r"b_0.png: cannot decode the image"):
        train[1]
    with pytest.raises(ValueError, match="image_size"):
        create_dataset("imagenet", root=tmp_path, image_size=0)
    import shutil
    shutil.rmtree(tmp_path / "val")
    with pytest.raises(DatasetNotFoundError, match=r"val does not exist"):
        create_dataset("imagenet", root=tmp_path, split="test")
