"""The fast-path options on CPU: bf16 autocast, channels_last, torch.compile, DataLoader-fed data."""

from __future__ import annotations

import math

import pytest
import torch

from ddtrain.compose import compose
from ddtrain.batching import BatchPlan
from ddtrain.data.feed import micro_batches
from ddtrain.data.sharding import ShardedBatches
from ddtrain import fit


@pytest.fixture(autouse=True)
def _single_process(in_process):
    """run() in this process: one rank, log handlers closed afterwards (conftest.in_process)."""


def train(tmp_path, name, *overrides):
    cfg = compose("train", ["logging.progress=false", "logging.tensorboard=false", "train.log_every=10",
                            "train.throughput_warmup_steps=2", "checkpoint.every_steps=40", *overrides])
    summary = fit(cfg, run_dir=tmp_path / name)
    state = torch.load(tmp_path / name / "checkpoints" / "step_00000040.pt", weights_only=True)
    return summary, state["model"]


SMALL_IMAGES = ["model=lenet5", "dataset=synthetic", "dataset.shape=[1,28,28]", "dataset.num_samples=512",
                "dataset.num_test_samples=128", "train.global_batch_size=32", "train.max_steps=40",
                "optimizer=sgd", "schedule=constant", "train.lr=0.02", "train.lr_scaling=none"]


def test_bf16_autocast_trains_like_fp32(tmp_path):
    fp32, _ = train(tmp_path, "fp32", *SMALL_IMAGES)
    bf16, _ = train(tmp_path, "bf16", *SMALL_IMAGES, "train.precision=bf16")
    assert bf16["precision"] == "bf16" and math.isfinite(bf16["final_train_loss"])
    assert bf16["final_train_loss"] == pytest.approx(fp32["final_train_loss"], rel=0.05)
    assert abs(bf16["test_accuracy"] - fp32["test_accuracy"]) <= 0.05


def test_channels_last_gives_the_same_model(tmp_path):
    _, eager = train(tmp_path, "nchw", *SMALL_IMAGES)
    summary, cl = train(tmp_path, "nhwc", *SMALL_IMAGES, "train.channels_last=true")
    assert summary["channels_last"] is True
    for name in eager:
        torch.testing.assert_close(cl[name], eager[name], rtol=1e-3, atol=1e-5, msg=name)


@pytest.mark.slow
def test_compile_gives_the_same_model(tmp_path):
    _, eager = train(tmp_path, "eager", *SMALL_IMAGES)
    summary, compiled = train(tmp_path, "compiled", *SMALL_IMAGES, "train.compile=true")
    assert summary["compile"] is True
    for name in eager:
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-3, atol=1e-5, msg=name)


def test_dataloader_feed_serves_the_same_batches():
    x, y = torch.arange(103.0).unsqueeze(1), torch.arange(103)
    batches = ShardedBatches(x, y, seed=3, plan=BatchPlan(24, 2, 2), rank=1)
    device = torch.device("cpu")
    direct = list(micro_batches(batches, 4, 20, device))
    loaded = list(micro_batches(batches, 4, 20, device, use_loader=True, num_workers=2))
    assert len(direct) == len(loaded) == 16 * 2
    for (xa, ya), (xb, yb) in zip(direct, loaded):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_host_placement_trains_the_same_model(tmp_path):
    _, on_device = train(tmp_path, "device", *SMALL_IMAGES)
    summary, fed = train(tmp_path, "host", *SMALL_IMAGES, "dataset.placement=host", "dataset.num_workers=1")
    assert summary["data_on_device"] is False
    for name in on_device:
        assert torch.equal(fed[name], on_device[name]), name
