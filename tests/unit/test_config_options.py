"""Every option of every config group, composed from the real configs/ as the CLI does, validates and trains.

Options are discovered from the YAML files of each group folder, so a new option is covered (and must
compose, validate and train 2 steps) without touching this file. Training runs in-process through
ddtrain.fit with a tiny dataset; no process group is created (world size 1).
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from helpers.images import write_image_folder

from ddtrain.config import DATASETS, MODELS, OPTIMIZERS, SCHEDULES, config_dir, register_configs
from ddtrain.validation import validate

GROUPS = ("model", "dataset", "optimizer", "schedule")
SUPPORTED = {"model": MODELS, "dataset": DATASETS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}

# What a launcher would have set; their absence makes run() a single process.

# Keep every run tiny: 2 steps, no progress bar, no TensorBoard, no checkpoints.
TINY = ["train.max_steps=2", "train.log_every=1", "train.throughput_warmup_steps=0",
        "logging.progress=false", "logging.tensorboard=false", "checkpoint.every_steps=0"]
MNIST1D_SAMPLES = 500  # 400 train (360 after validation) / 100 test; generated once per session


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def compose_train(overrides: list[str]):
    """Compose configs/train.yaml with overrides exactly as ddtrain.cli.preflight does."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(config_dir()), version_base="1.3", job_name="test-config-options"):
            return compose("train", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def synthetic(shape: str, batch: int = 8) -> list[str]:
    return ["dataset=synthetic", f"dataset.shape={shape}", "dataset.num_samples=64",
            "dataset.num_test_samples=32", f"train.global_batch_size={batch}"]


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("mnist1d-cache"))


@pytest.fixture
def mnist1d(mnist1d_cache) -> list[str]:
    return ["dataset=mnist1d", f"dataset.cache_dir={mnist1d_cache}", f"dataset.num_samples={MNIST1D_SAMPLES}",
            "train.global_batch_size=16"]


@pytest.fixture(autouse=True)
def single_process(in_process):
    """run() in this process: one rank, log handlers closed afterwards (conftest.in_process)."""


