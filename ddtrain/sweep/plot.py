"""sweep.png: throughput, accuracy (or, tuned, the learning rates tried), steps to target and time to target.

Steps to target on log-log axes against perfect scaling, with the knee fit and its bootstrap band and
the regimes of Shallue et al. 2018; a tuned sweep draws its tuned curve and the lr_scaling rule's
curve together. Figure + Agg canvas, not pyplot: no global backend switch, nothing left open.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from ddtrain.fileio import atomic_open
from ddtrain.sweep import knee, timing as timing_mod, trials
from ddtrain.sweep.table import by_batch, is_tuned, mean, num, reached

OUTCOME_STYLE = {"reached": ("o", "tab:green"), "diverged": ("x", "tab:red"), "not_reached": ("v", "gray"),
                 "pruned": (".", "silver"), "oom": ("x", "black")}


def regimes(points: list[tuple[float, float]]) -> tuple[float | None, float | None]:
    """(last batch size still in perfect scaling, first batch size of maximal data parallelism).

    Perfect scaling: the measured steps stay within 20% of the perfect line (slope -1 through the smallest
    batch size). Maximal data parallelism: from the first batch size after which steps no longer fall by
    more than 10% per doubling. Diminishing returns lie in between.
    """
    if len(points) < 2:
        return None, None
    b0, s0 = points[0]
    last_perfect = b0
    for bs, steps in points[1:]:
        if steps > 1.2 * s0 * b0 / bs:
            break
        last_perfect = bs
    flat_from = None
    for (b1, s1), (b2, s2) in zip(points, points[1:]):
        if (s2 / s1) ** (1.0 / math.log2(b2 / b1)) > 0.9:
            flat_from = b1
            break
    return last_perfect, flat_from


def _setup_x(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    if sizes:
        ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
        ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
        ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def _no_data(ax, what):
    ax.text(0.5, 0.5, f"no {what}", transform=ax.transAxes, ha="center", va="center", color="gray")


def _bottom_marks(ax, xs, labels, color):
    tr = ax.get_xaxis_transform()  # x in data, y in axes coordinates
    ax.plot(xs, [0.05] * len(xs), "x", color=color, transform=tr, label=labels[0] if len(set(labels)) == 1 else None)
    for x, label in zip(xs, labels):
        ax.annotate(label, (x, 0.05), xycoords=tr, xytext=(0, 8), textcoords="offset points", ha="center",
                    fontsize="x-small", color=color)


def _throughput(ax, rows, timing, sizes):
    ax.set_title("throughput")
    ax.set_ylabel("samples/s")
    entries = (timing or {}).get("batch_sizes", {})
    timed = [(float(b), t) for b, e in entries.items() if (t := timing_mod.step_time(e)) is not None]
    if timed:
        timed.sort()
        xs = [b for b, _ in timed]
        ys = [b / t[0] for b, t in timed]
        err = [[y - b / t[2] for (b, t), y in zip(timed, ys)], [b / t[1] - y for (b, t), y in zip(timed, ys)]]
        ax.errorbar(xs, ys, yerr=err, fmt="o-", capsize=3, label="timed (min–max over rounds)")
    else:
        pts = [(float(b), m) for b, g in by_batch(rows).items() if (m := mean(r.get("samples_per_s") for r in g))]
        xs, ys = [b for b, _ in pts], [m for _, m in pts]
        if pts:
            ax.plot(xs, ys, "o-", label="measured")
    if xs:
        ideal = [s for s in sizes if xs[0] <= s <= xs[-1]]
        ax.plot(ideal, [ys[0] * s / xs[0] for s in ideal], "--", color="gray", label="linear scaling")
        ax.set_ylim(bottom=0)
    else:
        _no_data(ax, "throughput")
    oom = sorted({float(r["batch_size"]) for r in rows if r.get("status") == "oom"}
                 | {float(b) for b, e in entries.items() if e.get("status") == "oom"})
    if oom:
        _bottom_marks(ax, oom, ["OOM"] * len(oom), "red")
    if xs or oom:
        ax.legend(loc="upper left", fontsize="small")


def _accuracy(ax, rows):
    ax.set_title("accuracy")
    ax.set_ylabel("accuracy (mean, min-max over seeds)")
    drawn = False
    for key, label, fmt in (("best_val_accuracy", "best val", "o-"), ("test_accuracy", "test", "s--")):
        xs, ms, lo, hi = [], [], [], []
        for bs, g in by_batch(rows).items():
            vals = [v for r in g if (v := num(r.get(key))) is not None]
            if vals:
                m = sum(vals) / len(vals)
                xs.append(float(bs)), ms.append(m), lo.append(m - min(vals)), hi.append(max(vals) - m)
        if xs:
            ax.errorbar(xs, ms, yerr=[lo, hi], fmt=fmt, capsize=3, label=label)
            drawn = True
    ax.legend(loc="lower left", fontsize="small") if drawn else _no_data(ax, "accuracy")


def _learning_rates(ax, rows):
    ax.set_title("learning rates tried")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    seen = set()
    for bs, group in by_batch(rows).items():
        for r in group:
            if r.get("role") not in trials.SEARCH_ROLES or not num(r.get("lr")):
                continue
            outcome = ("reached" if trials.reached(r) else
                       {"diverged": "diverged", "pruned": "pruned", "oom": "oom"}.get(r.get("status"), "not_reached"))
            marker, color = OUTCOME_STYLE[outcome]
            ax.plot(float(bs), r["lr"], marker, color=color, label=None if outcome in seen else outcome)
            seen.add(outcome)
    best = [(float(b), t["lr"]) for b, g in by_batch(rows).items() if (t := trials.best_trial(g))]
    if best:
        ax.plot([b for b, _ in best], [lr for _, lr in best], "*-", color="tab:blue", markersize=11, label="best")
    rule = [(float(r["batch_size"]), r["lr"]) for r in trials.rule_rows(rows) if num(r.get("lr"))]
    if rule:
        ax.plot([b for b, _ in sorted(rule)], [lr for _, lr in sorted(rule)], "--", color="gray", label="rule")
    ax.legend(loc="upper left", fontsize="x-small") if seen else _no_data(ax, "trials")


def _steps(ax, rows, sizes):
    from ddtrain.sweep.report import curve_rows, knee_interval, predicted_knee, steps_by_batch

    ax.set_title("steps to target")
    ax.set_ylabel("steps to target (mean, min–max over seeds)")
    by = steps_by_batch(rows)
    points = [(b, statistics.fmean(v)) for b, v in sorted(by.items())]
    if not points:
        _no_data(ax, "batch size reached the target")
    else:
        ax.set_yscale("log")
        bx = [b for b, _ in points]
        label = "tuned" if is_tuned(rows) else "measured"
        ax.errorbar(bx, [s for _, s in points], yerr=[[s - min(by[b]) for b, s in points],
                                                     [max(by[b]) - s for b, s in points]], fmt="o-", capsize=3, label=label)
        rule = [(float(r["batch_size"]), float(r["steps_to_target"])) for r in trials.rule_rows(rows) if trials.reached(r)]
        if rule:
            ax.plot(*zip(*sorted(rule)), "s--", color="tab:orange", label="lr_scaling rule (no tuning)")
        b0, s0 = points[0]
        ideal = [s for s in sizes if b0 <= s <= bx[-1]]
        ax.plot(ideal, [s0 * b0 / s for s in ideal], "--", color="gray", label="perfect scaling")
        fit = knee_interval(rows)
        if fit is not None:
            ax.plot(ideal, [knee.model_steps(fit["s_min"], fit["b_crit"], s) for s in ideal], ":", color="black",
                    label=f"fit, B_crit={fit['b_crit']:.3g}")
            if fit.get("b_crit_lo") is not None:
                ax.axvspan(fit["b_crit_lo"], fit["b_crit_hi"], color="black", alpha=0.07,
                           label=f"B_crit {fit['level']:.0%} interval")
        pred = predicted_knee(rows)
        if pred is not None and sizes and min(sizes) / 1.5 <= pred <= max(sizes) * 1.5:
            ax.axvline(pred, color="purple", alpha=0.6, label=f"B_simple={pred:.3g}")
        last_perfect, flat_from = regimes(points)
        lo_x, hi_x = ax.get_xlim()
        if last_perfect is not None:
            after = [b for b in bx if b > last_perfect]
            edge1 = math.sqrt(last_perfect * after[0]) if after else hi_x
            edge2 = hi_x if flat_from is None else max(edge1, flat_from)
            for x1, x2, name, color in ((lo_x, edge1, "perfect scaling", "tab:green"),
                                        (edge1, edge2, "diminishing returns", "tab:orange"),
                                        (edge2, hi_x, "maximal data parallelism", "tab:red")):
                if x2 > x1:
                    ax.axvspan(x1, x2, color=color, alpha=0.06)
                    ax.text(x1 * 1.04, 0.97, name, transform=ax.get_xaxis_transform(), rotation=90, ha="left",
                            va="top", fontsize="x-small", color=color)
        ax.legend(loc="lower left", fontsize="x-small")
    missed = {float(bs): (sum(r.get("status") == "ok" and num(r.get("steps_to_target")) is not None for r in g), len(g))
              for bs, g in by_batch(curve_rows(rows)).items() if not reached(g)}
    if missed:
        _bottom_marks(ax, list(missed), ["not reached" if n == 0 else f"{n}/{k} reached" for n, k in missed.values()],
                      "gray")


def _time(ax, rows, timing):
    from ddtrain.sweep.report import sweet_spot, times

    ax.set_title("time to target (steps × step time)")
    ax.set_ylabel("seconds (min–max)")
    table = times(rows, timing)
    if not table:
        return _no_data(ax, "timed batch size reached the target")
    xs = sorted(table)
    ax.set_yscale("log")
    ax.errorbar(xs, [table[b][0] for b in xs], yerr=[[table[b][0] - table[b][1] for b in xs],
                                                     [table[b][2] - table[b][0] for b in xs]], fmt="o-", capsize=3)
    spot = sweet_spot(rows, timing)
    ax.plot([spot["batch_size"]], [spot["time_to_target_s"]], "*", color="gold", markersize=16, mec="black",
            label=f"sweet spot {spot['batch_size']:g}")
    ax.legend(loc="upper center", fontsize="small")


def plot(rows: list[dict], path, title: str | None = None, timing: dict | None = None) -> None:
    """Write sweep.png: throughput, accuracy or learning rates, steps to target (and time to target when timed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ddtrain.sweep.report import times

    sizes = [float(bs) for bs in by_batch(rows)]
    panels = 4 if times(rows, timing) else 3
    fig = Figure(figsize=(5.4 * panels, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    if title:
        fig.suptitle(title)
    for ax in axes:
        _setup_x(ax, sizes)
    _throughput(axes[0], rows, timing, sizes)
    (_learning_rates if is_tuned(rows) else _accuracy)(axes[1], rows)
    _steps(axes[2], rows, sizes)
    if panels == 4:
        _time(axes[3], rows, timing)
    with atomic_open(Path(path), "wb") as f:  # same atomicity as the tables
        fig.savefig(f, format="png", dpi=110)
