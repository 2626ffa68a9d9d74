"""Data read from disk by DataLoader workers, in the same world-size-invariant order as the in-memory path.

Each rank's DataLoader gets, from a batch sampler, the sample indices of its slice of each global
batch from the resume step on (ddtrain.data.sharding.RankBatches: the sample stream cut into global
batches). A worker reads a whole micro-batch at a time (Dataset.__getitems__): decodes, transforms
with random choices seeded by (train.seed, epoch, index), stacks; pixels travel as uint8 (pinned for
CUDA) and become normalised floats on the device. So the union of the ranks' batches at step k is
the one-process batch of step k, nothing is dropped or repeated within an epoch, and a run resumed
at step k reads from step k on (no re-reading of the epoch from its start).

A sample that fails in a worker comes back as a Failure instead of a batch (no worker traceback)
and is raised in the training process as one line.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

from ddtrain.data.augment import Transform, apply_pil, apply_tensor, sample_generator, to_model_input
from ddtrain.data.image_folder import ImageFiles
from ddtrain.data.sharding import RankBatches, eval_shard
from ddtrain.errors import UserError

log = logging.getLogger("ddtrain")


class Failure:
    """What a worker returns instead of a batch when a sample fails: the one line and the worker's traceback."""

    def __init__(self, message: str, detail: str = ""):
        self.message, self.detail = message, detail

    def throw(self):
        """Raise the one-line UserError (the worker's traceback chained, shown with DDTRAIN_TRACEBACK=1)."""
        raise UserError(self.message) from (RuntimeError(self.detail) if self.detail else None)


class SplitReader(Dataset):
    """One split for DataLoader workers: __getitems__((first stream position, indices)) -> (inputs, targets).

    source: ImageFiles (dataset=image_folder) or a map-style Dataset of (input, target) pairs. The
    stream position gives each sample's epoch (position // len), and so its augmentation seed.
    """

    def __init__(self, source, transform: Transform, seed: int, name: str, split: str, seed_user_rng: bool,
                 to_floats=None):
        self.source, self.transform, self.seed = source, transform, seed
        self.name, self.split = name, split
        self.seed_user_rng = seed_user_rng  # train split of a user Dataset: its own random transforms too
        # training on the CPU: the worker makes the normalised floats ((mean, std) or () for none), not the trainer
        self.to_floats = to_floats

    def __len__(self) -> int:
        return len(self.source)

    def __getitems__(self, request) -> tuple | Failure:
        position, indices = request
        i = None
        try:
            xs, ys = [], []
            for k, i in enumerate(indices):
                epoch = (position + k) // len(self.source) if position is not None else 0
                x, y = self.read(i, epoch)
                if xs and x.shape != xs[0].shape:
                    raise UserError(self._size_message(indices[0], i, xs[0].shape, x.shape))
                xs.append(x)
                ys.append(y)
            if isinstance(self.source, ImageFiles):  # (H, W, C) pixels: one copy into the batch, no per-sample tensors
                batch = _uint8_batch((len(xs), *xs[0].shape))
                np.stack(xs, out=batch.numpy())
                x, y = batch.permute(0, 3, 1, 2), torch.from_numpy(self.source.labels[indices])
            else:
                x, y = default_collate(xs), default_collate(ys)  # in a worker: straight into shared memory
            if self.to_floats is not None:
                x = to_model_input(x, self.to_floats or None, torch.device("cpu"))
            return x, y
        except UserError as exc:
            return Failure(str(exc), traceback.format_exc())
        except Exception as exc:  # the user's Dataset: one line naming the sample, the traceback chained
            text = str(exc).strip().split("\n")[0]
            return Failure(f"{self.name}: {self.split} sample {i} raised {type(exc).__name__}: {text}",
                           traceback.format_exc())

    def read(self, i: int, epoch: int) -> tuple:
        """Sample i as seen in `epoch`: a (C, ...) input tensor and its target; image files: (H, W, C) uint8 pixels."""
        g = sample_generator(self.seed, epoch, i) if self.transform.random or self.seed_user_rng else None
        if isinstance(self.source, ImageFiles):
            return self.source.read(i, self.transform, g), None
        if self.seed_user_rng:
            # the user's own random transforms (torchvision's draw from torch's global generator)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(g.initial_seed())
                sample = self.source[i]
        else:
            sample = self.source[i]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise UserError(f"{self.name}: {self.split}[{i}] is a {type(sample).__name__}; a dataset's "
                            "samples must be (input, target) pairs")
        x, y = sample
        return self._transformed(x, g), y

    def _transformed(self, x, g) -> torch.Tensor:
        if hasattr(x, "getbbox") and hasattr(x, "mode"):  # a Pillow image
            steps = self.transform.plan(x.size[0], x.size[1], g)
            img = apply_pil(x if x.mode in ("L", "RGB") else x.convert("RGB"), steps)
            pixels = np.array(img)
            return torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None]).permute(2, 0, 1)
        x = torch.as_tensor(x)
        if self.transform.ops:
            if x.dim() != 3:
                raise UserError(f"{self.name}: dataset.augment/eval_transform need (C, H, W) image samples; "
                                f"{self.split} samples are shaped {tuple(x.shape)}")
            x = apply_tensor(x, self.transform.plan(x.shape[2], x.shape[1], g))
        return x

    def _size_message(self, first: int, i: int, want, got) -> str:
        where = (f"{self.source.path(i)} gives {tuple(got)} but {self.source.path(first)} gives {tuple(want)}"
                 if isinstance(self.source, ImageFiles) else f"{self.split}[{i}] is {tuple(got)} but "
                 f"{self.split}[{first}] is {tuple(want)}")
        return (f"{self.name}: samples of one batch differ in shape ({where}); make them one size, e.g. "
                "dataset.augment=[random_resized_crop] dataset.eval_transform=[resize,center_crop] dataset.crop_size=N")


