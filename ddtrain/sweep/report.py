"""A batch-size sweep's findings: the summary numbers and report.md (tables: table.py, plot: plot.py).

The summary numbers:
- sweet_spot: the batch size that reaches the target soonest (mean over seeds); with a timing pass,
  time = steps to target x step time with an interval, and the batch sizes it cannot be told from,
- largest_within_accuracy: the largest batch size that loses at most one point of accuracy,
- measured_knee: the critical batch size fitted to steps to target (knee.py), with a bootstrap interval,
- predicted_knee: the gradient noise scale B_simple (McCandlish et al. 2018) measured during the runs.
A tuned sweep (trials.py) reads all of these from its tuned setting per batch size.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from ddtrain.sweep import knee, timing as timing_mod, trials
from ddtrain.sweep.plot import plot  # noqa: F401  (re-exported: report.plot writes sweep.png)
from ddtrain.sweep.table import (COLUMNS, by_batch, cost, is_tuned, mean, num, reached, read_rows,  # noqa: F401
                                 write_table, write_text_atomic)

_REL_TIE = 1e-9


def curve_rows(rows) -> list[dict]:
    """The rows that make the steps-to-target curve: every row, or a tuned sweep's tuned setting per batch size."""
    return trials.tuned_rows(rows) if is_tuned(rows) else list(rows)


def steps_by_batch(rows) -> dict:
    """{batch size: [steps to target per seed]} for batch sizes where every seed reached the target."""
    return {float(b): [float(r["steps_to_target"]) for r in g] for b, g in by_batch(curve_rows(rows)).items()
            if reached(g) and all(num(r["steps_to_target"]) > 0 for r in g)}


def times(rows, timing: dict | None) -> dict:
    """{batch size: (T, lo, hi)}: steps to target (mean, min..max over seeds) x timed step time (median, min..max)."""
    out = {}
    for b, steps in steps_by_batch(rows).items():
        t = timing_mod.step_time((timing or {}).get("batch_sizes", {}).get(str(int(b))))
        if t is not None:
            out[b] = timing_mod.time_to_target((statistics.fmean(steps), min(steps), max(steps)), t)
    return out


def sweet_spot(rows: list[dict], timing: dict | None = None) -> dict | None:
    """The batch size with the smallest time to target over seeds that all reached it (ties: smaller batch).

    With a timing pass: T = steps x step time with its interval, and `tied`, the batch sizes whose
    interval overlaps the sweet spot's. Without: the mean measured time_to_target_s of the points.
    """
    table = times(rows, timing)
    if table:
        found = timing_mod.fastest(table)
        b = found["batch_size"]
        steps = steps_by_batch(rows)[b]
        return {"batch_size": b, "time_to_target_s": found["time"][0], "time_lo_s": found["time"][1],
                "time_hi_s": found["time"][2], "tied": found["tied"], "indistinct": found["indistinct"],
                "steps_to_target": statistics.fmean(steps), "seeds": len(steps)}
    best = None
    for bs, group in by_batch(curve_rows(rows)).items():
        if not reached(group):
            continue
        mean_t = mean(r["time_to_target_s"] for r in group)
        # ascending batch order + strict improvement beyond a relative tolerance: ties stay with the smaller batch
        if best is None or mean_t < best["time_to_target_s"] - _REL_TIE * max(abs(mean_t), abs(best["time_to_target_s"])):
            best = {"batch_size": bs, "time_to_target_s": mean_t,
                    "steps_to_target": mean(r["steps_to_target"] for r in group), "seeds": len(group)}
    return best


def largest_within_accuracy(rows: list[dict], points: float = 0.01):
    """The largest batch size whose mean best_val_accuracy is within `points` (absolute) of the best mean."""
    means = {bs: m for bs, group in by_batch(rows).items()
             if (m := mean(r.get("best_val_accuracy") for r in group)) is not None}
    if not means:
        return None
    top = max(means.values())
    return max((bs for bs, m in means.items() if m >= top - points - 1e-12), key=float)


