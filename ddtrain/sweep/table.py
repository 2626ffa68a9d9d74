"""sweep.csv / sweep.json and the small helpers every sweep artefact shares.

Everything works from a list of row dicts, one per point, and tolerates missing values: an oom row
has no accuracy, a target_not_reached row no steps_to_target, a sweep may have one batch size only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ddtrain.errors import UserError
from ddtrain.fileio import atomic_open

COLUMNS = [
    "batch_size", "seed", "per_rank_batch_size", "grad_accum_steps", "lr", "lr_scaling", "samples_per_s",
    "step_time_ms_median", "steps", "epochs", "steps_to_target", "epochs_to_target", "time_to_target_s",
    "best_val_accuracy", "final_val_accuracy", "test_accuracy", "final_train_loss", "peak_memory_bytes",
    "noise_scale", "noise_scale_at_target", "status", "wall_s", "samples", "cpu_s", "world_size",
]
TUNED_COLUMNS = ["trial", "role", "lr_factor", "warmup_epochs"]  # rows of a tuned sweep also have these


def num(value) -> float | None:
    """A finite float, or None for None, NaN, inf, booleans and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def mean(values) -> float | None:
    """Mean of the finite numbers among values; None if there are none."""
    xs = [x for x in (num(v) for v in values) if x is not None]
    return sum(xs) / len(xs) if xs else None


def by_batch(rows) -> dict:
    """{batch_size: [rows]} in ascending batch size; rows without a batch size are ignored."""
    groups: dict = {}
    for row in rows:
        bs = row.get("batch_size")
        if num(bs) is not None:
            groups.setdefault(bs, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: float(kv[0])))


def reached(group) -> bool:
    """Every seed of this batch size reached the target (a batch size is only as good as its worst seed)."""
    return bool(group) and all(r.get("status") == "ok" and num(r.get("time_to_target_s")) is not None
                               and num(r.get("steps_to_target")) is not None for r in group)


def is_tuned(rows) -> bool:
    """Rows of a tuned sweep (learning-rate trials with roles)."""
    return any(r.get("role") for r in rows)


def _clean(value):
    """JSON/CSV-safe value: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomic(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the complete new one."""
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


def write_table(rows: list[dict], sweep_dir) -> None:
    """Write sweep.csv (fixed column order, None as an empty cell) and sweep.json, both atomically."""
    sweep_dir = Path(sweep_dir)
    rows = [{k: _clean(v) for k, v in row.items()} for row in rows]
    columns = COLUMNS + (TUNED_COLUMNS if is_tuned(rows) else [])
    # keys outside the fixed set are kept (after the fixed columns) rather than silently dropped
    extra = sorted({k for row in rows for k in row} - set(columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns + extra)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in columns + extra])
    write_text_atomic(sweep_dir / "sweep.csv", buf.getvalue())
    write_text_atomic(sweep_dir / "sweep.json", json.dumps(rows, indent=2, allow_nan=False) + "\n")


def read_rows(sweep_dir) -> list[dict]:
    """The rows of sweep_dir/sweep.json; an empty list if there is none yet."""
    path = Path(sweep_dir) / "sweep.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        rows = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); delete it or choose another sweep directory") from e
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise UserError(f"{path} is not a list of sweep rows; delete it or choose another sweep directory")
    return rows


def cost(rows, timing: dict | None = None, world_size: int | None = None) -> dict:
    """What the sweep cost: training samples processed, CPU rank-seconds and wall rank-seconds (points + timing).

    samples and cpu_rank_s are None for rows recorded before ddtrain counted them, wall_rank_s when the
    world size is not known.
    """
    entries = list((timing or {}).get("batch_sizes", {}).values())
    ranks = world_size or (timing or {}).get("world_size") or next((r["world_size"] for r in rows if r.get("world_size")),
                                                                     None)
    samples = sum(int(num(r.get("samples")) or 0) for r in rows) + sum(int(e.get("samples", 0)) for e in entries)
    cpu = sum(num(r.get("cpu_s")) or 0.0 for r in rows) + sum(e.get("cpu_s", 0.0) for e in entries)
    if not entries and not any("samples" in r for r in rows):  # rows of a sweep recorded before costs were
        samples, cpu = None, None
    wall = sum(num(r.get("wall_s")) or 0.0 for r in rows) + sum(e.get("wall_s", 0.0) for e in entries)
    return {"samples": samples, "cpu_rank_s": cpu, "wall_rank_s": wall * ranks if ranks else None, "wall_s": wall,
            "points": len(rows), "timing_runs": sum(len(e.get("step_time_s", [])) for e in entries)}