def _uint8_batch(shape: tuple) -> torch.Tensor:
    """An empty uint8 tensor; in a DataLoader worker in shared memory, so it reaches the trainer without a copy."""
    n = int(np.prod(shape))
    if get_worker_info() is not None:
        with contextlib.suppress(AttributeError):  # a private API (default_collate uses it too); else one copy
            return torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(n)).view(shape)
    return torch.empty(shape, dtype=torch.uint8)


class StepSampler(Sampler):
    """The batch sampler of one rank: (first stream position, indices) of each micro-batch from start_step on."""

    def __init__(self, batches: RankBatches, start_step: int, total_steps: int):
        self.batches, self.start_step, self.total_steps = batches, start_step, total_steps

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            for micro in range(self.batches.grad_accum_steps):
                yield self.batches.request(step, micro)

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.batches.grad_accum_steps


def _as_batch(batch):
    """The DataLoader's collate_fn: workers return whole batches already (or a Failure)."""
    return batch


def _loader_options(cfg, device: torch.device) -> dict:
    workers = int(cfg.num_workers)
    return {"num_workers": workers, "pin_memory": device.type == "cuda", "collate_fn": _as_batch,
            "prefetch_factor": int(cfg.prefetch_factor) if workers else None,
            # a private generator: the workers' base seed must not draw from the global RNG (dropout's),
            # or a resumed run would drop different units than the uninterrupted one
            "generator": torch.Generator().manual_seed(0)}


