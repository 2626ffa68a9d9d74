"""The batch-size sweep: how the global batch size changes throughput and accuracy, and where the sweet spot is.

One launched job, one session: every (batch size, seed) point gets a fresh model from the same
initial seed, a fresh optimizer, schedule and sampler, and its own run directory. Rows land in
sweep.csv/sweep.json as points finish, so an interrupted sweep resumes with the missing points only.
With sweep.tune the points are learning-rate trials (ddtrain.sweep.tuned); a timing pass
(ddtrain.sweep.timing) then gives each batch size a step time with an interval.
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, open_dict

from ddtrain.batching import BatchPlan
from ddtrain.errors import OutOfMemory
from ddtrain.sweep.points import (BUDGET_KINDS, TARGET_METRICS, micro_steps, parse_budget,  # noqa: F401
                                  point_config, validate_sweep)

log = logging.getLogger("ddtrain")

ROW_FROM_SUMMARY = ("per_rank_batch_size", "grad_accum_steps", "lr", "samples_per_s", "step_time_ms_median",
                    "steps", "epochs", "steps_to_target", "epochs_to_target", "time_to_target_s",
                    "best_val_accuracy", "test_accuracy", "final_train_loss", "peak_memory_bytes", "noise_scale",
                    "noise_scale_at_target", "status", "world_size")


def cpu_seconds(engine) -> float:
    """CPU seconds this process has used, summed over ranks (a collective): cost that load moves little."""
    return float(sum(engine.all_gather_object(time.process_time())))


def run_point(cfg, batch_size: int, seed: int, sweep_dir: Path, session, name: str | None = None,
              edit=None, before_fit=None, **point_kw) -> dict:
    """Train one point (default directory bs<N>_s<seed>); an out-of-memory batch gives an oom row (or more micro-steps).

    point_kw go to point_config (a tuned trial's lr_factor, warmup_epochs, tuned, stop_after, train_size);
    edit(point config), when given, changes that config in place (the probe's runs); before_fit(trainer,
    batches) runs after the memory probe (a branch loads its checkpoint). The row holds the training
    samples processed and the CPU seconds of all ranks: the point's cost.
    """
    import torch

    from ddtrain.runtime.optim import scaled_lr
    from ddtrain.runtime.run import run
    from ddtrain.sweep.memory import probe_memory

    d = session.engine
    accum = micro_steps(d.world_size, cfg.train.grad_accum_steps)
    t0, cpu0 = time.perf_counter(), cpu_seconds(d)
    point_dir = sweep_dir / (name or f"bs{batch_size}_s{seed}")
    while True:
        if d.is_main and point_dir.exists():
            shutil.rmtree(point_dir)  # left by an interrupted sweep: its row never landed
        d.barrier()
        session.log_to(point_dir)
        try:
            point = point_config(cfg, batch_size, seed, accum, **point_kw)
            if edit is not None:
                with open_dict(point):
                    edit(point)

            def prepare(trainer, batches):
                probe_memory(trainer, batches)
                if before_fit is not None:
                    before_fit(trainer, batches)

            summary = run(point, session, point_dir, before_fit=prepare)
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
                   "grad_accum_steps": accum, "status": "oom", "world_size": d.world_size,
                   "lr": scaled_lr(cfg.train.lr * point_kw.get("lr_factor", 1.0), batch_size,
                                   cfg.train.base_batch_size, cfg.sweep.lr_scaling)}
            break
    session.log_to(sweep_dir)
    gc.collect()
    return {"batch_size": batch_size, "seed": seed, "lr_scaling": cfg.sweep.lr_scaling, **row,
            "wall_s": time.perf_counter() - t0, "samples": (row.get("steps") or 0) * batch_size,
            "cpu_s": cpu_seconds(d) - cpu0}


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
                                                              "best_val_accuracy", "steps_to_target")
                       if row.get(k) is not None}
            writer.add_hparams({"batch_size": row["batch_size"], "lr": float(row["lr"] or 0.0),
                                "lr_scaling": row["lr_scaling"], "seed": row["seed"], "status": row["status"]},
                               metrics, run_name=row.get("trial") or f"bs{row['batch_size']}_s{row['seed']}")


def train_size(cfg) -> int:
    """Training samples of the configured dataset (after the validation split): epochs budgets in steps."""
    import torch

    from ddtrain.data import load_splits

    return int(load_splits(cfg.dataset, torch.device("cpu")).train_y.shape[0])


def timing_pass(cfg, session, rows: list[dict]) -> dict | None:
    """The interleaved timing of every batch size that fit (timing.json; kept when a rerun finds it complete)."""
    from ddtrain.sweep.timing import read_timing, run_timing

    sc, d = cfg.sweep, session.engine
    sizes = sorted({r["batch_size"] for r in rows if r.get("status") != "oom"})
    if not sc.timing_rounds or not sizes:
        return None
    found = d.broadcast_object(read_timing(session.run_dir) if d.is_main else None)
    if found and found.get("rounds") == sc.timing_rounds and found.get("steps") == sc.timing_steps and \
            sorted(int(b) for b in found["batch_sizes"]) == sizes:
        return found
    return run_timing(cfg, session, sizes, sc.timing_rounds, sc.timing_steps, sc.warmup_steps, session.run_dir)


def run_sweep(cfg: DictConfig, session) -> list[dict]:
    """Run every missing point (or tuned trial), time the batch sizes, write table, plot, report and TensorBoard."""
    from ddtrain.sweep import report

    d, sweep_dir = session.engine, session.run_dir
    rows = d.broadcast_object(report.read_rows(sweep_dir) if d.is_main else None)

    def write(current):
        if d.is_main:
            report.write_table(current, sweep_dir)  # atomically, after every point: a restart keeps them

    if cfg.sweep.tune:
        from ddtrain.sweep.tuned import run_tuned

        log.info("tuned sweep in %s: %d trial(s) already done", sweep_dir, len(rows))
        rows = run_tuned(cfg, session, rows, train_size(cfg), write)
    else:
        done = {(r["batch_size"], r["seed"]) for r in rows}
        todo = [(b, s) for b in dict.fromkeys(cfg.sweep.batch_sizes) for s in dict.fromkeys(cfg.sweep.seeds)
                if (b, s) not in done]
        log.info("sweep in %s: %d point(s) to run, %d already done", sweep_dir, len(todo), len(rows))
        size = train_size(cfg) if cfg.sweep.min_steps else None
        for batch_size, seed in todo:
            rows.append(run_point(cfg, batch_size, seed, sweep_dir, session, train_size=size))
            write(rows)
            log.info("%s", point_line(rows[-1]))
    if not cfg.sweep.tune:  # a tuned sweep keeps its rows in the order the trials ran (pruning follows it)
        rows.sort(key=lambda r: (r["batch_size"], r["seed"]))
    timing = timing_pass(cfg, session, rows)
    if d.is_main:
        from ddtrain.models import model_name

        title = f"{model_name(cfg.model)} on {cfg.dataset.name}, {d.world_size} rank(s)" + (", tuned" if cfg.sweep.tune else "")
        report.write_table(rows, sweep_dir)
        report.plot(rows, sweep_dir / "sweep.png", title=title, timing=timing)
        report.write_report(rows, sweep_dir, title, cfg.sweep.target, cfg.sweep.target_metric, timing=timing,
                            world_size=d.world_size)
        write_hparams(rows, sweep_dir)
        log.info("sweep written to %s (sweep.csv, sweep.json, sweep.png, report.md, tb/)", sweep_dir)
        log.info("cost of this sweep: %s", report.cost_line(report.cost(rows, timing, d.world_size)))
    return rows
