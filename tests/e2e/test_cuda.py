"""On a CUDA GPU: the fast path trains, utilisation is reported, NCCL starts. Run by launch/gpu-check.sh.

Each behaviour here also has a CPU test; these add what only a GPU shows (bf16 tensor cores, pinned
host memory and asynchronous copies, fused optimizers, MFU against the GPU table, NCCL).
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ddtrain.compose import compose
from ddtrain import fit

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (launch/gpu-check.sh)")]


@pytest.fixture(autouse=True)
def _single_process(in_process):
    """run() in this process: one rank, log handlers closed afterwards (conftest.in_process)."""


def train(tmp_path, name, *overrides):
    cfg = compose("train", ["logging.progress=false", "logging.tensorboard=false", "train.log_every=10",
                            "train.throughput_warmup_steps=5", "checkpoint.every_steps=30", "train.max_steps=30",
                            *overrides])
    summary = fit(cfg, run_dir=tmp_path / name)
    model = torch.load(tmp_path / name / "checkpoints" / "step_00000030.pt", weights_only=True, map_location="cpu")
    return summary, model["model"]


RESNET = ["model=resnet20", "dataset=synthetic", "dataset.shape=[3,32,32]", "dataset.num_samples=2048",
          "train.global_batch_size=128"]


def test_bf16_channels_last_on_gpu(tmp_path):
    s, _ = train(tmp_path, "bf16", *RESNET, "train.precision=bf16", "train.channels_last=true")
    assert s["device"].startswith("cuda") and s["backend"] == "none" and s["data_on_device"] is True
    assert math.isfinite(s["final_train_loss"]) and s["samples_per_s"] > 0 and s["peak_memory_bytes"] > 0
    assert s["flops_per_sample"] > 0 and s["achieved_tflops"] > 0
    if s["gpu"]:  # a GPU of the table: MFU is reported and plausible
        assert 0 < s["mfu"] < 1


def test_fp16_grad_scaler_on_gpu(tmp_path):
    s, _ = train(tmp_path, "fp16", *RESNET, "train.precision=fp16")
    assert math.isfinite(s["final_train_loss"])


def test_pinned_host_feed_matches_device_data(tmp_path):
    mlp = ["model=mlp", "dataset=mnist1d", "train.global_batch_size=64", "optimizer=sgd", "schedule=constant"]
    _, on_device = train(tmp_path, "device", *mlp, "dataset.placement=device")
    s, fed = train(tmp_path, "host", *mlp, "dataset.placement=host", "dataset.num_workers=2")
    assert s["data_on_device"] is False
    for name in on_device:
        torch.testing.assert_close(fed[name], on_device[name], rtol=1e-4, atol=1e-5)


def test_fused_optimizer_on_gpu():
    from ddtrain.runtime.optim import build_optimizer

    model = torch.nn.Linear(4, 2).cuda()
    opt = build_optimizer(model, compose("train", []).optimizer, 0.1)
    assert opt.defaults.get("fused") is True


def test_nccl_process_group_starts(tmp_path):
    code = ("import time, torch, torch.distributed as d; t = time.perf_counter();"
            "d.init_process_group('nccl', init_method='tcp://127.0.0.1:29561', rank=0, world_size=1);"
            "x = torch.ones(1 << 20, device='cuda'); d.all_reduce(x); torch.cuda.synchronize();"
            "print(f'{time.perf_counter() - t:.3f}', x[0].item()); d.destroy_process_group()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seconds, value = out.stdout.split()
    assert float(value) == 1.0 and float(seconds) < 60
