"""Load a whole dataset into memory on one device and split off a fixed validation set.

Every rank calls load_splits with the same config and gets identical tensors (all randomness is
seeded by dataset.split_seed), so sharding can index them without any communication.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from importlib import metadata

import numpy as np
import torch

from ddtrain.config import DATASETS
from ddtrain.data import files
from ddtrain.errors import UserError
from ddtrain.fileio import atomic_open

log = logging.getLogger(__name__)

# Per-channel mean and std of the training pixels scaled to [0, 1] (the values used across the literature).
NORMALISATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
# Synthetic labels depend on at most this many input features, so the label projection stays small
# (and fast) even for 3x224x224 inputs while remaining exactly learnable by a linear layer.
SYNTHETIC_PROJECTED_FEATURES = 1024


@dataclass
class Splits:
    """Train, validation and test tensors of one dataset, on one device."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int
    name: str

    @property
    def sizes(self) -> dict[str, int]:
        """Number of samples in each split."""
        return {"train": len(self.train_y), "val": len(self.val_y), "test": len(self.test_y)}

    def summary(self) -> str:
        """One line describing the splits, for the log."""
        s = self.sizes
        return (f"dataset {self.name}: train {s['train']}, val {s['val']}, test {s['test']}, "
                f"input {tuple(self.input_shape)}, {self.num_classes} classes")


def load_splits(cfg, device) -> Splits:
    """Load dataset cfg.name (DatasetConfig or DictConfig) onto device and carve out the validation split."""
    device = torch.device(device)
    name = str(cfg.name)
    if name not in DATASETS:
        raise UserError(f"dataset={name} is not supported; choose one of: {', '.join(DATASETS)}")
    frac = float(cfg.val_fraction)
    if not 0.0 <= frac < 1.0:
        raise UserError(f"dataset.val_fraction={frac} must be in [0, 1)")
    if name == "synthetic":
        train_x, train_y, test_x, test_y, shape, classes = _synthetic(cfg, device)
    elif name == "mnist1d":
        train_x, train_y, test_x, test_y, shape, classes = _mnist1d(cfg, device)
    else:
        train_x, train_y, test_x, test_y, shape, classes = _from_files(name, cfg, device)
    train_x, train_y, val_x, val_y = split_validation(train_x, train_y, frac, int(cfg.split_seed))
    return Splits(train_x, train_y, val_x, val_y, test_x, test_y, shape, classes, name)


