"""Loading datasets into memory: file formats, normalisation, errors, mnist1d cache, synthetic data, val split."""

from __future__ import annotations

import gzip
import os
import pickle
import random

import numpy as np
import pytest
import torch

from ddtrain.config import DatasetConfig
from ddtrain.data import Splits, load_splits
from ddtrain.errors import UserError

CPU = torch.device("cpu")


def write_idx(path, arr: np.ndarray, gz: bool) -> str:
    """Write a uint8 array as an IDX file (big-endian header), optionally gzipped."""
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    path = str(path) + (".gz" if gz else "")
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as f:
        f.write(data)
    return path


def make_idx_dataset(root, n_train=5, n_test=3, layout_dir=None):
    """Train files gzipped in root/<layout_dir>, test files plain in root; pixel (i, 0, 0) is 255, rest i."""
    rng = np.random.default_rng(0)
    sets = {}
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        images = np.repeat(np.arange(n, dtype=np.uint8)[:, None, None], 28, 1).repeat(28, 2)
        images[:, 0, 0] = 255
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        folder = root / layout_dir if (gz and layout_dir) else root
        folder.mkdir(parents=True, exist_ok=True)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz)
        sets[prefix] = (images, labels)
    return sets


def cfg(**kw) -> DatasetConfig:
    kw.setdefault("val_fraction", 0.0)
    return DatasetConfig(**kw)


@pytest.mark.parametrize("name,layout,mean,std", [
    ("mnist", "MNIST/raw", 0.1307, 0.3081),
    ("fashion_mnist", "FashionMNIST/raw", 0.2860, 0.3530),
    ("mnist", None, 0.1307, 0.3081),
])
def test_idx_load_shapes_values_normalisation(tmp_path, name, layout, mean, std):
    sets = make_idx_dataset(tmp_path, layout_dir=layout)
    s = load_splits(cfg(name=name, root=str(tmp_path)), CPU)
    assert isinstance(s, Splits)
    assert s.train_x.shape == (5, 1, 28, 28) and s.test_x.shape == (3, 1, 28, 28)
    assert s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert s.val_x.shape == (0, 1, 28, 28) and s.val_y.shape == (0,)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.name == name
    assert s.sizes == {"train": 5, "val": 0, "test": 3}
    assert torch.equal(s.train_y, torch.from_numpy(sets["train"][1].astype(np.int64)))
    assert torch.equal(s.test_y, torch.from_numpy(sets["t10k"][1].astype(np.int64)))
    want = (torch.from_numpy(sets["train"][0]).float() / 255 - mean) / std
    torch.testing.assert_close(s.train_x[:, 0], want)
    assert s.train_x[2, 0, 0, 0].item() == pytest.approx((1 - mean) / std, rel=1e-5)
    assert s.train_x[0, 0, 5, 5].item() == pytest.approx(-mean / std, rel=1e-5)


def test_idx_missing_file_names_it(tmp_path):
    make_idx_dataset(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(UserError) as e:
        load_splits(cfg(name="mnist", root=str(tmp_path)), CPU)
    msg = str(e.value)
    assert "\n" not in msg and "dataset=mnist" in msg and "dataset.root=" in msg
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in msg


@pytest.mark.parametrize("damage", ["truncate", "magic", "garbage_gz", "count", "dims"])
def test_idx_corrupt_file_names_it(tmp_path, damage):
    make_idx_dataset(tmp_path)
    gz_images = tmp_path / "train-images-idx3-ubyte.gz"
    plain_images = tmp_path / "t10k-images-idx3-ubyte"
    if damage == "truncate":
        bad = plain_images
        bad.write_bytes(bad.read_bytes()[:-7])
    elif damage == "magic":
        bad = plain_images
        raw = bytearray(bad.read_bytes())
        raw[3] = 0x01  # claims 1 dimension
        bad.write_bytes(bytes(raw))
    elif damage == "garbage_gz":
        bad = gz_images
        bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 3)
    elif damage == "count":  # 4 test labels for 3 test images
        bad = tmp_path / "t10k-labels-idx1-ubyte"
        write_idx(bad, np.zeros(4, np.uint8), gz=False)
    else:
        bad = plain_images
        write_idx(bad, np.zeros((3, 27, 28), np.uint8), gz=False)
    with pytest.raises(UserError) as e:
        load_splits(cfg(name="mnist", root=str(tmp_path)), CPU)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def write_cifar(folder, n_per_batch=2):
    """CIFAR-10 python batches where pixel (c, h, w) of sample i is (i*7 + c*50 + h + 3*w) % 256."""
    folder.mkdir(parents=True, exist_ok=True)
    c, h, w = np.meshgrid(np.arange(3), np.arange(32), np.arange(32), indexing="ij")
    images, labels = [], []
    for b, fname in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        idx = np.arange(n_per_batch) + b * n_per_batch
        x = ((idx[:, None, None, None] * 7 + c * 50 + h + 3 * w) % 256).astype(np.uint8)
        y = [int(i % 10) for i in idx]
        with open(folder / fname, "wb") as f:
            pickle.dump({b"data": x.reshape(n_per_batch, 3072), b"labels": y, b"batch_label": b"x"}, f)
        images.append(x)
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("sub", ["", "cifar-10-batches-py"])
def test_cifar10_layout_and_normalisation(tmp_path, sub):
    images, labels = write_cifar(tmp_path / sub if sub else tmp_path)
    s = load_splits(cfg(name="cifar10", root=str(tmp_path)), CPU)
    assert s.train_x.shape == (10, 3, 32, 32) and s.test_x.shape == (2, 3, 32, 32)
    assert s.input_shape == (3, 32, 32) and s.num_classes == 10
    assert s.train_y.dtype == torch.int64 and s.train_y.tolist() == labels[:10].tolist()
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1)
    raw = s.train_x * std + mean
    torch.testing.assert_close(raw * 255, torch.from_numpy(images[:10]).float(), atol=1e-3, rtol=0)
    # one explicit pixel: sample 3, green channel, row 5, column 9
    assert round(raw[3, 1, 5, 9].item() * 255) == (3 * 7 + 50 + 5 + 27) % 256
    torch.testing.assert_close(s.test_x * std + mean, torch.from_numpy(images[10:]).float() / 255, atol=1e-5, rtol=0)


