"""What one sweep point trains: the sweep keys checked, the budget in steps, and the point's training config."""

from __future__ import annotations

import copy
import math

from omegaconf import DictConfig, open_dict

from ddtrain.config import LR_SCALING
from ddtrain.errors import UserError
from ddtrain.targets import reports_accuracy

BUDGET_KINDS = ("epochs", "steps", "samples", "time_s")
TARGET_METRICS = ("val_accuracy", "val_loss")
MODES = ("measure", "predict")


def parse_budget(budget: str) -> tuple[str, float]:
    """sweep.budget as (kind, amount): "epochs=20" or, unquoted on a command line, "epochs:20" -> ("epochs", 20.0)."""
    kind, _, amount = str(budget).replace(":", "=", 1).partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if kind not in BUDGET_KINDS or not value > 0:
        raise UserError(f"sweep.budget={budget} is not understood; use one of epochs:N, steps:N, samples:N, time_s:N")
    return kind, value


def budget_steps(budget: str, batch_size: int, train_size: int, min_steps: int = 0) -> int | None:
    """Optimizer steps a point of this batch size may train (at least min_steps); None for a time budget."""
    kind, amount = parse_budget(budget)
    if kind == "time_s":
        return None
    if kind == "epochs":
        steps = math.ceil(amount * train_size / batch_size - 1e-9)
    elif kind == "samples":
        steps = math.ceil(amount / batch_size)
    else:
        steps = int(amount)
    return max(1, steps, min_steps)


def micro_steps(world_size: int, accum: int) -> int:
    """Accumulation micro-steps of a point: one rank measures the noise scale on two micro-batches."""
    return max(accum, 2) if world_size == 1 else accum


def validate_sweep(cfg, world_size: int) -> None:
    """Check the sweep keys for this world size; raise UserError naming the bad key."""
    sc = cfg.sweep
    if not sc.batch_sizes or not sc.seeds:
        raise UserError("sweep.batch_sizes and sweep.seeds must not be empty")
    if sc.lr_scaling not in LR_SCALING:
        raise UserError(f"sweep.lr_scaling={sc.lr_scaling} is not supported; choose one of: {', '.join(LR_SCALING)}")
    parse_budget(sc.budget)
    if sc.target_metric not in TARGET_METRICS:
        raise UserError(f"sweep.target_metric={sc.target_metric} is not supported; "
                        f"use one of {', '.join(TARGET_METRICS)}")
    if sc.target_metric == "val_accuracy" and not reports_accuracy(cfg.get("loss")):
        raise UserError(f"sweep.target_metric=val_accuracy needs accuracy, which loss._target_={cfg.loss._target_} "
                        "does not report: use sweep.target_metric=val_loss (and a loss as sweep.target)")
    if sc.target_metric == "val_accuracy" and not 0 < sc.target <= 1:
        raise UserError(f"sweep.target={sc.target} must be an accuracy in (0, 1]")
    if not sc.target > 0:
        raise UserError(f"sweep.target={sc.target} must be positive")
    if cfg.dataset.val_fraction <= 0:
        raise UserError("a sweep measures its target on the validation set: "
                        "set dataset.val_fraction > 0 (e.g. 0.1)")
    if sc.warmup_steps < 0 or sc.measure_steps < 0 or sc.evals_per_epoch < 1:
        raise UserError("sweep.warmup_steps and sweep.measure_steps must be >= 0, sweep.evals_per_epoch >= 1")
    if sc.mode not in MODES:
        raise UserError(f"sweep.mode={sc.mode} is not supported; choose one of: {', '.join(MODES)}")
    for key in ("min_steps", "timing_rounds", "probe_batch_size", "probe_anchors", "probe_max_samples", "tune_extend"):
        if sc[key] < 0:
            raise UserError(f"sweep.{key}={sc[key]} must not be negative")
    for key in ("timing_steps", "tune_lrs", "tune_evals"):
        if sc[key] < 1:
            raise UserError(f"sweep.{key}={sc[key]} must be at least 1")
    if not sc.tune_lr_span >= 1:
        raise UserError(f"sweep.tune_lr_span={sc.tune_lr_span} must be >= 1 (the ratio of the largest to the "
                        "smallest learning rate tried, e.g. 100)")
    if any(w < 0 for w in sc.tune_warmup_epochs):
        raise UserError(f"sweep.tune_warmup_epochs={list(sc.tune_warmup_epochs)} must not be negative")
    if sc.mode == "predict" and parse_budget(sc.budget)[0] == "time_s":
        raise UserError("sweep.mode=predict needs a budget in epochs, steps or samples (sweep.budget), not time_s")
    if sc.compare_to and sc.mode != "predict":
        raise UserError("sweep.compare_to is read by sweep.mode=predict; add sweep.mode=predict or drop it")
    parts = world_size * micro_steps(world_size, cfg.train.grad_accum_steps)
    sizes = [*sc.batch_sizes, *([sc.probe_batch_size] if sc.mode == "predict" and sc.probe_batch_size else [])]
    bad = [b for b in sizes if b <= 0 or b % parts]
    if bad:
        raise UserError(f"sweep.batch_sizes {bad} do not split into {world_size} rank(s) x "
                        f"{micro_steps(world_size, cfg.train.grad_accum_steps)} micro-step(s); use multiples of {parts}")


def point_config(cfg, batch_size: int, seed: int, accum: int, *, train_size: int | None = None,
                 lr_factor: float = 1.0, warmup_epochs: float | None = None, tuned: bool = False,
                 stop_after: int = 0) -> DictConfig:
    """The training config of one sweep point (a tuned trial: its LR factor, warm-up, eval cadence, stop rules)."""
    sc = cfg.sweep
    point = copy.deepcopy(cfg)
    kind, amount = parse_budget(sc.budget)
    with open_dict(point):
        tc = point.train
        tc.global_batch_size, tc.seed, tc.grad_accum_steps = batch_size, seed, accum
        tc.lr_scaling = sc.lr_scaling
        tc.lr = cfg.train.lr * lr_factor  # scaled by the rule as usual: the warm-up still starts from train.lr
        tc.max_steps, tc.time_budget_s = 0, 0.0
        if kind == "epochs":
            tc.epochs = amount
        elif kind == "steps":
            tc.max_steps = int(amount)
        elif kind == "samples":
            tc.max_steps = max(1, math.ceil(amount / batch_size))
        else:  # time: the schedule spans train.epochs; the point stops when its training time is spent
            tc.time_budget_s = amount
        steps = budget_steps(sc.budget, batch_size, train_size, sc.min_steps) if train_size else None
        if steps is not None and sc.min_steps:
            tc.max_steps = steps
        if warmup_epochs is not None:
            point.schedule.warmup_epochs = warmup_epochs
        if sc.target_metric == "val_loss":
            tc.target_accuracy, tc.target_loss = 0.0, sc.target
        else:
            tc.target_accuracy, tc.target_loss = sc.target, 0.0
        tc.noise_scale = True
        tc.eval_every, tc.evals_per_epoch = 0, sc.evals_per_epoch
        if tuned:
            if steps is None:
                raise UserError("sweep.tune needs a budget in epochs, steps or samples (sweep.budget), not time_s")
            tc.eval_every = max(1, steps // sc.tune_evals)
            tc.stop_at_target = True  # only the first crossing matters; the schedule keeps its full length
            tc.stop_after_steps = stop_after
        tc.throughput_warmup_steps, tc.throughput_measure_steps = sc.warmup_steps, sc.measure_steps
        point.checkpoint.every_steps, point.checkpoint.resume = 0, "never"
    return point
