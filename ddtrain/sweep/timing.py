"""Step time per batch size with an interval, and time to target = steps to target x step time.

A point's own throughput is measured once, in a short window, while other work shares the machine:
two runs of the same sweep picked different sweet spots from the same steps to target. The timing
pass therefore times every batch size in rounds (ascending, then descending, ...), so drifting load
hits all batch sizes alike, and keeps each round's median step time: the median over rounds is the
step time, min..max over rounds its interval. Two batch sizes whose time-to-target intervals overlap
cannot be told apart, and the report says so.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from ddtrain.errors import OutOfMemory
from ddtrain.fileio import atomic_open

log = logging.getLogger("ddtrain")


def round_order(batch_sizes, rounds: int) -> list[tuple[int, int]]:
    """(round, batch size) in the order timed: ascending in even rounds, descending in odd ones."""
    sizes = sorted(dict.fromkeys(batch_sizes))
    return [(r, b) for r in range(rounds) for b in (sizes if r % 2 == 0 else sizes[::-1])]


def step_time(entry: dict | None) -> tuple[float, float, float] | None:
    """(median, min, max) over rounds of the per-round median step time in seconds; None if not timed."""
    values = [v for v in (entry or {}).get("step_time_s", []) if v is not None and v > 0]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)


def time_to_target(steps: tuple[float, float, float], seconds: tuple[float, float, float]) -> tuple[float, float, float]:
    """(T, lo, hi) of steps x step time from (mean, lo, hi) steps and (median, lo, hi) step time."""
    return steps[0] * seconds[0], steps[1] * seconds[1], steps[2] * seconds[2]


def overlaps(a: tuple, b: tuple) -> bool:
    """Whether two (value, lo, hi) intervals overlap."""
    return a[1] <= b[2] and b[1] <= a[2]


def fastest(times: dict) -> dict | None:
    """The batch size with the smallest T (ties: the smaller batch) and those that cannot be told apart from it.

    times: {batch size: (T, lo, hi)}. Returns {"batch_size", "time": (T, lo, hi), "tied": [batch sizes
    whose interval overlaps the fastest's]} and the adjacent pairs that overlap ("indistinct").
    """
    if not times:
        return None
    best = min(sorted(times), key=lambda b: times[b][0])
    sizes = sorted(times)
    return {"batch_size": best, "time": times[best],
            "tied": [b for b in sizes if b != best and overlaps(times[b], times[best])],
            "indistinct": [(a, b) for a, b in zip(sizes, sizes[1:]) if overlaps(times[a], times[b])]}


def read_timing(sweep_dir) -> dict | None:
    """timing.json of a sweep directory, or None."""
    path = Path(sweep_dir) / "timing.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_timing(cfg, session, batch_sizes, rounds: int, steps: int, warmup: int, out_dir: Path,
               train_size: int | None = None) -> dict:
    """Time `steps` steps (after `warmup`) of every batch size in `rounds` rounds; writes out_dir/timing.json.

    Each timing is a short run of its own (fresh model; memory probe first, so a batch that does not
    fit is recorded as oom once and skipped afterwards). Returns {"rounds", "steps", "batch_sizes":
    {str(batch size): {"status", "step_time_s": [per round], "samples", "wall_s", "cpu_s"}}}.
    """
    from omegaconf import open_dict

    from ddtrain.runtime.run import run
    from ddtrain.sweep.memory import probe_memory
    from ddtrain.sweep.points import micro_steps, point_config
    from ddtrain.sweep.runner import cpu_seconds

    d = session.engine
    out_dir = Path(out_dir)
    entries: dict = {}
    for r, b in round_order(batch_sizes, rounds):
        entry = entries.setdefault(str(b), {"status": "ok", "step_time_s": [], "samples": 0, "wall_s": 0.0,
                                            "cpu_s": 0.0})
        if entry["status"] == "oom":
            continue
        cfg_b = point_config(cfg, b, int(cfg.sweep.seeds[0]), micro_steps(d.world_size, cfg.train.grad_accum_steps))
        with open_dict(cfg_b):
            tc = cfg_b.train
            tc.max_steps, tc.epochs, tc.time_budget_s = warmup + steps, 1.0, 0.0
            tc.throughput_warmup_steps, tc.throughput_measure_steps = warmup, steps
            tc.noise_scale, tc.target_accuracy, tc.log_every = False, 0.0, warmup + steps
            tc.eval_every = warmup + steps + 1  # no validation inside the timed run, only the final one
            cfg_b.logging.tensorboard = False
        run_dir = out_dir / "timing" / f"bs{b}_r{r}"
        t0, cpu0 = time.perf_counter(), cpu_seconds(d)
        session.log_to(run_dir)
        try:
            summary = run(cfg_b, session, run_dir, before_fit=probe_memory)
            entry["step_time_s"].append((summary.get("step_time_ms_median") or 0.0) / 1000.0 or None)
            entry["samples"] += int(summary["steps"]) * b
        except OutOfMemory as exc:
            log.warning("timing: %s: recorded as oom", exc)
            entry["status"] = "oom"
        session.log_to(out_dir)
        entry["wall_s"] += time.perf_counter() - t0
        entry["cpu_s"] += cpu_seconds(d) - cpu0
    result = {"rounds": rounds, "steps": steps, "warmup": warmup, "world_size": d.world_size,
              "batch_sizes": entries}
    if d.is_main:
        with atomic_open(out_dir / "timing.json", "w") as f:
            json.dump(result, f, indent=2)
    for b, e in entries.items():
        t = step_time(e)
        log.info("timing: batch %s %s", b, e["status"] if t is None else
                 f"{1000 * t[0]:.2f} ms/step ({1000 * t[1]:.2f}-{1000 * t[2]:.2f} over {len(e['step_time_s'])} rounds)")
    return result
