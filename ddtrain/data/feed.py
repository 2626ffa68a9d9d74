"""Where the data lives during training and how micro-batches reach the device.

A dataset that fits stays on the GPU and batches are gathered there (no copies, no workers).
One that does not stays in pinned host memory; DataLoader workers gather the batches ahead of
time and each is copied to the GPU without blocking the host. Datasets larger than memory
(dataset=image_folder, dataset._target_) are read from disk by DataLoader workers
(ddtrain.data.loader); load_data returns either kind behind one interface.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ddtrain.config import DISK_DATASETS
from ddtrain.data.sharding import ShardedBatches, eval_shard

log = logging.getLogger("ddtrain")

DEVICE_SHARE = 0.25  # auto placement: the dataset may take this share of the free GPU memory


def _nbytes(splits) -> int:
    return sum(t.numel() * t.element_size() for t in (splits.train_x, splits.train_y, splits.val_x,
                                                      splits.val_y, splits.test_x, splits.test_y))


def synthetic_bytes(cfg) -> int:
    """Memory a synthetic dataset will take (float32 samples, int64 labels), known before generating it."""
    n = cfg.num_samples + cfg.num_test_samples
    return n * (4 * math.prod(cfg.shape) + 8)


def keep_on_device(placement: str, device: torch.device, nbytes: int) -> bool:
    """Whether the dataset should live on the training device."""
    if placement in ("device", "host"):
        return placement == "device"
    if device.type != "cuda":
        return True  # on CPU the "device" is host memory already
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_SHARE * free


def load_placed(cfg, device: torch.device):
    """Load the dataset where it will be trained from: (splits, True) on the device, (splits, False) on the host."""
    from ddtrain.data import load_splits

    if cfg.placement == "device" or (cfg.placement == "auto" and device.type != "cuda"):
        return load_splits(cfg, device), True
    if cfg.name == "synthetic" and cfg.placement == "auto":  # its size is known before generating it
        if keep_on_device("auto", device, synthetic_bytes(cfg)):
            return load_splits(cfg, device), True
    splits = load_splits(cfg, torch.device("cpu"))
    on_device = keep_on_device(cfg.placement, device, _nbytes(splits))
    return place(splits, device, on_device), on_device


def place(splits, device: torch.device, on_device: bool):
    """The splits moved to the device, or kept on the host in pinned memory for asynchronous copies."""
    fields = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
    if on_device:
        moved = {f: getattr(splits, f).to(device) for f in fields}
    elif device.type == "cuda":
        moved = {f: getattr(splits, f).cpu().pin_memory() for f in fields}
    else:
        return splits
    log.info("dataset kept %s (%.1f MiB)", "on the device" if on_device else "in pinned host memory",
             _nbytes(splits) / 2**20)
    return dataclasses.replace(splits, **moved)


class _MicroBatchDataset(Dataset):
    """Item i is micro-batch i of this rank (step i // accum, micro-step i % accum), gathered on the host."""

    def __init__(self, batches: ShardedBatches):
        self.batches = batches

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int):
        step, micro = divmod(i, self.batches.grad_accum_steps)
        return self.batches.get(step, micro)


def micro_batches(batches: ShardedBatches, start_step: int, total_steps: int, device: torch.device,
                  use_loader: bool = False, num_workers: int = 2,
                  prefetch_factor: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches from start_step to total_steps, in order, on `device`.

    Without a loader they are gathered where the data lives; with one, DataLoader workers gather
    them on the host ahead of time (pinned for CUDA) and each is copied without blocking.
    """
    accum = batches.grad_accum_steps
    if not use_loader:
        for step in range(start_step, total_steps):
            for micro in range(accum):
                yield batches.get(step, micro)
        return
    loader = DataLoader(_MicroBatchDataset(batches), batch_size=None,
                        sampler=range(start_step * accum, total_steps * accum), num_workers=num_workers,
                        pin_memory=device.type == "cuda",
                        prefetch_factor=prefetch_factor if num_workers > 0 else None,
                        generator=torch.Generator())  # not the global RNG: a resume must not shift dropout
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class InMemoryData:
    """A built-in dataset held in memory (Splits) and where it lives; the interface run() and the evaluator use.

    ddtrain.data.loader.DiskData has the same: name, input_shape, num_classes, sizes, on_device,
    summary(), example(), train_batches(), feed(), eval_batches().
    """

    def __init__(self, splits, on_device: bool, cfg, device: torch.device):
        self.splits, self.on_device, self.cfg, self.device = splits, on_device, cfg, device
        self.name, self.input_shape, self.num_classes = splits.name, tuple(splits.input_shape), splits.num_classes

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples in each split."""
        return self.splits.sizes

    def summary(self) -> str:
        """One line describing the splits, for the log."""
        return self.splits.summary()

    def example(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n training samples (inputs, targets) on the device, as the model gets them."""
        return self.splits.train_x[:n].to(self.device), self.splits.train_y[:n].to(self.device)

    def train_batches(self, seed: int, plan, rank: int) -> ShardedBatches:
        """This rank's training micro-batches for train.seed and the batch plan."""
        return ShardedBatches(self.splits.train_x, self.splits.train_y, seed=seed, plan=plan, rank=rank)

    def feed(self, batches: ShardedBatches, start_step: int, total_steps: int):
        """Micro-batches from start_step to total_steps, on the device (gathered there, or by workers on the host)."""
        return micro_batches(batches, start_step, total_steps, self.device, use_loader=not self.on_device,
                             num_workers=self.cfg.num_workers, prefetch_factor=self.cfg.prefetch_factor)

    def eval_batches(self, split: str, rank: int, world_size: int, batch_size: int):
        """This rank's contiguous share of a split (each sample once across ranks), in slices where the data lives."""
        x, y = getattr(self.splits, f"{split}_x"), getattr(self.splits, f"{split}_y")
        shard = eval_shard(len(x), rank, world_size)
        for start in range(shard.start, shard.stop, batch_size):
            end = min(start + batch_size, shard.stop)
            yield x[start:end], y[start:end]


def load_data(cfg, device: torch.device):
    """The dataset of cfg (the dataset section): InMemoryData for the built-in sets, DiskData for data read from disk."""
    if cfg.get("_target_") is not None or cfg.name in DISK_DATASETS:
        from ddtrain.data.disk import load_disk

        return load_disk(cfg, device)
    splits, on_device = load_placed(cfg, device)
    return InMemoryData(splits, on_device, cfg, device)