def validation_indices(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, validation) indices holding out round(fraction * n) samples, chosen by a permutation seeded with seed."""
    n_val = round(fraction * n)
    if n_val >= n:
        raise UserError(f"dataset.val_fraction={fraction} leaves no training samples out of {n}; lower it")
    if n_val == 0:
        return torch.arange(n), torch.arange(0)
    # The permutation is drawn on the CPU whatever the device, so CPU and GPU runs split identically.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def split_validation(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int):
    """Hold out round(fraction * len(x)) samples chosen by a permutation seeded with seed: (train_x, train_y, val_x, val_y)."""
    train_idx, val_idx = validation_indices(len(x), fraction, seed)
    if len(val_idx) == 0:
        return x, y, x[:0], y[:0]
    train_idx, val_idx = train_idx.to(x.device), val_idx.to(x.device)
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def _positive_int(key: str, value) -> int:
    if int(value) != value or int(value) <= 0:
        raise UserError(f"dataset.{key}={value} must be a positive integer")
    return int(value)


def _synthetic(cfg, device: torch.device):
    shape = tuple(_positive_int("shape", s) for s in cfg.shape)
    if not shape:
        raise UserError("dataset.shape=[] must name at least one dimension, e.g. [784] or [3, 32, 32]")
    classes = _positive_int("num_classes", cfg.num_classes)
    if classes < 2:
        raise UserError(f"dataset.num_classes={classes} must be at least 2")
    n_train = _positive_int("num_samples", cfg.num_samples)
    n_test = _positive_int("num_test_samples", cfg.num_test_samples)
    # On CUDA a device generator avoids creating (and copying) the whole tensor on the host.
    gen = torch.Generator(device=device).manual_seed(int(cfg.split_seed))
    features = int(np.prod(shape))
    k = min(features, SYNTHETIC_PROJECTED_FEATURES)
    # A fixed random subset of features (not a dense features x classes matrix, which would be huge for images).
    idx = torch.randperm(features, generator=gen, device=device)[:k]
    weight = torch.randn(k, classes, generator=gen, device=device)

    def draw(n: int):
        x = torch.randn((n, *shape), generator=gen, device=device)
        y = (x.reshape(n, -1)[:, idx] @ weight).argmax(dim=1)
        return x, y.to(torch.int64)

    train_x, train_y = draw(n_train)
    test_x, test_y = draw(n_test)
    return train_x, train_y, test_x, test_y, shape, classes


def _mnist1d(cfg, device: torch.device):
    from mnist1d.data import get_dataset_args  # imported here: only mnist1d runs need the package

    n = _positive_int("num_samples", cfg.num_samples)
    if n < 10:
        raise UserError(f"dataset.num_samples={n} is too small for mnist1d (it makes num_samples // 10 per class); use at least 10")
    args = get_dataset_args()
    args.num_samples = n
    folder = os.path.join(os.path.expanduser(str(cfg.cache_dir)), "mnist1d")
    path = os.path.join(folder, _mnist1d_cache_name(args))
    arrays = _read_cache(path, args)
    if arrays is None:
        arrays = _generate_mnist1d(args)
        _write_cache(path, folder, arrays)
    train_x, train_y, test_x, test_y = (torch.from_numpy(a).to(device) for a in arrays)
    return train_x, train_y, test_x, test_y, (train_x.shape[1],), 10


def _mnist1d_cache_name(args) -> str:
    """File name: num_samples and seed in clear, plus a hash of every generator arg and the package version."""
    settings = {k: v for k, v in vars(args).items() if k != "url"}
    try:
        settings["mnist1d_version"] = metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        settings["mnist1d_version"] = "unknown"
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"mnist1d_n{args.num_samples}_seed{args.seed}_{digest}.npz"


def _expected_sizes(args) -> tuple[int, int]:
    total = args.num_samples // 10 * 10  # make_dataset draws num_samples // 10 samples of each digit
    n_train = int(total * args.train_split)
    return n_train, total - n_train


def _read_cache(path: str, args):
    """The cached arrays, or None when the file is absent or unusable (then it is regenerated)."""
    if not os.path.isfile(path):
        return None
    n_train, n_test = _expected_sizes(args)
    length = args.final_seq_length
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = tuple(z[k] for k in ("x", "y", "x_test", "y_test"))
        ok = (arrays[0].shape == (n_train, length) and arrays[1].shape == (n_train,)
              and arrays[2].shape == (n_test, length) and arrays[3].shape == (n_test,)
              and arrays[0].dtype == np.float32 and arrays[2].dtype == np.float32
              and arrays[1].dtype == np.int64 and arrays[3].dtype == np.int64)
    except Exception as e:  # a damaged zip can fail in many ways; all mean "regenerate"
        log.warning("mnist1d cache %s is unreadable (%s: %s); regenerating it", path, type(e).__name__, e)
        return None
    if not ok:
        log.warning("mnist1d cache %s has unexpected shapes or dtypes; regenerating it", path)
        return None
    return arrays


def _generate_mnist1d(args):
    """Run mnist1d's make_dataset offline without disturbing the global random state it reseeds."""
    from mnist1d import data as mnist1d_data

    # make_dataset calls random.seed and np.random.seed; restore both so train.seed stays in control.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        d = mnist1d_data.make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return (np.ascontiguousarray(d["x"], dtype=np.float32), np.asarray(d["y"], dtype=np.int64),
            np.ascontiguousarray(d["x_test"], dtype=np.float32), np.asarray(d["y_test"], dtype=np.int64))


def _write_cache(path: str, folder: str, arrays) -> None:
    """Write atomically (temp file + os.replace) so concurrent ranks never expose a half-written file."""
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, x=arrays[0], y=arrays[1], x_test=arrays[2], y_test=arrays[3])
    except OSError as e:
        # The data is already in memory; a read-only cache only costs regeneration next time.
        log.warning("could not cache mnist1d in %s (%s); set dataset.cache_dir to a writable folder", folder, e)


def _from_files(name: str, cfg, device: torch.device):
    root = os.path.abspath(os.path.expanduser(str(cfg.root)))
    if name == "cifar10":
        train_x, train_y, test_x, test_y = files.load_cifar10(root)
        shape = (3, 32, 32)
    else:
        train_x, train_y, test_x, test_y = files.load_idx(name, root)
        shape = (1, 28, 28)
    mean, std = NORMALISATION[name]
    return (_normalise(train_x, shape, mean, std, device), torch.from_numpy(train_y).to(device),
            _normalise(test_x, shape, mean, std, device), torch.from_numpy(test_y).to(device), shape, 10)


def _normalise(pixels: np.ndarray, shape, mean, std, device: torch.device) -> torch.Tensor:
    """uint8 pixels -> float32 (x/255 - mean)/std per channel; uint8 is moved first (4x less to copy)."""
    x = torch.from_numpy(pixels).to(device).reshape(len(pixels), *shape).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)
