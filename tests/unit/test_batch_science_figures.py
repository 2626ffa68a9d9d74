"""The README's batch-size science tables (benchmarks/figure_batch_science.py) on a fabricated summary."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import figure_batch_science as fb  # noqa: E402

TRIALS = {"trials": 7, "reached": 2, "diverged": 1, "not_reached": 0, "pruned": 4, "oom": 0}


def workload(name, exact=None):
    return {
        "workload": name, "steps_median_abs_error": 0.09, "steps_compared": 2, "sweet_spot_predicted": 128,
        "sweet_spot_measured": 256.0, "b_crit_predicted": 179.4, "b_crit_measured": 133.8,
        "b_crit_measured_interval": [121.5, 152.8], "b_crit_ratio": 1.34, "kappa": 3.42, "rule_fails_agree": 1,
        "rule_fails_compared": 2, "cost_ratio": {"samples": 0.071, "cpu_rank_s": 0.079, "wall_rank_s": 0.066},
        "per_batch": [
            {"batch_size": 128, "steps_predicted": 340.2, "steps_measured": 308.0, "steps_error": 0.1045,
             "lr_predicted": 0.2, "lr_measured": 0.2, "rule_fails_predicted": False, "rule_fails_measured": False},
            {"batch_size": 256, "steps_predicted": 250.0, "steps_measured": None, "steps_error": None,
             "lr_predicted": 0.21, "lr_measured": None, "rule_fails_predicted": True, "rule_fails_measured": False}],
        "truth": {"seeds": 3, "sweet_spot": {"batch_size": 128, "tied": []},
                  "knee": {"b_crit": 133.8, "b_crit_lo": 121.5, "b_crit_hi": 152.8, "s_min": 184.4},
                  "cost": {"samples": 11460064, "cpu_rank_s": 823.4},
                  "per_batch": [
                      {"batch_size": 128, "best_lr": 0.2, "best_factor": 1.0, "trials": TRIALS,
                       "steps": [308.0, 282.0, 330.0], "rule_lr": 0.2, "rule_steps": 330, "rule_status": "ok",
                       "time_s": [4.87, 3.37, 11.5]},
                      {"batch_size": 256, "best_lr": None, "best_factor": None, "trials": TRIALS, "steps": None,
                       "rule_lr": 0.4, "rule_steps": None, "rule_status": "target_not_reached", "time_s": None}]},
        "exact_b_simple": exact}


SUMMARY = [workload("mnist1d_cnn"), {**workload("mnist1d_cnn"), "probe_run": 2, "b_crit_predicted": 206.0},
           workload("teacher_student", {"exact": 151.2, "probe_at_target": 139.9,
                                                "probe_at_target_error": -0.075, "probe_ema": 40.2,
                                                "probe_last_window": 803.0})]


def test_tuned_truth_marks_the_sweet_spot_and_misses():
    lines = fb.tuned_truth(SUMMARY).splitlines()
    assert lines[0].startswith("| batch | best lr (× rule's) |") and "of 3 seeds" in lines[0]
    assert lines[2] == ("| **128** (sweet spot) | 0.2 (×1.00) | 2 / 1 / 0 / 4 | 308 (282–330) | 0.2: 330 | "
                        "4.87 (3.37–11.50) |")
    assert lines[3] == "| 256 | — | 2 / 1 / 0 / 4 | not reached | 0.4: target not reached | — |"


def test_probe_table_and_summary():
    probe = fb.probe_against_truth(SUMMARY).splitlines()
    assert probe[2] == "| 128 | 340 | 308 | +10% | 0.2 | 0.2 | no / no |"
    assert probe[3] == "| 256 | 250 | — | — | 0.21 | — | yes / no |"
    summary = fb.summary_table(SUMMARY).splitlines()
    assert len(summary) == 2 + 3
    assert summary[2] == ("| MNIST-1D CNN | 9% (2) | 128 / 256 | 179 / 134 (122–153) | 1.34 | 3.42 | 1 of 2 | "
                          "7.1% / 7.9% / 6.6% |")
    assert summary[3].startswith("| MNIST-1D CNN, probe run 2 | 9% (2) | 128 / 256 | 206 / 134")  # a repeat
    # the other tables read the first probe run of a workload
    assert fb.probe_against_truth(list(reversed(SUMMARY[:2]))) == fb.probe_against_truth(SUMMARY[:1])
    assert fb.quotes(SUMMARY) == ["B_crit = **134** (122–153)", "S_min = 184", "11.5 million training samples",
                                  "823 CPU rank-seconds", "exactly 151", "the probe's 140", "7.5% low",
                                  "says 40 there", "alone says 803", "B_crit 179 against a knee of 134"]
