"""Data read from disk by DataLoader workers: the same per-rank samples as the in-memory path, image folders, users' Datasets.

In-process checks (no process group): the loader's per-rank indices equal ShardedBatches' for the
same seed, batch and world size, also from a resume step; workers return exactly those samples;
the image folder lists files as torchvision does; bad folders and images are one line naming the
file; a user's `_target_` gets its arguments and its splits are named and carved as documented.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from ddtrain.batching import BatchPlan
from ddtrain.compose import compose
from ddtrain.data import load_data
from ddtrain.data.datasets import validation_indices
from ddtrain.data.loader import StepSampler
from ddtrain.data.sharding import ShardedBatches
from ddtrain.errors import UserError
from helpers.images import write_image_folder

CPU = torch.device("cpu")


def dataset_cfg(*overrides):
    return compose("train", list(overrides)).dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("images"), {"train": 11, "val": 4}, classes=3)


def folder_data(root, *overrides):
    return load_data(dataset_cfg("dataset=image_folder", f"dataset.root={root}", "dataset.channels=1",
                                 "dataset.mean=[0.5]", "dataset.std=[0.25]", *overrides), CPU)


# --- a user dataset whose inputs are their own indices, to see exactly which samples arrive
class IndexDataset(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i % 10


def index_splits(n=103):
    return IndexDataset(n), IndexDataset(20)


def index_data(n, *overrides):
    return load_data(dataset_cfg(f"dataset._target_={__name__}.index_splits", f"+dataset.n={n}",
                                 "dataset.val_fraction=0", *overrides), CPU)


@pytest.mark.parametrize("n,b,ws,accum", [(103, 24, 1, 1), (103, 24, 2, 2), (103, 24, 4, 1), (100, 8, 2, 1),
                                          (10, 8, 4, 2)])
def test_loader_indices_equal_the_in_memory_shards(n, b, ws, accum):
    data = index_data(n, "dataset.num_workers=0")
    x = torch.arange(n)
    for rank in range(ws):
        plan = BatchPlan(b, ws, accum)
        loaded, memory = data.train_batches(5, plan, rank), ShardedBatches(x, x, seed=5, plan=plan, rank=rank)
        for start in (0, 3):  # from the start and from a resume step: the sampler begins at that step
            requests = list(StepSampler(loaded, start, 3 * n // b + 2))
            expected = [memory.indices(s, m).tolist() for s in range(start, 3 * n // b + 2) for m in range(accum)]
            assert [idx for _, idx in requests] == expected
            assert [pos for pos, _ in requests] == [memory.position(s, m) for s in range(start, 3 * n // b + 2)
                                                    for m in range(accum)]


@pytest.mark.parametrize("workers", [0, 2])
def test_workers_deliver_each_ranks_samples_in_order(workers):
    n, plan = 103, BatchPlan(24, 2, 2)
    data = index_data(n, f"dataset.num_workers={workers}")
    union = {}
    for rank in range(2):
        batches = data.train_batches(5, plan, rank)
        got = list(data.feed(batches, 2, 12))
        assert len(got) == 10 * 2
        for k, (x, y) in enumerate(got):
            step, micro = divmod(k, 2)
            want = batches.indices(step + 2, micro)
            assert torch.equal(x[:, 0].long(), want) and torch.equal(y, want % 10)
            union.setdefault(step + 2, []).append(want)
    one = ShardedBatches(torch.arange(n), torch.arange(n), seed=5, plan=BatchPlan(24, 1, 1), rank=0)
    for step, parts in union.items():  # the union of the ranks' batches is the one-process batch
        assert sorted(torch.cat(parts).tolist()) == sorted(one.indices(step).tolist())


def test_evaluation_shards_cover_each_sample_once():
    data = index_data(103, "dataset.num_workers=1")
    seen = []
    for rank in range(3):
        seen += [int(v) for x, _ in data.eval_batches("test", rank, 3, 4) for v in x[:, 0]]
    assert sorted(seen) == list(range(20))


def test_image_folder_lists_files_in_torchvisions_order(folder):
    data = folder_data(folder)
    train = data.sources["train"]
    want = [(str(Path(c) / f), int(c[1])) for c in ("c0", "c1", "c2")
            for f in sorted(os.listdir(folder / "train" / c))]
    assert [(p.decode(), int(lab)) for p, lab in zip(train.paths, train.labels)] == want
    assert data.sizes == {"train": 33, "val": 12, "test": 12}  # no test/: the test split is val/
    assert data.input_shape == (1, 28, 28) and data.num_classes == 3 and not data.on_device


def test_image_folder_batches_are_the_decoded_normalised_images(folder):
    from PIL import Image

    data = folder_data(folder, "dataset.num_workers=2")
    batches = data.train_batches(0, BatchPlan(8, 1, 1), 0)
    x, y = next(iter(data.feed(batches, 0, 1)))
    train = data.sources["train"]
    for row, i in enumerate(batches.indices(0).tolist()):
        pixels = np.asarray(Image.open(train.path(i)).convert("L"), dtype=np.float32) / 255
        torch.testing.assert_close(x[row, 0], (torch.from_numpy(pixels) - 0.5) / 0.25)
        assert y[row] == train.labels[i]


def test_augmented_images_are_the_same_for_any_worker_count(folder):
    aug = ["dataset.augment=[pad_crop,hflip]", "dataset.pad=3"]
    plan = BatchPlan(12, 1, 1)
    runs = []
    for workers in (0, 2):
        data = folder_data(folder, *aug, f"dataset.num_workers={workers}")
        runs.append(torch.cat([x for x, _ in data.feed(data.train_batches(0, plan, 0), 0, 6)]))
    assert torch.equal(runs[0], runs[1])
    # 33 samples: steps 0-1 are epoch 0, step 3 onwards epoch 1; a sample looks different in another epoch
    data = folder_data(folder, *aug, "dataset.num_workers=0")
    reader = data.reader("train", seed=0)
    epoch0 = [reader.__getitems__((0, [i]))[0] for i in range(10)]
    epoch1 = [reader.__getitems__((33, [i]))[0] for i in range(10)]
    assert any(not torch.equal(a, b) for a, b in zip(epoch0, epoch1))
    assert all(torch.equal(a, reader.__getitems__((0, [i]))[0]) for i, a in enumerate(epoch0))


def test_image_folder_errors_name_the_folder_or_file(tmp_path, folder):
    with pytest.raises(UserError, match="is not a folder"):
        folder_data(tmp_path / "absent")
    (tmp_path / "no_train").mkdir()
    with pytest.raises(UserError, match=r"no_train/train is not a folder.*train/<class>"):
        folder_data(tmp_path / "no_train")
    empty = write_image_folder(tmp_path / "empty", {"train": 2, "val": 1}, classes=2)
    (empty / "train" / "c9").mkdir()
    with pytest.raises(UserError, match=r"class folder .*train/c9 holds no images"):
        folder_data(empty)
    odd = write_image_folder(tmp_path / "odd", {"train": 2, "val": 1}, classes=2)
    (odd / "val" / "zebra").mkdir()
    with pytest.raises(UserError, match="class folders that train/ lacks: zebra"):
        folder_data(odd)


def test_an_image_that_does_not_decode_is_one_line_naming_it_even_in_a_worker(tmp_path):
    root = write_image_folder(tmp_path / "bad", {"train": 8, "val": 2}, classes=2)
    bad = root / "train" / "c1" / "0005.png"
    bad.write_bytes(b"not an image at all")
    data = folder_data(root, "dataset.num_workers=2")
    with pytest.raises(UserError) as info:
        list(data.feed(data.train_batches(0, BatchPlan(16, 1, 1), 0), 0, 1))
    message = str(info.value)
    assert "\n" not in message and str(bad) in message and "does not decode" in message
    assert "replace or delete it" in message and "Traceback" not in message


def test_different_image_sizes_without_a_crop_say_what_to_do(tmp_path):
    root = write_image_folder(tmp_path / "sizes", {"train": 6, "val": 2}, classes=2, sizes_vary=True)
    data = folder_data(root, "dataset.num_workers=0")
    with pytest.raises(UserError, match=r"differ in shape .*dataset.augment=\[random_resized_crop\]"):
        list(data.feed(data.train_batches(0, BatchPlan(12, 1, 1), 0), 0, 1))
    cropped = folder_data(root, "dataset.augment=[random_resized_crop]", "dataset.eval_transform=[center_crop]",
                          "dataset.crop_size=20")
    x, _ = next(iter(cropped.feed(cropped.train_batches(0, BatchPlan(12, 1, 1), 0), 0, 1)))
    assert x.shape == (12, 1, 20, 20) and cropped.input_shape == (1, 20, 20)


# --- users' own datasets through dataset._target_
SEEN: dict = {}


def pair_splits(root, size=12, scale=1.0):
    SEEN.update(root=root, size=size, scale=scale)
    x = torch.randn(size, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * scale
    return TensorDataset(x, torch.arange(size) % 4), TensorDataset(x[:4], torch.arange(4))


class WithClasses(TensorDataset):
    classes = ["a", "b", "c", "d", "e", "f"]


def three_splits():
    x = torch.zeros(6, 5)
    return {"train": WithClasses(x, torch.arange(6)), "val": TensorDataset(x[:2], torch.arange(2)),
            "test": TensorDataset(x[:3], torch.arange(3))}


def failing_splits():
    raise FileNotFoundError("no such file: /data/x/labels.csv")


def not_pairs():
    return [torch.zeros(3)] * 4, [torch.zeros(3)] * 2


def test_a_targets_arguments_are_the_added_keys_and_root_when_it_asks():
    data = load_data(dataset_cfg(f"dataset._target_={__name__}.pair_splits", "dataset.root=/data/x",
                                 "+dataset.scale=2.5", "dataset.val_fraction=0.25", "dataset.split_seed=3"), CPU)
    assert SEEN == {"root": "/data/x", "size": 12, "scale": 2.5}  # not num_samples, val_fraction, ...
    assert data.name == f"{__name__}.pair_splits" and data.sizes == {"train": 9, "val": 3, "test": 4}
    train_idx, val_idx = validation_indices(12, 0.25, 3)  # carved exactly as the built-in datasets
    assert data.sources["val"].indices == val_idx.tolist() and data.sources["train"].indices == train_idx.tolist()
    assert data.input_shape == (3, 8, 8) and data.num_classes == 10  # no attribute: dataset.num_classes


def test_a_dict_of_three_splits_and_the_classes_attribute():
    data = load_data(dataset_cfg(f"dataset._target_={__name__}.three_splits"), CPU)
    assert data.sizes == {"train": 6, "val": 2, "test": 3} and data.num_classes == 6 and data.input_shape == (5,)


@pytest.mark.parametrize("target,needle", [
    ("nonexistent_pkg.data.make", r"dataset._target_=nonexistent_pkg.data.make cannot be imported "
                                  r"\(ModuleNotFoundError: No module named 'nonexistent_pkg'\)"),
    (f"{__name__}.no_such_function", "has no no_such_function"),
    (f"{__name__}.failing_splits", r"failed: FileNotFoundError: no such file: /data/x/labels.csv"),
    (f"{__name__}.not_pairs", r"must be \(input, target\) pairs"),
    ("builtins.print", "returned a NoneType"),
])
def test_bad_targets_are_one_line_naming_the_key(target, needle):
    with pytest.raises(UserError, match=needle) as info:
        load_data(dataset_cfg(f"dataset._target_={target}"), CPU)
    assert "\n" not in str(info.value) and "dataset._target_" in str(info.value)


def test_a_module_in_the_working_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_cwd_data.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import TensorDataset
        def make():
            return TensorDataset(torch.zeros(8, 4), torch.zeros(8, dtype=torch.long)), TensorDataset(
                torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    data = load_data(dataset_cfg("dataset._target_=my_cwd_data.make", "dataset.val_fraction=0"), CPU)
    assert data.sizes["train"] == 8 and data.input_shape == (4,)


def test_normalising_in_the_workers_or_on_the_device_gives_the_same_batches(folder):
    """On the CPU the workers normalise; on a GPU the device does (forced here on the CPU)."""
    plan, aug = BatchPlan(8, 1, 1), "dataset.augment=[hflip]"
    in_workers = folder_data(folder, aug, "dataset.num_workers=1")
    on_device = folder_data(folder, aug, "dataset.num_workers=1")
    on_device.in_workers, on_device.norm = False, on_device.cpu_norm
    for data in (in_workers, on_device):
        data.batches = [x for x, _ in data.feed(data.train_batches(0, plan, 0), 0, 3)]
        data.evals = [x for x, _ in data.eval_batches("val", 0, 1, 5)]
    assert on_device.batches[0].dtype == torch.float32
    for a, b in zip(in_workers.batches + in_workers.evals, on_device.batches + on_device.evals):
        torch.testing.assert_close(a, b)
