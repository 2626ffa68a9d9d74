"""Open the data that DataLoader workers read: dataset=image_folder, or the user's own Datasets (dataset._target_).

A `_target_` is any callable (a function or a class) that returns the splits as torch map-style
Datasets whose samples are (input, target) pairs, either

    a tuple (train, test) or a dict {"train": ..., "test": ...}: validation is carved out of train
        by dataset.val_fraction and dataset.split_seed, exactly as for the built-in datasets; or
    a tuple (train, val, test) or a dict {"train": ..., "val": ..., "test": ...}.

Its arguments are the keys added beside `_target_` (`dataset.size=big` on the command line, or in the
user's own configs/dataset/<name>.yaml), plus
dataset.root when the callable has a parameter called root; ddtrain's own dataset keys are not
passed. The input shape is the first training sample's (after dataset.augment); the number of
classes is the train Dataset's `num_classes` attribute, else len(its `classes`), else dataset.num_classes.
"""

from __future__ import annotations

import logging

import torch
from omegaconf import OmegaConf
from torch.utils.data import Dataset, IterableDataset, Subset

from ddtrain import targets
from ddtrain.data import augment
from ddtrain.data.datasets import validation_indices
from ddtrain.data.image_folder import scan
from ddtrain.data.loader import DiskData, Failure
from ddtrain.errors import UserError

log = logging.getLogger("ddtrain")


def load_disk(cfg, device: torch.device) -> DiskData:
    """The splits of dataset=image_folder or dataset._target_, checked and ready for DataLoader workers."""
    train_tf, eval_tf = augment.from_config(cfg, "augment"), augment.from_config(cfg, "eval_transform")
    norm = augment.normaliser(cfg)
    if cfg.get("_target_"):
        name = str(cfg._target_)
        sources = user_splits(cfg)
        classes = class_count(sources["train"], cfg)
        user = True
    else:
        name = "image_folder"
        sources, class_names = scan(str(cfg.root), int(cfg.channels))
        classes = len(class_names)
        user = False
    data = DiskData(name, sources, (), classes, cfg, device, train_tf, eval_tf, norm, user)
    data.input_shape = _input_shape(data, norm)
    return data


def user_splits(cfg) -> dict[str, Dataset]:
    """Call the user's dataset target and name its splits train/val/test (carving val when it gives none)."""
    key, path = "dataset._target_", str(cfg._target_)
    kwargs = {k: cfg[k] for k in targets.added_keys(cfg, "dataset")}
    if targets.takes(targets.locate(key, path), "root"):
        kwargs["root"] = cfg.root
    out = targets.call(key, path, OmegaConf.create({"_target_": path, "_convert_": "all", **kwargs}))
    if isinstance(out, dict):
        unknown = set(out) - {"train", "val", "test"}
        if unknown or not {"train", "test"} <= set(out):
            raise UserError(f"{key}={path} returned a dict with keys {sorted(out)}; expected train, test and "
                            "optionally val")
        splits = dict(out)
    elif isinstance(out, (tuple, list)) and len(out) in (2, 3):
        splits = dict(zip(("train", "test") if len(out) == 2 else ("train", "val", "test"), out))
    else:
        raise UserError(f"{key}={path} returned a {type(out).__name__}; return (train, test), (train, val, test) "
                        "or a dict of torch Datasets")
    for split, ds in splits.items():
        if isinstance(ds, IterableDataset) or not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
            raise UserError(f"{key}={path}: its {split} split is a {type(ds).__name__}; return map-style torch "
                            "Datasets (with __len__ and __getitem__), not iterable ones")
    if len(splits["train"]) == 0:
        raise UserError(f"{key}={path}: its train split is empty")
    if "val" not in splits:
        train_idx, val_idx = validation_indices(len(splits["train"]), float(cfg.val_fraction), int(cfg.split_seed))
        train = splits["train"]
        splits["train"], splits["val"] = Subset(train, train_idx.tolist()), Subset(train, val_idx.tolist())
    return splits


def class_count(train: Dataset, cfg) -> int:
    """The Dataset's num_classes, else len(classes) (looking through Subset), else dataset.num_classes."""
    ds = train
    while ds is not None:
        if isinstance(getattr(ds, "num_classes", None), int):
            return ds.num_classes
        if getattr(ds, "classes", None) is not None:
            return len(ds.classes)
        ds = getattr(ds, "dataset", None)  # torch Subset and similar wrappers
    return int(cfg.num_classes)


def _first(data: DiskData, split: str):
    sample = data.reader(split, raw=True).__getitems__((None, [0]))
    if isinstance(sample, Failure):
        sample.throw()
    return sample


def _input_shape(data: DiskData, norm) -> tuple[int, ...]:
    """The shape of one model input, from the first training sample; evaluation must give the same."""
    x, y = _first(data, "train")
    shape = tuple(x.shape[1:])
    for split in ("val", "test"):
        if data.sizes[split]:
            other = tuple(_first(data, split)[0].shape[1:])
            if other != shape:
                raise UserError(f"{data.label}: training samples are shaped {shape} (dataset.augment) but {split} "
                                f"samples {other} (dataset.eval_transform); make them agree, e.g. the same "
                                "dataset.crop_size")
    if norm is not None and len(norm[0]) not in (1, shape[0] if shape else 0):
        raise UserError(f"dataset.mean/std have {len(norm[0])} values but the samples have {shape[0]} channels "
                        f"(shape {shape})")
    label = y[0]
    if not label.is_floating_point() and label.dim() == 0 and not 0 <= int(label) < data.num_classes:
        raise UserError(f"{data.label}: train[0] has class {int(label)}, outside 0..{data.num_classes - 1}; give "
                        "the train Dataset a num_classes attribute or set dataset.num_classes")
    return shape
