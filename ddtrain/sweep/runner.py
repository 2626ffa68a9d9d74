"""The batch-size sweep: how the global batch size changes throughput and accuracy, and where the sweet spot is.

One launched job, one session: every (batch size, seed) point gets a fresh model from the same
initial seed, a fresh optimizer, schedule and sampler, and its own run directory. Rows land in
sweep.csv/sweep.json as points finish, so an interrupted sweep resumes with the missing points only.
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

from ddtrain.batching import BatchPlan
from ddtrain.config import LR_SCALING
from ddtrain.errors import OutOfMemory, UserError
from ddtrain.targets import reports_accuracy

log = logging.getLogger("ddtrain")
BUDGET_KINDS = ("epochs", "steps", "samples", "time_s")
TARGET_METRICS = ("val_accuracy", "val_loss")


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
    parts = world_size * micro_steps(world_size, cfg.train.grad_accum_steps)
    bad = [b for b in sc.batch_sizes if b <= 0 or b % parts]
    if bad:
        raise UserError(f"sweep.batch_sizes {bad} do not split into {world_size} rank(s) x "
                        f"{micro_steps(world_size, cfg.train.grad_accum_steps)} micro-step(s); use multiples of {parts}")


def point_config(cfg, batch_size: int, seed: int, accum: int) -> DictConfig:
    """The training config of one sweep point."""
    sc = cfg.sweep
    point = copy.deepcopy(cfg)
    kind, amount = parse_budget(sc.budget)
    with open_dict(point):
        tc = point.train
        tc.global_batch_size, tc.seed, tc.grad_accum_steps = batch_size, seed, accum
        tc.lr_scaling = sc.lr_scaling
        tc.max_steps, tc.time_budget_s = 0, 0.0
        if kind == "epochs":
            tc.epochs = amount
        elif kind == "steps":
            tc.max_steps = int(amount)
        elif kind == "samples":
            tc.max_steps = max(1, math.ceil(amount / batch_size))
        else:  # time: the schedule spans train.epochs; the point stops when its training time is spent
            tc.time_budget_s = amount
        if sc.target_metric == "val_loss":
            tc.target_accuracy, tc.target_loss = 0.0, sc.target
        else:
            tc.target_accuracy, tc.target_loss = sc.target, 0.0
        tc.noise_scale = True
        tc.eval_every, tc.evals_per_epoch = 0, sc.evals_per_epoch
        tc.throughput_warmup_steps, tc.throughput_measure_steps = sc.warmup_steps, sc.measure_steps
        point.checkpoint.every_steps, point.checkpoint.resume = 0, "never"
    return point


ROW_FROM_SUMMARY = ("per_rank_batch_size", "grad_accum_steps", "lr", "samples_per_s", "step_time_ms_median",
                    "steps", "epochs", "steps_to_target", "epochs_to_target", "time_to_target_s",
                    "best_val_accuracy", "test_accuracy", "final_train_loss", "peak_memory_bytes", "noise_scale",
                    "status")


def run_point(cfg, batch_size: int, seed: int, sweep_dir: Path, session) -> dict:
    """Train one (batch size, seed) point; an out-of-memory batch gives an oom row (or more micro-steps)."""
    import torch

    from ddtrain.runtime.optim import scaled_lr
    from ddtrain.runtime.run import run
    from ddtrain.sweep.memory import probe_memory

    d = session.engine
    accum = micro_steps(d.world_size, cfg.train.grad_accum_steps)
    t0 = time.perf_counter()
    point_dir = sweep_dir / f"bs{batch_size}_s{seed}"
    while True:
        if d.is_main and point_dir.exists():
            shutil.rmtree(point_dir)  # left by an interrupted sweep: its row never landed
        d.barrier()
        session.log_to(point_dir)
        try:
            summary = run(point_config(cfg, batch_size, seed, accum), session, point_dir, before_fit=probe_memory)
            row = {k: summary.get(k) for k in ROW_FROM_SUMMARY}
            row["final_val_accuracy"] = summary.get("val_accuracy")
            break
        except OutOfMemory as exc:
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            per_rank = BatchPlan(batch_size, d.world_size, accum).per_rank_batch_size
            if cfg.sweep.auto_accumulate and per_rank > 1 and batch_size % (d.world_size * accum * 2) == 0:
                log.warning("%s: retrying with %d accumulation micro-steps", exc, accum * 2)
                accum *= 2
                continue
            log.warning("%s: recorded as oom", exc)
            row = {**dict.fromkeys(ROW_FROM_SUMMARY), "final_val_accuracy": None, "per_rank_batch_size": per_rank,
                   "grad_accum_steps": accum, "status": "oom",
                   "lr": scaled_lr(cfg.train.lr, batch_size, cfg.train.base_batch_size, cfg.sweep.lr_scaling)}
            break
    session.log_to(sweep_dir)
    gc.collect()
    return {"batch_size": batch_size, "seed": seed, "lr_scaling": cfg.sweep.lr_scaling, **row,
            "wall_s": time.perf_counter() - t0}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def point_line(row: dict) -> str:
    """The console line of a finished point."""
    return (f"batch {row['batch_size']:>6} seed {row['seed']}: {row['status']:<18} "
            f"{_fmt(row.get('samples_per_s'), ',.0f'):>10} samples/s, steps to target "
            f"{_fmt(row.get('steps_to_target'), 'd'):>6}, time to target {_fmt(row.get('time_to_target_s'), '.1f'):>6} s, "
            f"best val {_fmt(row.get('best_val_accuracy'), '.4f')}, test {_fmt(row.get('test_accuracy'), '.4f')}, "
            f"noise scale {_fmt(row.get('noise_scale'), ',.0f')}")


def write_hparams(rows: list[dict], sweep_dir: Path) -> None:
    """One TensorBoard hparams entry per point: batch size, lr, lr scaling, seed -> the figures."""
    from torch.utils.tensorboard import SummaryWriter

    shutil.rmtree(sweep_dir / "tb", ignore_errors=True)  # rewritten whole, also after a resumed sweep
    with SummaryWriter(str(sweep_dir / "tb")) as writer:
        for row in rows:
            metrics = {f"hparam/{k}": float(row[k]) for k in ("samples_per_s", "test_accuracy", "time_to_target_s",
                                                              "best_val_accuracy") if row.get(k) is not None}
            writer.add_hparams({"batch_size": row["batch_size"], "lr": float(row["lr"] or 0.0),
                                "lr_scaling": row["lr_scaling"], "seed": row["seed"], "status": row["status"]},
                               metrics, run_name=f"bs{row['batch_size']}_s{row['seed']}")


def run_sweep(cfg: DictConfig, session) -> list[dict]:
    """Run every missing (batch size, seed) point, then write the table, the plot, the report and TensorBoard."""
    from ddtrain.sweep import report

    d, sweep_dir = session.engine, session.run_dir
    rows = d.broadcast_object(report.read_rows(sweep_dir) if d.is_main else None)
    done = {(r["batch_size"], r["seed"]) for r in rows}
    todo = [(b, s) for b in dict.fromkeys(cfg.sweep.batch_sizes) for s in dict.fromkeys(cfg.sweep.seeds)
            if (b, s) not in done]
    log.info("sweep in %s: %d point(s) to run, %d already done", sweep_dir, len(todo), len(rows))
    for batch_size, seed in todo:
        row = run_point(cfg, batch_size, seed, sweep_dir, session)
        rows.append(row)
        if d.is_main:
            report.write_table(rows, sweep_dir)  # atomically, after every point: a restart keeps them
        log.info("%s", point_line(row))
    rows.sort(key=lambda r: (r["batch_size"], r["seed"]))
    if d.is_main:
        from ddtrain.models import model_name

        title = f"{model_name(cfg.model)} on {cfg.dataset.name}, {d.world_size} rank(s)"
        report.write_table(rows, sweep_dir)
        report.plot(rows, sweep_dir / "sweep.png", title=title)
        report.write_report(rows, sweep_dir, title, cfg.sweep.target, cfg.sweep.target_metric)
        write_hparams(rows, sweep_dir)
        log.info("sweep written to %s (sweep.csv, sweep.json, sweep.png, report.md, tb/)", sweep_dir)
    return rows