def fit_knee(rows: list[dict]) -> tuple[float, float] | None:
    """(S_min, B_crit) of steps(B) = S_min * (1 + B_crit / B) fitted to the mean steps to target per batch size."""
    return knee.fit_knee((b, statistics.fmean(v)) for b, v in steps_by_batch(rows).items())


def measured_knee(rows: list[dict]) -> float | None:
    """B_crit fitted to steps-to-target (Shallue et al. 2018 / McCandlish et al. 2018 model); None if unfit."""
    fit = fit_knee(rows)
    return None if fit is None else fit[1]


def knee_interval(rows: list[dict]) -> dict | None:
    """The knee with its bootstrap interval over seeds (knee.bootstrap_knee)."""
    return knee.bootstrap_knee(steps_by_batch(rows))


def predicted_knee(rows: list[dict]) -> float | None:
    """Median gradient noise scale B_simple over runs that trained to the end: the predicted critical batch.

    B_simple (McCandlish et al. 2018) describes the gradient, not the target, so runs that missed the
    target count too; out-of-memory and diverged runs do not.
    """
    values = [v for r in curve_rows(rows) if r.get("status") in ("ok", "target_not_reached")
              and (v := num(r.get("noise_scale"))) is not None]
    median = statistics.median(values) if values else None
    return median if median is not None and median > 0 else None


def noise_at_target(rows: list[dict]) -> float | None:
    """Median B_simple at the evaluation that first reached the target, over the points that reached it."""
    values = [v for r in curve_rows(rows) if (v := num(r.get("noise_scale_at_target"))) is not None and v > 0]
    return statistics.median(values) if values else None


def reach(target_metric: str) -> str:
    """How the metric reaches its target: a loss falls to it, an accuracy rises to it."""
    return "≤" if target_metric.endswith("loss") else "≥"


def _fmt(value, spec: str) -> str:
    x = num(value)
    return "—" if x is None else format(x, spec)


def _distinct(group, key, spec: str) -> str:
    """The value shared by all seeds, or the distinct values joined by '/' (lr and batch layout are per batch)."""
    vals = sorted({x for r in group if (x := num(r.get(key))) is not None})
    return "—" if not vals else "/".join(format(v, spec) for v in vals)


def _interval(t) -> str:
    return "—" if t is None else f"{t[0]:.2f} ({t[1]:.2f}–{t[2]:.2f})"


def cost_line(c: dict) -> str:
    """One line of what a sweep or probe cost, in the units the issue compares (samples and rank-seconds)."""
    samples = "samples not recorded" if c["samples"] is None else f"{c['samples']:,} training samples processed"
    cpu = "CPU time not recorded" if c["cpu_rank_s"] is None else f"{c['cpu_rank_s']:,.0f} CPU rank-seconds"
    wall = (f"{c['wall_s']:,.0f} wall seconds" if c["wall_rank_s"] is None
            else f"{c['wall_rank_s']:,.0f} wall rank-seconds")
    return f"{samples}, {cpu}, {wall} ({c['points']} runs + {c['timing_runs']} timing runs)"