def train_2_steps(overrides: list[str], run_dir: Path) -> dict:
    from ddtrain import fit

    cfg = compose_train(TINY + overrides)
    summary = fit(cfg, run_dir=run_dir)
    assert summary["steps"] == 2
    assert summary["trained_steps_this_run"] == 2
    assert summary["final_train_loss"] is not None and math.isfinite(summary["final_train_loss"])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert math.isfinite(summary["test_loss"])
    assert summary["world_size"] == 1 and summary["ranks_identical"]
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["steps"] == 2
    assert written["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    assert (run_dir / "train.log").is_file()
    return summary


# ------------------------------------------------------------------------------ dataset files


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    """A uint8 IDX file: big-endian magic 0x000008<ndim>, then each dimension as big-endian u32."""
    header = (0x800 | arr.ndim).to_bytes(4, "big") + np.asarray(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    with (gzip.open(str(path) + ".gz", "wb") if gz else open(path, "wb")) as f:
        f.write(data)


def make_idx_root(root: Path, n_train: int = 40, n_test: int = 20) -> Path:
    """MNIST-layout files: train gzipped, test plain (both forms are accepted)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, gz in (("train", n_train, True), ("t10k", n_test, False)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8), gz)
    return root


def make_cifar_root(root: Path, per_batch: int = 8, n_test: int = 20) -> Path:
    """CIFAR-10 python batches: pickled {b'data': uint8 (n, 3072), b'labels': [int]}."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    names = [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in names:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    return root


# ------------------------------------------------------------------------------ composition


def test_groups_offer_every_supported_name():
    """Every name the code supports is selectable as a group option, and no option is unsupported."""
    for group in GROUPS:
        assert set(options(group)) == set(SUPPORTED[group]), group


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    cfg = compose_train([f"{group}={option}"])
    assert cfg[group].name == option
    validate(cfg, world_size=1)
    # the rest of the job keeps the defaults of train.yaml
    assert cfg.train.global_batch_size == 128 and cfg.dist.engine == "ddp"


def test_defaults_compose_and_validate():
    cfg = compose_train([])
    validate(cfg, world_size=1)
    assert (cfg.model.name, cfg.dataset.name, cfg.optimizer.name, cfg.schedule.name) == \
        ("cnn1d", "mnist1d", "sgd", "cosine")


# ------------------------------------------------------------------------------ training 2 steps

# model option -> how to train it cheaply (a dataset it fits); others fall back to synthetic 3x64x64
MODEL_SETUPS = {
    "mlp": "mnist1d",
    "cnn1d": "mnist1d",
    "lenet5": synthetic("[1,28,28]"),
    "resnet20": synthetic("[3,32,32]"),
    "resnet18": synthetic("[3,32,32]"),
    "resnet50": synthetic("[3,32,32]"),
    "alexnet": synthetic("[3,64,64]"),
}
SLOW_MODELS = {"resnet50", "alexnet"}


def model_params():
    for name in options("model"):
        marks = [pytest.mark.slow] if name in SLOW_MODELS or name not in MODEL_SETUPS else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("model", model_params())
def test_every_model_trains_2_steps(model, tmp_path, mnist1d):
    setup = MODEL_SETUPS.get(model, synthetic("[3,64,64]"))
    overrides = mnist1d if setup == "mnist1d" else setup
    summary = train_2_steps([f"model={model}", *overrides], tmp_path)
    assert summary["model"] == model


@pytest.mark.parametrize("dataset", options("dataset"))
def test_every_dataset_trains_2_steps(dataset, tmp_path, mnist1d, mnist1d_cache):
    if dataset == "mnist1d":
        overrides = ["model=cnn1d", *mnist1d]
    elif dataset == "synthetic":  # its own default shape [3, 32, 32]
        overrides = ["model=lenet5", "dataset=synthetic", "dataset.num_samples=64",
                     "dataset.num_test_samples=32", "train.global_batch_size=8"]
    elif dataset == "cifar10":
        root = make_cifar_root(tmp_path / "data" / "cifar-10-batches-py")  # a usual subfolder of root
        overrides = ["model=lenet5", "dataset=cifar10", f"dataset.root={root.parent}", "train.global_batch_size=8"]
    elif dataset in ("mnist", "fashion_mnist"):
        root = make_idx_root(tmp_path / "data")
        overrides = ["model=lenet5", f"dataset={dataset}", f"dataset.root={root}", "train.global_batch_size=8"]
    elif dataset == "image_folder":  # its own ImageNet normalisation: RGB images
        root = write_image_folder(tmp_path / "images", {"train": 6, "val": 2}, classes=2, channels=3)
        overrides = ["model=lenet5", "dataset=image_folder", f"dataset.root={root}", "train.global_batch_size=8",
                     "dataset.num_workers=1"]
    else:
        pytest.fail(f"new dataset option {dataset}: add a tiny setup for it here")
    summary = train_2_steps(overrides, tmp_path / "run")
    assert summary["dataset"] == dataset
    if dataset == "mnist1d":
        assert list(Path(mnist1d_cache, "mnist1d").glob(f"mnist1d_n{MNIST1D_SAMPLES}_*.npz"))


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_every_optimizer_trains_2_steps(optimizer, tmp_path, mnist1d):
    summary = train_2_steps([f"optimizer={optimizer}", "model=cnn1d", *mnist1d], tmp_path)
    assert summary["lr"] > 0


@pytest.mark.parametrize("warmup_epochs", [0, 0.1])
@pytest.mark.parametrize("schedule", options("schedule"))
def test_every_schedule_trains_2_steps(schedule, warmup_epochs, tmp_path, mnist1d):
    summary = train_2_steps([f"schedule={schedule}", f"schedule.warmup_epochs={warmup_epochs}",
                             "model=mlp", *mnist1d], tmp_path)
    # 360 training samples / 16 = 22.5 steps per epoch; warmup 0.1 epochs = 2 steps
    lrs = [r["lr"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
           if "lr" in r]
    # the LR logged after step k is the one step k+1 uses (cosine reaches min_lr_factor=0 at the end)
    assert len(lrs) == 2 and lrs[0] > 0 and lrs[1] >= 0
    if warmup_epochs:
        assert lrs[0] < summary["lr"]  # still warming up after the first step


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_every_precision_trains_2_steps(precision, tmp_path, mnist1d):
    summary = train_2_steps([f"train.precision={precision}", "model=cnn1d", *mnist1d], tmp_path)
    assert summary["precision"] == precision


def test_gradient_accumulation_trains(tmp_path):
    summary = train_2_steps(["model=mlp", "train.grad_accum_steps=2", *synthetic("[40]", batch=16)], tmp_path)
    assert summary["grad_accum_steps"] == 2
    assert summary["per_rank_batch_size"] == 8
    assert summary["global_batch_size"] == 16
