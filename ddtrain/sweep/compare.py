"""The probe against a measured (tuned) sweep: per batch size errors and the summary the issue asks for.

Measured steps to target are the tuned curve's (mean over seeds of the best setting); measured time
is those steps times the measured sweep's own timed step time; the measured sweet spot and knee are
what that sweep's report says. Errors are predicted / measured - 1.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ddtrain.errors import UserError


def measured(sweep_dir) -> dict:
    """What a measured sweep says, in the shape compare() needs."""
    from ddtrain.sweep import report, timing as timing_mod, trials
    from ddtrain.sweep.table import by_batch, cost, is_tuned

    rows = report.read_rows(sweep_dir)
    if not rows:
        raise UserError(f"sweep.compare_to={sweep_dir} holds no sweep.json; point it at a finished sweep directory")
    timing = timing_mod.read_timing(sweep_dir)
    steps = report.steps_by_batch(rows)
    spot = report.sweet_spot(rows, timing)
    fit = report.knee_interval(rows)
    per = {}
    for b, group in by_batch(rows).items():
        best = trials.best_trial(group) if is_tuned(rows) else None
        rule = trials.rule_rows(group) if is_tuned(rows) else group[:1]
        t = timing_mod.step_time((timing or {}).get("batch_sizes", {}).get(str(int(b))))
        s = steps.get(float(b))
        per[int(b)] = {"steps": statistics.fmean(s) if s else None, "step_time_s": t,
                       "time_s": statistics.fmean(s) * t[0] if s and t else None,
                       "best_lr": best["lr"] if best else None,
                       "rule_fails": bool(rule) and not trials.reached(rule[0]) and rule[0].get("status") != "oom"}
    return {"per_batch": per, "sweet_spot": spot and spot["batch_size"], "knee": fit, "tuned": is_tuned(rows),
            "cost": cost(rows, timing, (timing or {}).get("world_size"))}


def _err(pred, meas):
    return None if pred is None or not meas else pred / meas - 1.0


def compare(prediction: dict, sweep_dir) -> dict:
    """Errors of a prediction against the measured sweep in sweep_dir (see the module doc)."""
    m = measured(sweep_dir)
    table = []
    for e in prediction["per_batch"]:
        b = e["batch_size"]
        got = m["per_batch"].get(b)
        if got is None:
            continue
        t_pred = (e.get("time_to_target_s") or [None])[0]
        table.append({"batch_size": b, "steps_predicted": e.get("steps_to_target"), "steps_measured": got["steps"],
                      "steps_error": _err(e.get("steps_to_target"), got["steps"]),
                      "time_predicted_s": t_pred, "time_measured_s": got["time_s"],
                      "time_error": _err(t_pred, got["time_s"]),
                      "lr_predicted": e.get("lr"), "lr_measured": got["best_lr"],
                      "lr_ratio": None if not e.get("lr") or not got["best_lr"] else e["lr"] / got["best_lr"],
                      "rule_fails_predicted": bool(e.get("rule", {}).get("fails")),
                      "rule_fails_measured": got["rule_fails"]})
    errs = [abs(r["steps_error"]) for r in table if r["steps_error"] is not None]
    knee = m["knee"]
    spot_p = (prediction.get("sweet_spot") or {}).get("batch_size")
    c_p, c_m = prediction["cost"], m["cost"]
    return {
        "measured_dir": str(Path(sweep_dir).resolve()), "measured_tuned": m["tuned"], "per_batch": table,
        "steps_median_abs_error": statistics.median(errs) if errs else None, "steps_compared": len(errs),
        "sweet_spot_predicted": spot_p, "sweet_spot_measured": m["sweet_spot"],
        "sweet_spot_log2_ratio": (math.log2(spot_p / m["sweet_spot"]) if spot_p and m["sweet_spot"] else None),
        "b_crit_predicted": prediction["b_crit"], "b_crit_measured": knee and knee["b_crit"],
        "b_crit_measured_interval": knee and [knee.get("b_crit_lo"), knee.get("b_crit_hi")],
        "b_crit_ratio": prediction["b_crit"] / knee["b_crit"] if knee else None,
        "rule_fails_agree": sum(r["rule_fails_predicted"] == r["rule_fails_measured"] for r in table),
        "rule_fails_compared": len(table),
        "cost_ratio": {k: (c_p[k] / c_m[k] if c_m.get(k) else None) for k in ("samples", "cpu_rank_s", "wall_rank_s")},
        "measured_cost": c_m,
    }


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:+.0f}%"


def report_lines(c: dict) -> list[str]:
    """The comparison for report.md and the console."""
    lines = ["", f"## Predicted against measured ({c['measured_dir']})", "",
             "| batch size | steps predicted | steps measured | error | time predicted s | time measured s | error "
             "| lr predicted | best lr measured | rule fails (pred / meas) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---|"]
    f = lambda x, s: "—" if x is None else format(x, s)  # noqa: E731
    for r in c["per_batch"]:
        lines.append(f"| {r['batch_size']} | {f(r['steps_predicted'], '.0f')} | {f(r['steps_measured'], '.0f')} | "
                     f"{_pct(r['steps_error'])} | {f(r['time_predicted_s'], '.2f')} | {f(r['time_measured_s'], '.2f')} | "
                     f"{_pct(r['time_error'])} | {f(r['lr_predicted'], '.3g')} | {f(r['lr_measured'], '.3g')} | "
                     f"{'yes' if r['rule_fails_predicted'] else 'no'} / {'yes' if r['rule_fails_measured'] else 'no'} |")
    ratio = c["cost_ratio"]
    interval = c["b_crit_measured_interval"] or [None, None]
    lines += ["",
              f"- **Steps to target:** median absolute error {_pct(c['steps_median_abs_error'])} over the "
              f"{c['steps_compared']} batch sizes that reached the target.",
              f"- **Sweet spot:** predicted {c['sweet_spot_predicted']}, measured {c['sweet_spot_measured']}"
              + (f" ({abs(c['sweet_spot_log2_ratio']):.0f} power(s) of two apart)."
                 if c["sweet_spot_log2_ratio"] is not None else "."),
              f"- **B_crit:** predicted {c['b_crit_predicted']:.4g}, measured knee {f(c['b_crit_measured'], '.4g')}"
              + (f" (interval {f(interval[0], '.4g')}–{f(interval[1], '.4g')})" if interval[0] is not None else "")
              + (f": ratio {c['b_crit_ratio']:.2f}." if c["b_crit_ratio"] else "."),
              f"- **Failure under the rule:** predicted right at {c['rule_fails_agree']} of "
              f"{c['rule_fails_compared']} batch sizes.",
              "- **Cost of the probe / the measured sweep:** "
              + ", ".join(f"{k.replace('_', ' ')} {v:.1%}" for k, v in ratio.items() if v is not None) + ".", ""]
    return lines