def _table(rows, timing) -> list[str]:
    tuned = is_tuned(rows)
    spot, t_of = sweet_spot(rows, timing), times(rows, timing)
    header = ["batch size", "seeds", "lr", "per-rank batch", "accum", "samples/s", "step time ms",
              "steps to target", "time to target s", "best val acc", "test acc", "noise scale",
              "B_simple at target", "status"]
    if tuned:  # trials stop at the target: their final accuracies say nothing, their learning rates do
        del header[9:11]
        header[2:5] = ["best lr (× rule)", "trials: reached/diverged/missed/pruned", "min over trials",
                       "rule's steps"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if h != "status" else ":---" for h in header) + "|"]
    all_groups = by_batch(rows)
    for bs, group in by_batch(curve_rows(rows)).items():
        ok = [r for r in group if r.get("status") == "ok" and num(r.get("steps_to_target")) is not None]
        partial = "" if len(ok) == len(group) or not ok else f" ({len(ok)}/{len(group)})"
        is_spot = spot is not None and bs == spot["batch_size"]
        steps = [r["steps_to_target"] for r in ok]
        steps_txt = _fmt(mean(steps), ".0f") + (f" ({min(steps):.0f}–{max(steps):.0f})" if len(steps) > 1 else "")
        entry = timing_mod.step_time((timing or {}).get("batch_sizes", {}).get(str(int(bs))))
        t_txt = (_interval(t_of[float(bs)]) if float(bs) in t_of
                 else _fmt(mean(r.get("time_to_target_s") for r in ok), ".1f") + partial)
        cells = [f"**{bs:g}**" if is_spot else f"{bs:g}", str(len(group)), _distinct(group, "lr", ".4g"),
                 _distinct(group, "per_rank_batch_size", "g"), _distinct(group, "grad_accum_steps", "g"),
                 _fmt(mean(r.get("samples_per_s") for r in group), ",.0f"),
                 _fmt(1000 * entry[0], ".2f") if entry else _fmt(mean(r.get("step_time_ms_median") for r in group), ".1f"),
                 steps_txt + partial, t_txt, _fmt(mean(r.get("best_val_accuracy") for r in group), ".4f"),
                 _fmt(mean(r.get("test_accuracy") for r in group), ".4f"),
                 _fmt(mean(r.get("noise_scale") for r in group), ".4g"),
                 _fmt(mean(r.get("noise_scale_at_target") for r in group), ".4g"),
                 "/".join(sorted({str(r.get("status")) for r in group})) + (" ← sweet spot" if is_spot else "")]
        if tuned:
            del cells[9:11]
            everything = all_groups[bs]
            c = trials.trial_counts(everything)
            best = trials.best_trial(everything)
            rule = trials.rule_rows(everything)
            cells[2:5] = [f"{best['lr']:.4g} (×{best['lr_factor']:.3g})" if best else "—",
                          f"{c['reached']}/{c['diverged']}/{c['not_reached']}/{c['pruned']}",
                          _fmt(best["steps_to_target"], ".0f") if best else "—",
                          (_fmt(rule[0].get("steps_to_target"), ".0f") if rule and trials.reached(rule[0])
                           else (rule[0].get("status", "—") if rule else "—"))]
        lines.append("| " + " | ".join(cells) + " |")
    if len(lines) == 2:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")
    return lines


def write_report(rows: list[dict], sweep_dir, title: str, target: float, target_metric: str,
                 timing: dict | None = None, world_size: int | None = None) -> str:
    """Write sweep_dir/report.md (per-batch table, findings, cost, link to sweep.png) and return its text."""
    from ddtrain.sweep.findings import findings

    tuned = is_tuned(rows)
    intro = (f"Target: {target_metric} {reach(target_metric)} {target:g}. One row per global batch size, means over seeds; "
             "steps/time to target average the seeds that reached it (shown as reached/seeds when not all did).")
    if tuned:
        intro += (" Tuned sweep: per batch size a learning-rate search on the first seed (min over trials of the "
                  "first evaluation reaching the target; diverged, missed and pruned trials counted), the best "
                  "setting repeated on the other seeds.")
    if times(rows, timing):
        intro += (f" Time to target = steps to target × step time, the step time timed in {timing['rounds']} "
                  "interleaved rounds: median (min–max over rounds, times min–max steps over seeds).")
    lines = [f"# {title}", "", intro, "", *_table(rows, timing), "", "## Findings", ""]
    lines += findings(rows, timing, target, target_metric)
    lines.append(f"- **Cost of this sweep:** {cost_line(cost(rows, timing, world_size))}.")
    lines += ["", "![Batch-size sweep: throughput, accuracy, steps to target](sweep.png)", ""]
    text = "\n".join(lines)
    write_text_atomic(Path(sweep_dir) / "report.md", text)
    return text
