"""Data read from disk by DataLoader workers, in real multi-process runs on gloo.

An image folder of PNG and JPEG files written by the test: world sizes 1, 2 and 4 end with the same
model (so they saw the same global batches); a run stopped mid-epoch and resumed with workers equals
the uninterrupted one bit for bit; a user's Dataset module in the working directory trains the same
model under mpirun and torchrun as alone; bad input is one line and exit status 2 on every rank.
"""

from __future__ import annotations

import shutil
import textwrap

import pytest
from conftest import assert_same_model
from helpers.images import write_image_folder

pytestmark = pytest.mark.slow

# 3 classes x 14 = 42 training images: 2.625 steps per epoch at batch 16, so batches straddle epochs
SGD = ["optimizer=sgd", "optimizer.momentum=0.9", "optimizer.weight_decay=0", "schedule=constant", "train.lr=0.05",
       "train.lr_scaling=none", "train.global_batch_size=16", "logging.tensorboard=false"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("folder"), {"train": 14, "val": 4}, classes=3, channels=3,
                              size=(30, 30))


def folder(root, *extra):
    return ["dataset=image_folder", f"dataset.root={root}", "dataset.augment=[pad_crop,hflip]", "dataset.crop_size=28",
            "dataset.eval_transform=[center_crop]", *SGD, *extra]


def test_world_sizes_1_2_4_train_the_same_model_from_an_image_folder(launch, images, tmp_path):
    common = folder(images, "model=lenet5", "train.max_steps=8", "checkpoint.every_steps=8",
                    "dataset.num_workers=1")
    models = {}
    for ranks in (1, 2, 4):
        r = launch(common, ranks=ranks, run_dir=tmp_path / f"ws{ranks}")
        assert r.returncode == 0, r.stderr
        s = r.summary
        assert s["dataset"] == "image_folder" and s["data_on_device"] is False and s["ranks_identical"] is True
        assert s["world_size"] == ranks and s["epochs"] == pytest.approx(8 * 16 / 42, abs=1e-3)
        models[ranks] = r.checkpoint(8)["model"]
    assert_same_model(models[1], models[2])
    assert_same_model(models[1], models[4])


def test_a_run_stopped_mid_epoch_resumes_exactly_with_workers(launch, images, tmp_path):
    # dropout and random crops: RNG state and per-sample augmentation seeds must both survive the resume
    common = ["model=mlp", "model.dropout=0.2", "model.hidden_sizes=[64,64]", "train.max_steps=12",
              "checkpoint.every_steps=5", "checkpoint.keep_last=3", "dataset.num_workers=2",
              *folder(images), "dataset.augment=[random_resized_crop,hflip]", "dataset.crop_size=24",
              "dataset.eval_transform=[resize,center_crop]", "dataset.resize_size=26"]
    full = launch(common, ranks=2, run_dir=tmp_path / "full")
    assert full.returncode == 0, full.stderr
    part = tmp_path / "interrupted"  # only the step-5 checkpoint survived: step 5 is inside epoch 1 (2.625 steps)
    (part / "checkpoints").mkdir(parents=True)
    shutil.copy(full.run_dir / "checkpoints" / "step_00000005.pt", part / "checkpoints")
    resumed = launch([*common, "checkpoint.resume=auto"], ranks=2, run_dir=part)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.summary["trained_steps_this_run"] == 7
    assert_same_model(full.checkpoint(12)["model"], resumed.checkpoint(12)["model"], exact=True)
    assert resumed.summary["parameter_digest"] == full.summary["parameter_digest"]
    assert resumed.summary["test_accuracy"] == full.summary["test_accuracy"]


USER_MODULE = textwrap.dedent('''
    """A user's own dataset module, found in the working directory."""
    import torch
    from PIL import Image
    from torch.utils.data import Dataset


    class Blobs(Dataset):
        """Pillow images whose class is their brightest quadrant."""

        num_classes = 4

        def __init__(self, n, offset):
            self.n, self.offset = n, offset

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(self.offset + i)
            label = (self.offset + i) % 4
            x = torch.randint(0, 120, (12, 12), generator=g, dtype=torch.uint8)
            r, c = divmod(label, 2)
            x[6 * r:6 * r + 6, 6 * c:6 * c + 6] += 120
            return Image.fromarray(x.numpy()), label


    def make_splits(root, size):
        assert root == "/not/used", root
        return Blobs(size, 0), Blobs(16, 10_000)
''')


@pytest.mark.parametrize("via", ["mpirun", "torchrun"])
def test_a_users_dataset_module_trains_the_same_model_under_launchers(launch, tmp_path, via):
    (tmp_path / "my_blobs.py").write_text(USER_MODULE)  # the launch fixture's working directory
    common = ["dataset._target_=my_blobs.make_splits", "dataset.root=/not/used", "+dataset.size=48",
              "dataset.val_fraction=0.25", "dataset.augment=[hflip]", "dataset.mean=[0.4]", "dataset.std=[0.3]",
              "model=mlp", "model.hidden_sizes=[32]", "train.max_steps=6", "checkpoint.every_steps=6",
              "dataset.num_workers=1", *SGD]
    alone = launch(common, run_dir=tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    launched = launch(common, ranks=2, via=via, run_dir=tmp_path / via)
    assert launched.returncode == 0, launched.stderr
    s = launched.summary
    assert s["dataset"] == "my_blobs.make_splits" and s["world_size"] == 2 and s["ranks_identical"] is True
    assert_same_model(alone.checkpoint(6)["model"], launched.checkpoint(6)["model"])


def one_line_on_every_rank(r, ranks: int, *needles) -> str:
    errors = [line for line in r.stderr.splitlines() if line.startswith("ddtrain: error:")]
    assert len(errors) == ranks and len(set(errors)) == 1, r.stderr
    assert r.returncode == 2, r.stderr  # the launch fixture reports the highest exit status of the ranks
    assert "Traceback" not in r.stderr and "DataLoader worker" not in r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def test_a_missing_image_folder_is_one_line_on_every_rank(launch, tmp_path):
    r = launch(["dataset=image_folder", f"dataset.root={tmp_path}/nowhere", "model=lenet5"], ranks=2)
    one_line_on_every_rank(r, 2, f"dataset.root={tmp_path}/nowhere is not a folder", "train/<class>")
    assert not (r.run_dir / "metrics.jsonl").exists()


def test_an_image_that_does_not_decode_in_a_worker_of_one_rank_stops_every_rank(launch, tmp_path):
    root = write_image_folder(tmp_path / "images", {"train": 14, "val": 4}, classes=3, channels=3)
    bad = root / "train" / "c2" / "0008.jpg"
    bad.write_bytes(bad.read_bytes()[:40])  # a truncated JPEG: its header reads, its pixels do not
    r = launch(folder(root, "model=lenet5", "dataset.crop_size=28", "train.max_steps=6",
                      "dataset.num_workers=2"), ranks=2)
    one_line_on_every_rank(r, 2, str(bad), "does not decode", "replace or delete it")


@pytest.mark.parametrize("target,needle", [
    ("my_missing_module.make", "dataset._target_=my_missing_module.make cannot be imported"),
    ("my_blobs.make_splits", "dataset._target_=my_blobs.make_splits failed: AssertionError: data"),
])
def test_a_bad_target_is_one_line_on_every_rank(launch, tmp_path, target, needle):
    (tmp_path / "my_blobs.py").write_text(USER_MODULE)
    r = launch([f"dataset._target_={target}", "+dataset.size=8", "model=mlp"], ranks=2)
    one_line_on_every_rank(r, 2, needle)