class LoaderBatches(RankBatches):
    """This rank's training micro-batches read by DataLoader workers (same interface as ShardedBatches)."""

    def __init__(self, reader: SplitReader, *, seed: int, plan, rank: int, options: dict, norm, device):
        super().__init__(len(reader), seed=seed, plan=plan, rank=rank)
        self.reader, self.options, self.norm, self.device = reader, options, norm, device

    def request(self, step: int, micro_step: int = 0) -> tuple[int, list[int]]:
        """What the sampler sends a worker for (step, micro_step): the first stream position and the indices."""
        return self.position(step, micro_step), self.indices(step, micro_step).tolist()

    def get(self, step: int, micro_step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """One micro-batch read in this process, on the device (the sweep's memory probe)."""
        return self._placed(self.reader.__getitems__(self.request(step, micro_step)))

    def feed(self, start_step: int, total_steps: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's micro-batches from start_step to total_steps, on the device."""
        loader = DataLoader(self.reader, batch_sampler=StepSampler(self, start_step, total_steps), **self.options)
        for batch in loader:
            yield self._placed(batch)

    def _placed(self, batch):
        if isinstance(batch, Failure):
            batch.throw()
        x, y = batch
        return to_model_input(x, self.norm, self.device), y.to(self.device, non_blocking=True)


class DiskData:
    """Splits read by DataLoader workers: from an image folder or the user's Datasets.

    Same interface as the in-memory data (ddtrain.data.feed.InMemoryData): sizes, input_shape,
    num_classes, example(), train_batches(), feed(), eval_batches().
    """

    on_device = False

    def __init__(self, name: str, sources: dict, input_shape, num_classes: int, cfg, device: torch.device,
                 augment: Transform, evaluate: Transform, norm, user: bool):
        self.name, self.sources, self.cfg, self.device = name, sources, cfg, device
        self.input_shape, self.num_classes = tuple(input_shape), int(num_classes)
        self.augment, self.evaluate, self.user = augment, evaluate, user
        self.label = f"dataset._target_={name}" if user else f"dataset={name}"  # how messages name the dataset
        # on the CPU the workers normalise (in parallel, one thread each); on a GPU the device does, per batch
        self.in_workers = device.type == "cpu"
        self.cpu_norm = norm
        self.norm = None if norm is None or self.in_workers else tuple(t.to(device) for t in norm)
        self.options = _loader_options(cfg, device)
        self._eval_loaders: dict = {}

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples in each split."""
        return {split: len(source) for split, source in self.sources.items()}

    def summary(self) -> str:
        """One line describing the splits, for the log."""
        s = self.sizes
        return (f"dataset {self.name} (read from disk by {self.options['num_workers']} worker(s) per rank): "
                f"train {s['train']}, val {s['val']}, test {s['test']}, input {self.input_shape}, "
                f"{self.num_classes} classes")

    def reader(self, split: str, seed: int = 0, raw: bool = False) -> SplitReader:
        """The split as DataLoader workers read it (train: augmented; val/test: the evaluation transform).

        raw: samples as decoded and transformed, never normalised by the worker.
        """
        train = split == "train"
        to_floats = (self.cpu_norm or ()) if self.in_workers and not raw else None
        return SplitReader(self.sources[split], self.augment if train else self.evaluate, seed, self.label, split,
                           seed_user_rng=train and self.user, to_floats=to_floats)

    def example(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n training samples (inputs, targets) on the device, as the model gets them (read here)."""
        batch = self.reader("train").__getitems__((None, list(range(min(n, self.sizes["train"])))))
        if isinstance(batch, Failure):
            batch.throw()
        x, y = batch
        return to_model_input(x, self.norm, self.device), y.to(self.device)

    def train_batches(self, seed: int, plan, rank: int) -> LoaderBatches:
        """This rank's training micro-batches for train.seed and the batch plan."""
        return LoaderBatches(self.reader("train", seed), seed=seed, plan=plan, rank=rank, options=self.options,
                             norm=self.norm, device=self.device)

    def feed(self, batches: LoaderBatches, start_step: int, total_steps: int):
        """Micro-batches from start_step to total_steps, on the device."""
        return batches.feed(start_step, total_steps)

    def eval_batches(self, split: str, rank: int, world_size: int, batch_size: int):
        """This rank's share of a split (each sample once across ranks), in batches on the device.

        The loader is kept with persistent workers: validation runs many times.
        """
        key = (split, rank, world_size, batch_size)
        if key not in self._eval_loaders:
            shard = eval_shard(len(self.sources[split]), rank, world_size)
            chunks = [(None, list(range(s, min(s + batch_size, shard.stop)))) for s in range(shard.start, shard.stop,
                                                                                         batch_size)]
            self._eval_loaders[key] = DataLoader(self.reader(split), batch_sampler=chunks,
                                                 persistent_workers=self.options["num_workers"] > 0, **self.options)
        for batch in self._eval_loaders[key]:
            if isinstance(batch, Failure):
                batch.throw()
            x, y = batch
            yield to_model_input(x, self.norm, self.device), y.to(self.device, non_blocking=True)
