"""The findings bullets of report.md: sweet spot, what cannot be told apart, knee, noise scale, the rule's misses."""

from __future__ import annotations

import math
import statistics

from ddtrain.sweep import trials
from ddtrain.sweep.table import by_batch, is_tuned, mean


def _sizes(values) -> str:
    return ", ".join(f"{float(b):g}" for b in values)


def _spot_lines(rows, timing, target, target_metric) -> list[str]:
    from ddtrain.sweep.report import reach, sweet_spot

    spot, sign = sweet_spot(rows, timing), reach(target_metric)
    if spot is None:
        return [f"- **Sweet spot:** none — no batch size reached {target_metric} {sign} {target:g} on every seed."]
    line = (f"- **Sweet spot:** batch size {spot['batch_size']:g} reaches {target_metric} {sign} {target:g} "
            f"in {spot['time_to_target_s']:.3g} s on average")
    if "time_lo_s" not in spot:
        return [line + f" ({spot['seeds']} seed(s), {spot['steps_to_target']:.0f} steps)."]
    line += (f" ({spot['time_lo_s']:.3g}–{spot['time_hi_s']:.3g} s; {spot['seeds']} seed(s), "
             f"{spot['steps_to_target']:.0f} steps × the timed step time).")
    if spot["tied"]:
        line += f" It cannot be told apart from batch size(s) {_sizes(spot['tied'])}: their intervals overlap."
    out = [line]
    if spot["indistinct"]:
        pairs = ", ".join(f"{a:g}/{b:g}" for a, b in spot["indistinct"])
        out.append(f"- **Neighbours that cannot be told apart** (time-to-target intervals overlap): {pairs}.")
    else:
        out.append("- **Neighbours:** every pair of neighbouring batch sizes is told apart (no intervals overlap).")
    return out


def _knee_lines(rows) -> list[str]:
    from ddtrain.sweep.report import knee_interval, noise_at_target, predicted_knee, steps_by_batch

    pred, fit = predicted_knee(rows), knee_interval(rows)
    meas = None if fit is None else fit["b_crit"]
    pred_txt = "n/a (no noise-scale estimate from a run that trained to the end)" if pred is None else f"{pred:.4g}"
    meas_txt = ("n/a (needs 3+ batch sizes that reached the target and a fit with S_min, B_crit > 0)"
                if meas is None else f"{meas:.4g}")
    if fit is not None and fit.get("b_crit_lo") is not None:
        meas_txt += (f" ({fit['level']:.0%} bootstrap interval over seeds {fit['b_crit_lo']:.4g}–{fit['b_crit_hi']:.4g}; "
                     f"S_min {fit['s_min']:.0f} ({fit['s_min_lo']:.0f}–{fit['s_min_hi']:.0f}))")
    elif fit is not None:
        meas_txt += f" (S_min {fit['s_min']:.0f}; one seed: no interval)"
    where = ("tuned, non-diverged points only: " if is_tuned(rows) else "") + f"{len(steps_by_batch(rows))} batch sizes"
    out = [f"- **Critical batch size:** predicted {pred_txt} (gradient noise scale B_simple, median over "
           f"runs that trained to the end; McCandlish et al. 2018); measured knee {meas_txt} (least-squares fit of "
           f"steps = S_min·(1 + B_crit/B) to steps to target; {where})."]
    if pred is not None and meas is not None:
        out.append(f"- **Measured / predicted:** {meas / pred:.2f}.")
    at_target = noise_at_target(rows)
    if at_target is not None:
        ratio = f"; measured knee / B_simple at target {meas / at_target:.2f}" if meas else ""
        out.append(f"- **B_simple at the target** (at the evaluation that first reached it, median): "
                   f"{at_target:.4g}{ratio}.")
    return out


def _tuned_lines(rows) -> list[str]:
    from ddtrain.sweep.report import steps_by_batch

    out = []
    curve = {b: statistics.fmean(v) for b, v in steps_by_batch(rows).items()}
    sizes = sorted(curve)
    if len(sizes) >= 2:
        ratios = ", ".join(f"{a:g}→{b:g} ×{(curve[b] / curve[a]) ** (1 / math.log2(b / a)):.2f}"
                           for a, b in zip(sizes, sizes[1:]))
        out.append(f"- **Steps to target per doubling of the batch** (tuned; 0.5 is perfect scaling, 1 no gain): "
                   f"{ratios}.")
    misses, slower = [], []
    for b, group in by_batch(rows).items():
        rule = trials.rule_rows(group)
        best = trials.best_trial(group)
        if not rule or rule[0].get("status") == "oom":
            continue
        if not trials.reached(rule[0]):
            misses.append(f"{b:g} ({rule[0].get('status')})")
        elif best is not None and rule[0]["steps_to_target"] > 1.5 * best["steps_to_target"]:
            slower.append(f"{b:g} (×{rule[0]['steps_to_target'] / best['steps_to_target']:.1f})")
    out.append("- **Under the lr_scaling rule** (the rule's trial of each batch size): "
               + (f"fails at {', '.join(misses)}" if misses else "no batch size fails")
               + (f"; more than 1.5× the tuned steps at {', '.join(slower)}" if slower else "") + ".")
    best_lrs = [(b, trials.best_trial(g)) for b, g in by_batch(rows).items()]
    found = [f"{b:g}: {t['lr']:.3g}" for b, t in best_lrs if t is not None]
    if found:
        out.append(f"- **Best learning rate per batch size:** {', '.join(found)}.")
    return out


def findings(rows, timing, target: float, target_metric: str) -> list[str]:
    """The bullet lines under '## Findings'."""
    from ddtrain.sweep.report import largest_within_accuracy

    lines = _spot_lines(rows, timing, target, target_metric)
    if not is_tuned(rows):
        largest = largest_within_accuracy(rows)
        if largest is not None:
            accs = {bs: mean(r.get("best_val_accuracy") for r in g) for bs, g in by_batch(rows).items()}
            best_bs = max((bs for bs in accs if accs[bs] is not None), key=lambda bs: accs[bs])
            lines.append(f"- **Largest batch within 1 point of the best accuracy:** {largest:g} "
                         f"(best val accuracy {accs[largest]:.4f}; the best is {accs[best_bs]:.4f} at batch size "
                         f"{best_bs:g}).")
        else:
            lines.append("- **Largest batch within 1 point of the best accuracy:** none — no accuracy was measured.")
    lines += _knee_lines(rows)
    if is_tuned(rows):
        lines += _tuned_lines(rows)
    return lines
