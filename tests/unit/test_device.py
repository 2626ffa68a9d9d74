"""Which device a rank uses: cuda:<local rank>, device 0 when a rank sees one GPU, CPU without CUDA."""

from __future__ import annotations

import pytest
import torch

from ddtrain.distributed.engines.ddp import pick_backend
from ddtrain.distributed.rendezvous import pick_device
from ddtrain.distributed.env import detect
from ddtrain.errors import UserError


def env(local_rank: int, local_size: int = 4):
    return detect({"RANK": str(local_rank), "WORLD_SIZE": "4", "LOCAL_RANK": str(local_rank),
                   "LOCAL_WORLD_SIZE": str(local_size), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})


@pytest.mark.parametrize("visible,local_rank,expected", [
    (4, 0, "cuda:0"), (4, 3, "cuda:3"),  # one node, all GPUs visible to every rank
    (1, 3, "cuda:0"),  # CUDA_VISIBLE_DEVICES or SLURM's per-task binding: each rank sees only its own GPU
])
def test_rank_device(monkeypatch, visible, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    assert str(pick_device(env(local_rank))) == expected


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match="local rank 3 has no GPU"):
        pick_device(env(3))


def test_cpu_and_backends(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = pick_device(env(1))
    assert cpu.type == "cpu" and pick_backend("auto", cpu) == "gloo"
    assert pick_backend("auto", torch.device("cuda", 0)) == "nccl"
    with pytest.raises(UserError, match="dist.backend=nccl"):
        pick_backend("nccl", cpu)