def test_cifar10_missing_and_corrupt(tmp_path):
    write_cifar(tmp_path)
    bad = tmp_path / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(UserError) as e:
        load_splits(cfg(name="cifar10", root=str(tmp_path)), CPU)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    os.remove(tmp_path / "test_batch")
    with pytest.raises(UserError) as e:
        load_splits(cfg(name="cifar10", root=str(tmp_path)), CPU)
    assert str(tmp_path / "test_batch") in str(e.value) and "dataset.root=" in str(e.value)


def test_unknown_dataset():
    with pytest.raises(UserError, match="dataset=imagenet"):
        load_splits(cfg(name="imagenet"), CPU)


def test_mnist1d_generates_caches_and_reuses(tmp_path, monkeypatch):
    import mnist1d.data

    np.random.seed(123)
    random.seed(123)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    s = load_splits(cfg(name="mnist1d", cache_dir=str(tmp_path)), CPU)
    # make_dataset reseeds the global RNGs; the loader must put them back
    assert np.array_equal(np.random.get_state()[1], before_np) and random.getstate() == before_py
    assert s.sizes == {"train": 4000, "val": 0, "test": 1000}
    assert s.train_x.shape == (4000, 40) and s.train_x.dtype == torch.float32 and s.train_y.dtype == torch.int64
    assert s.input_shape == (40,) and s.num_classes == 10
    cached = list((tmp_path / "mnist1d").glob("*.npz"))
    assert len(cached) == 1 and "n5000" in cached[0].name
    assert not list((tmp_path / "mnist1d").glob("*.tmp"))

    def boom(*a, **k):
        raise AssertionError("make_dataset called although the cache exists")

    monkeypatch.setattr(mnist1d.data, "make_dataset", boom)
    s2 = load_splits(cfg(name="mnist1d", cache_dir=str(tmp_path), val_fraction=0.1), CPU)
    assert s2.sizes == {"train": 3600, "val": 400, "test": 1000}
    assert torch.equal(s2.test_x, s.test_x)
    monkeypatch.undo()

    # a corrupt cache file is regenerated (and rewritten) rather than failing
    cached[0].write_bytes(b"PK\x03\x04 half written")
    s3 = load_splits(cfg(name="mnist1d", cache_dir=str(tmp_path)), CPU)
    assert torch.equal(s3.train_x, s.train_x)
    with np.load(cached[0]) as z:
        assert z["x"].shape == (4000, 40)


def synth(seed, **kw):
    kw = {"name": "synthetic", "num_samples": 200, "num_test_samples": 50, "shape": [3, 8, 8],
          "num_classes": 5, "split_seed": seed, **kw}
    return load_splits(cfg(**kw), CPU)


def test_synthetic_deterministic_and_learnable_labels():
    a, b, c = synth(0), synth(0), synth(1)
    assert a.train_x.shape == (200, 3, 8, 8) and a.test_x.shape == (50, 3, 8, 8)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.int64
    assert a.input_shape == (3, 8, 8) and a.num_classes == 5
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, k), getattr(b, k))
    assert not torch.equal(a.train_x, c.train_x)
    assert len(torch.unique(a.train_y)) >= 3 and a.train_y.max() < 5
    assert not torch.equal(a.train_x[:50], a.test_x)


def test_synthetic_imagenet_shape():
    s = synth(0, num_samples=256, num_test_samples=8, shape=[3, 224, 224], num_classes=10)
    assert s.train_x.shape == (256, 3, 224, 224) and len(torch.unique(s.train_y)) > 3


def _rows(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x.reshape(len(x), -1)]


def test_val_split_deterministic_and_disjoint():
    full = synth(3)
    a = synth(3, val_fraction=0.25)
    b = synth(3, val_fraction=0.25)
    assert a.sizes == {"train": 150, "val": 50, "test": 50}
    assert torch.equal(a.val_x, b.val_x) and torch.equal(a.train_x, b.train_x)
    train_rows, val_rows, all_rows = set(_rows(a.train_x)), set(_rows(a.val_x)), set(_rows(full.train_x))
    assert len(val_rows) == 50 and not (train_rows & val_rows)
    assert train_rows | val_rows == all_rows
    # labels travel with their samples
    lookup = dict(zip(_rows(full.train_x), full.train_y.tolist()))
    assert [lookup[r] for r in _rows(a.val_x)] == a.val_y.tolist()
    assert torch.equal(a.test_x, full.test_x)
    # val_fraction 0 keeps everything in train and gives empty val tensors of the right shape
    assert full.sizes["val"] == 0 and full.val_x.shape == (0, 3, 8, 8)


def test_val_fraction_out_of_range():
    with pytest.raises(UserError, match="val_fraction"):
        synth(0, val_fraction=1.0)
