"""Bad input: one line naming the key or file, a non-zero exit on every rank, before any training step."""

from __future__ import annotations

import gzip
import struct

import pytest


def write_idx(path, magic: int, dims: tuple, payload: bytes) -> None:
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload)


def assert_one_line_error(r, *needles) -> None:
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("ddtrain: error:")]
    assert len(errors) == 1, r.stderr
    assert "Traceback" not in r.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not (r.run_dir / "summary.json").exists()
    assert not (r.run_dir / "metrics.jsonl").exists()  # failed before any training step


CASES = {
    "unknown model": (["model=transformer"], ["model=transformer", "cnn1d"]),
    "unknown dataset": (["dataset=imagenet"], ["dataset=imagenet", "mnist1d"]),
    "unknown optimizer": (["optimizer=rmsprop"], ["optimizer=rmsprop", "sgd"]),
    "wrong type": (["train.lr=fast"], ["train.lr"]),
    "batch does not divide": (["train.global_batch_size=100", "train.grad_accum_steps=3"],
                              ["train.global_batch_size=100", "multiple of 3"]),
    "zero lr": (["train.lr=0"], ["train.lr"]),
    "negative batch": (["train.global_batch_size=-8"], ["train.global_batch_size"]),
    "zero epochs": (["train.epochs=0"], ["train.epochs"]),
    "bad precision": (["train.precision=fp8"], ["train.precision=fp8", "bf16"]),
    "missing files": (["dataset=mnist", "dataset.root=/nonexistent/mnist"],
                      ["/nonexistent/mnist", "train-images-idx3-ubyte"]),
    "smaller than a batch": (["dataset=synthetic", "dataset.shape=[8]", "dataset.num_samples=20",
                              "dataset.val_fraction=0", "model=mlp", "train.global_batch_size=64"],
                             ["train.global_batch_size=64", "20 training samples"]),
    "image model on 1-D data": (["model=lenet5"], ["model=lenet5", "(40,)"]),
    "missing checkpoint": (["checkpoint.resume=/nonexistent/step.pt"], ["checkpoint.resume", "/nonexistent/step.pt"]),
}


@pytest.mark.parametrize("overrides,needles", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line(launch, overrides, needles):
    assert_one_line_error(launch(overrides), *needles)


def test_corrupt_idx_file_is_named(launch, tmp_path):
    root = tmp_path / "mnist"
    root.mkdir()
    write_idx(root / "train-images-idx3-ubyte", 0x803, (10, 28, 28), bytes(28 * 28 * 3))  # truncated
    write_idx(root / "train-labels-idx1-ubyte", 0x801, (10,), bytes(10))
    with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(2 * 28 * 28))
    write_idx(root / "t10k-labels-idx1-ubyte", 0x801, (2,), bytes(2))
    r = launch(["dataset=mnist", f"dataset.root={root}", "model=lenet5"])
    assert_one_line_error(r, "train-images-idx3-ubyte")


@pytest.mark.slow
@pytest.mark.parametrize("overrides,needle", [
    (["train.global_batch_size=63"], "train.global_batch_size=63"),  # checked before the group exists
    (["dataset=cifar10", "dataset.root=/nonexistent/cifar", "model=resnet20"], "/nonexistent/cifar"),  # after
])
def test_every_rank_reports_the_same_error(launch, overrides, needle):
    r = launch(overrides, ranks=2)
    assert r.returncode != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("ddtrain: error:")]
    assert len(errors) == 2 and errors[0] == errors[1] and needle in errors[0], r.stderr
    assert "Traceback" not in r.stderr
