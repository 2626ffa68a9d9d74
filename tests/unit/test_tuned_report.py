"""A tuned sweep's report.md and sweep.png, time to target with intervals, and what a sweep cost."""

from __future__ import annotations

import pytest

from ddtrain.sweep import knee, report, trials
from ddtrain.sweep.table import cost

S_MIN, B_CRIT = 100.0, 128.0
STEP_S = {32: [0.010, 0.011, 0.012], 64: [0.011, 0.012, 0.013], 128: [0.013, 0.014, 0.016],
          256: [0.020, 0.022, 0.024], 512: [0.036, 0.040, 0.044]}


def tuned_rows() -> list[dict]:
    """Per batch: the rule's trial, a better one at x2.15 (x0.464 from 256 on), a diverged one; two repeats."""
    out = []
    for b in STEP_S:
        steps = knee.model_steps(S_MIN, B_CRIT, b)
        rule_lr, best_f = 0.1 * b / 128, (2.15 if b < 256 else 0.464)
        base = {"batch_size": b, "lr_scaling": "linear", "samples": 0, "cpu_s": 1.0, "wall_s": 2.0,
                "warmup_epochs": None, "noise_scale": 50.0, "noise_scale_at_target": 40.0}
        rule_status = "diverged" if b == 512 else "ok"
        out.append({**base, "seed": 0, "role": "rule", "lr_factor": 1.0, "lr": rule_lr, "status": rule_status,
                    "steps_to_target": None if b == 512 else round(steps * 1.3), "time_to_target_s": 1.0})
        out.append({**base, "seed": 0, "role": "search", "lr_factor": best_f, "lr": rule_lr * best_f, "status": "ok",
                    "steps_to_target": round(steps), "time_to_target_s": 1.0})
        out.append({**base, "seed": 0, "role": "search", "lr_factor": 4.64, "lr": rule_lr * 4.64,
                    "status": "diverged", "steps_to_target": None})
        for seed, f in ((1, 0.95), (2, 1.05)):
            out.append({**base, "seed": seed, "role": "repeat", "lr_factor": best_f, "lr": rule_lr * best_f,
                        "status": "ok", "steps_to_target": round(steps * f), "time_to_target_s": 1.0})
    for r in out:
        r["trial"] = trials.trial_name(r["batch_size"], r["seed"], r["lr"])
        r["samples"] = (r["steps_to_target"] or 10) * r["batch_size"]
    return out


TIMING = {"rounds": 3, "steps": 20, "world_size": 2,
          "batch_sizes": {str(b): {"status": "ok", "step_time_s": v, "samples": 1000, "wall_s": 1.0, "cpu_s": 1.5}
                          for b, v in STEP_S.items()}}


def test_time_to_target_is_steps_times_step_time_with_an_interval():
    rows = tuned_rows()
    times = report.times(rows, TIMING)
    steps64 = [round(knee.model_steps(S_MIN, B_CRIT, 64) * f) for f in (1.0, 0.95, 1.05)]  # 300, 285, 315
    assert times[64.0] == pytest.approx((sum(steps64) / 3 * 0.012, 285 * 0.011, 315 * 0.013))
    spot = report.sweet_spot(rows, TIMING)
    # T: 32 -> 5.5 s, 64 -> 3.6 (3.13-4.10), 128 -> 2.8 (2.47-3.36), 256 -> 3.3 (2.84-3.79), 512 -> 5.0:
    # the fastest, 128, overlaps both neighbours
    assert spot["batch_size"] == 128 and spot["tied"] == [64, 256]
    assert spot["indistinct"] == [(64, 128), (128, 256)]
    assert spot["time_to_target_s"] == pytest.approx(200 * 0.014)
    # without a timing pass the sweet spot is the measured time to target, as before
    assert report.sweet_spot(rows)["batch_size"] == 32


def test_tuned_report_reads_the_tuned_setting(tmp_path):
    rows = tuned_rows()
    text = report.write_report(rows, tmp_path, "tuned", 0.85, "val_accuracy", timing=TIMING, world_size=2)
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 5 and "best lr (× rule)" in table[0] and "min over trials" in table[0]
    line128 = next(line for line in table if line.startswith("| **128** |"))
    assert "(×2.15)" in line128 and "| 2/1/0/0 | 200 | 260 |" in line128 and "← sweet spot" in line128
    assert "| 512 | 3 | 0.1856 (×0.464) | 1/2/0/0 | 125 | diverged |" in text
    assert "It cannot be told apart from batch size(s) 64, 256" in text
    assert "Neighbours that cannot be told apart" in text
    # the knee: fitted on the tuned curve (means over seeds), with a bootstrap interval
    fit = report.knee_interval(rows)
    assert fit["b_crit"] == pytest.approx(B_CRIT, rel=0.02) and fit["b_crit_lo"] < B_CRIT < fit["b_crit_hi"]
    assert "tuned, non-diverged points only: 5 batch sizes" in text and "bootstrap interval over seeds" in text
    assert "fails at 512 (diverged)" in text and "more than 1.5×" not in text
    assert "B_simple at the target" in text and "40" in text
    assert "Cost of this sweep:** " in text and "CPU rank-seconds" in text
    report.plot(rows, tmp_path / "sweep.png", title="tuned", timing=TIMING)
    from matplotlib.image import imread
    img = imread(tmp_path / "sweep.png")
    assert img.shape[1] > 4 * 500  # four panels: throughput, learning rates, steps, time to target


def test_cost_adds_points_and_timing():
    rows = [{"samples": 1000, "cpu_s": 2.0, "wall_s": 3.0}, {"samples": 500, "cpu_s": 1.0, "wall_s": 1.0},
            {"status": "oom", "samples": 0, "cpu_s": 0.5, "wall_s": 0.5}]
    c = cost(rows, {"world_size": 2, "batch_sizes": {"64": {"samples": 100, "cpu_s": 1.0, "wall_s": 0.5,
                                                             "step_time_s": [0.1, 0.1]}}})
    assert c == {"samples": 1600, "cpu_rank_s": 4.5, "wall_rank_s": 10.0, "wall_s": 5.0, "points": 3,
                 "timing_runs": 2}
