"""Validation of a composed TrainJob for a world size: every bad value is one UserError naming its key.

ddtrain/config.py holds the schema (types, defaults, the lists of choices); this module holds the checks
that need more than a type: choices, ranges, combinations of keys and the batch plan.
"""

from __future__ import annotations

from ddtrain.batching import BatchPlan
from ddtrain.config import (BACKENDS, COMPRESSIONS, DATASETS, DISK_DATASETS, ENGINES, LR_SCALING, MODELS, OPTIMIZERS,
                            PLACEMENTS, PRECISIONS, RANDOM_TRANSFORM_OPS, SCHEDULES, TRANSFORM_OPS)
from ddtrain.errors import UserError


def _choice(key: str, value: str, choices: tuple) -> None:
    if value not in choices:
        raise UserError(f"{key}={value} is not supported; choose one of: {', '.join(choices)}")


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{key}={value} must be positive")


def _check_transforms(d) -> None:
    """dataset.augment, eval_transform and their parameters (ddtrain.data.augment applies them)."""
    on_disk = d.get("_target_") is not None or d.name in DISK_DATASETS
    for key in ("augment", "eval_transform"):
        ops = [str(op) for op in d[key]]
        if ops and not on_disk:
            raise UserError(f"dataset.{key}={ops} applies to datasets read from disk (dataset=image_folder or "
                            f"dataset._target_); dataset={d.name} is held in memory: drop dataset.{key}")
        for op in ops:
            if op not in TRANSFORM_OPS:
                raise UserError(f"dataset.{key}: unknown op {op}; choose from {', '.join(TRANSFORM_OPS)}")
            if key == "eval_transform" and op in RANDOM_TRANSFORM_OPS:
                raise UserError(f"dataset.eval_transform: {op} is random; evaluation takes only resize and "
                                "center_crop (put it in dataset.augment)")
        if {"random_resized_crop", "center_crop"} & set(ops) and d.crop_size <= 0:
            raise UserError(f"dataset.{key}={ops} needs dataset.crop_size > 0 (e.g. 224)")
        if "resize" in ops and d.resize_size <= 0:
            raise UserError(f"dataset.{key}={ops} needs dataset.resize_size > 0 (e.g. 256)")
    if d.pad < 0 or d.crop_size < 0:
        raise UserError(f"dataset.pad={d.pad} and dataset.crop_size={d.crop_size} must not be negative")
    scale, ratio = list(d.crop_scale), list(d.crop_ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise UserError(f"dataset.crop_scale={scale} must be [low, high] with 0 < low <= high <= 1")
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
        raise UserError(f"dataset.crop_ratio={ratio} must be [low, high] with 0 < low <= high")
    if len(d.mean) != len(d.std) or any(s <= 0 for s in d.std):
        raise UserError(f"dataset.mean={list(d.mean)} and dataset.std={list(d.std)} need one value per channel "
                        "each, std positive")
    if d.channels not in (1, 3):
        raise UserError(f"dataset.channels={d.channels} must be 1 (grayscale) or 3 (RGB)")


def validate(cfg, world_size: int) -> None:
    """Check a composed TrainJob for the given world size; raise UserError naming the bad key."""
    from ddtrain.targets import check_targets, reports_accuracy

    check_targets(cfg)
    if cfg.model.get("_target_") is None:
        _choice("model", cfg.model.name, MODELS)
    if cfg.dataset.get("_target_") is None:
        _choice("dataset", cfg.dataset.name, DATASETS)
    _check_transforms(cfg.dataset)
    if cfg.optimizer.get("_target_") is None:
        _choice("optimizer", cfg.optimizer.name, OPTIMIZERS)
    _choice("schedule", cfg.schedule.name, SCHEDULES)
    _choice("train.lr_scaling", cfg.train.lr_scaling, LR_SCALING)
    _choice("train.precision", cfg.train.precision, PRECISIONS)
    _choice("dist.backend", cfg.dist.backend, BACKENDS)
    _choice("dataset.placement", cfg.dataset.placement, PLACEMENTS)
    _positive("dataset.prefetch_factor", cfg.dataset.prefetch_factor)
    _choice("dist.engine", cfg.dist.engine, ENGINES)
    if cfg.dist.compression not in COMPRESSIONS[cfg.dist.engine]:
        raise UserError(f"dist.compression={cfg.dist.compression} is not supported by dist.engine={cfg.dist.engine}; "
                        f"choose one of: {', '.join(COMPRESSIONS[cfg.dist.engine])}")
    _positive("train.lr", cfg.train.lr)
    _positive("train.global_batch_size", cfg.train.global_batch_size)
    _positive("train.base_batch_size", cfg.train.base_batch_size)
    _positive("train.grad_accum_steps", cfg.train.grad_accum_steps)
    _positive("train.log_every", cfg.train.log_every)
    _positive("train.evals_per_epoch", cfg.train.evals_per_epoch)
    _positive("dist.timeout_s", cfg.dist.timeout_s)
    _positive("dist.bucket_cap_mb", cfg.dist.bucket_cap_mb)
    if cfg.train.max_steps < 0:
        raise UserError(f"train.max_steps={cfg.train.max_steps} must be positive (or 0 to use train.epochs)")
    if cfg.train.max_steps == 0:
        _positive("train.epochs", cfg.train.epochs)
    if not 0.0 <= cfg.dataset.val_fraction < 1.0:
        raise UserError(f"dataset.val_fraction={cfg.dataset.val_fraction} must be in [0, 1)")
    for key in ("train.grad_clip", "train.eval_every", "train.throughput_warmup_steps", "dataset.num_workers",
                "checkpoint.every_steps", "schedule.warmup_epochs", "train.stop_after_steps"):
        section, name = key.split(".")
        if getattr(cfg[section], name) < 0:
            raise UserError(f"{key}={getattr(cfg[section], name)} must not be negative")
    _positive("checkpoint.keep_last", cfg.checkpoint.keep_last)
    if cfg.model.get("sync_batchnorm") and cfg.dist.engine != "ddp":
        raise UserError(f"model.sync_batchnorm=true needs dist.engine=ddp; dist.engine={cfg.dist.engine} averages "
                        "gradients only, so BatchNorm statistics stay per rank (use dist.engine=ddp, or "
                        "model.sync_batchnorm=false)")
    if not 0.0 <= cfg.train.target_accuracy <= 1.0:
        raise UserError(f"train.target_accuracy={cfg.train.target_accuracy} must be in [0, 1]")
    if cfg.train.target_accuracy and not reports_accuracy(cfg.get("loss")):
        raise UserError(f"train.target_accuracy={cfg.train.target_accuracy} needs accuracy, which "
                        f"loss._target_={cfg.loss._target_} does not report; set loss.accuracy=true if it is a "
                        "classification loss, else train.target_accuracy=0")
    if cfg.train.get("target_loss", 0.0) < 0:
        raise UserError(f"train.target_loss={cfg.train.target_loss} must not be negative (0: no target)")
    if cfg.train.target_accuracy and cfg.train.get("target_loss", 0.0):
        raise UserError("set one of train.target_accuracy and train.target_loss, not both")
    if cfg.train.time_budget_s < 0 or cfg.train.throughput_measure_steps < 0:
        raise UserError("train.time_budget_s and train.throughput_measure_steps must not be negative")
    BatchPlan(cfg.train.global_batch_size, world_size, cfg.train.grad_accum_steps)  # divides exactly
