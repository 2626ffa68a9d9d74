"""A batch-size sweep's artefacts: sweep.csv/sweep.json, the summary numbers, sweep.png and report.md.

Everything works from a list of row dicts, one per (batch_size, seed), and tolerates missing values: an oom
row has no accuracy, a target_not_reached row no steps_to_target, a sweep may have one batch size only.

The summary numbers:
- sweet_spot: the batch size that reaches the target soonest in wall-clock time (mean over seeds),
- largest_within_accuracy: the largest batch size that loses at most one point of accuracy,
- measured_knee: the critical batch size fitted to the measured steps-to-target curve,
- predicted_knee: the critical batch size predicted by the gradient noise scale B_simple (McCandlish et al.
  2018), measured during the runs (ddtrain.noise).
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path

from ddtrain.errors import UserError
from ddtrain.fileio import atomic_open

COLUMNS = [
    "batch_size", "seed", "per_rank_batch_size", "grad_accum_steps", "lr", "lr_scaling", "samples_per_s",
    "step_time_ms_median", "steps", "epochs", "steps_to_target", "epochs_to_target", "time_to_target_s",
    "best_val_accuracy", "final_val_accuracy", "test_accuracy", "final_train_loss", "peak_memory_bytes",
    "noise_scale", "status", "wall_s",
]

_REL_TIE = 1e-9


# --- small helpers -----------------------------------------------------------------------------------------

def _num(value) -> float | None:
    """A finite float, or None for None, NaN, inf, booleans and non-numbers."""
    if value is None or isinstance(value, bool):
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _mean(values) -> float | None:
    xs = [x for x in (_num(v) for v in values) if x is not None]
    return sum(xs) / len(xs) if xs else None


def _by_batch(rows) -> dict:
    """{batch_size: [rows]} in ascending batch size; rows without a batch size are ignored."""
    groups: dict = {}
    for row in rows:
        bs = row.get("batch_size")
        if _num(bs) is not None:
            groups.setdefault(bs, []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: float(kv[0])))


def _reached(group) -> bool:
    """Every seed of this batch size reached the target (a batch size is only as good as its worst seed)."""
    return bool(group) and all(r.get("status") == "ok" and _num(r.get("time_to_target_s")) is not None
                               and _num(r.get("steps_to_target")) is not None for r in group)


def _clean(value):
    """JSON/CSV-safe value: non-finite floats become None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w", newline="") as f:
        f.write(text)


# --- sweep.csv / sweep.json ----------------------------------------------------------------------------------

def write_table(rows: list[dict], sweep_dir) -> None:
    """Write sweep.csv (fixed column order, None as an empty cell) and sweep.json, both atomically."""
    sweep_dir = Path(sweep_dir)
    rows = [{k: _clean(v) for k, v in row.items()} for row in rows]
    # keys outside the fixed set are kept (after the fixed columns) rather than silently dropped
    extra = sorted({k for row in rows for k in row} - set(COLUMNS))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS + extra)
    for row in rows:
        writer.writerow(["" if row.get(k) is None else row[k] for k in COLUMNS + extra])
    _write_atomic(sweep_dir / "sweep.csv", buf.getvalue())
    _write_atomic(sweep_dir / "sweep.json", json.dumps(rows, indent=2, allow_nan=False) + "\n")


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


# --- summary numbers -----------------------------------------------------------------------------------------

def sweet_spot(rows: list[dict]) -> dict | None:
    """The batch size with the smallest mean time to target over seeds that all reached it (ties: smaller batch)."""
    best = None
    for bs, group in _by_batch(rows).items():
        if not _reached(group):
            continue
        mean_t = _mean(r["time_to_target_s"] for r in group)
        # ascending batch order + strict improvement beyond a relative tolerance: ties stay with the smaller batch
        if best is None or mean_t < best["time_to_target_s"] - _REL_TIE * max(abs(mean_t), abs(best["time_to_target_s"])):
            best = {"batch_size": bs, "time_to_target_s": mean_t,
                    "steps_to_target": _mean(r["steps_to_target"] for r in group), "seeds": len(group)}
    return best


def largest_within_accuracy(rows: list[dict], points: float = 0.01):
    """The largest batch size whose mean best_val_accuracy is within `points` (absolute) of the best mean."""
    means = {bs: m for bs, group in _by_batch(rows).items()
             if (m := _mean(r.get("best_val_accuracy") for r in group)) is not None}
    if not means:
        return None
    top = max(means.values())
    return max((bs for bs, m in means.items() if m >= top - points - 1e-12), key=float)


def _steps_curve(rows) -> list[tuple[float, float]]:
    """(batch size, mean steps to target) for batch sizes where every seed reached the target."""
    points = [(float(bs), _mean(r["steps_to_target"] for r in group))
              for bs, group in _by_batch(rows).items() if _reached(group)]
    return [(bs, steps) for bs, steps in points if steps > 0]  # log axes and 1/steps^2 weights need steps > 0


def fit_knee(rows: list[dict]) -> tuple[float, float] | None:
    """(S_min, B_crit) of steps(B) = S_min * (1 + B_crit / B) fitted to the measured steps to target."""
    points = _steps_curve(rows)
    if len(points) < 3:
        return None
    # The model is linear in 1/B: steps = a + c / B with a = S_min, c = S_min * B_crit. Least squares on
    # RELATIVE residuals (weights 1/steps^2): steps span orders of magnitude across a sweep, and plain least
    # squares would let the smallest batch sizes (most steps) decide the fit alone.
    xs = [1.0 / bs for bs, _ in points]
    ys = [s for _, s in points]
    ws = [1.0 / (s * s) for s in ys]
    sw = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs)) / sw
    my = sum(w * y for w, y in zip(ws, ys)) / sw
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs))
    if sxx <= 0:
        return None
    c = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys)) / sxx
    a = my - c * mx
    if a <= 0 or c <= 0:  # steps growing with batch size, or no floor: the model does not describe the data
        return None
    return a, c / a


def measured_knee(rows: list[dict]) -> float | None:
    """B_crit fitted to steps-to-target (Shallue et al. 2018 / McCandlish et al. 2018 model); None if unfit."""
    fit = fit_knee(rows)
    return None if fit is None else fit[1]


def predicted_knee(rows: list[dict]) -> float | None:
    """Median gradient noise scale B_simple over runs that trained to the end: the predicted critical batch.

    B_simple (McCandlish et al. 2018) describes the gradient, not the target, so runs that missed the
    target count too; out-of-memory and diverged runs do not.
    """
    values = [v for r in rows if r.get("status") in ("ok", "target_not_reached")
              and (v := _num(r.get("noise_scale"))) is not None]
    if not values:
        return None
    median = statistics.median(values)
    return median if median > 0 else None


# --- sweep.png -----------------------------------------------------------------------------------------------

def _regimes(points: list[tuple[float, float]]) -> tuple[float | None, float | None]:
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
        per_doubling = (s2 / s1) ** (1.0 / math.log2(b2 / b1))
        if per_doubling > 0.9:
            flat_from = b1
            break
    return last_perfect, flat_from


def plot(rows: list[dict], path, title: str | None = None) -> None:
    """Write sweep.png: throughput, accuracy and steps-to-target against batch size (log2 axis)."""
    # Figure + Agg canvas, not pyplot: no global backend switch, nothing left open in a long-lived process
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = _by_batch(rows)
    sizes = [float(bs) for bs in groups]
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_tp, ax_acc, ax_steps = fig.subplots(1, 3)
    if title:
        fig.suptitle(title)

    def setup_x(ax):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("global batch size")
        if sizes:
            ax.set_xlim(min(sizes) / 1.5, max(sizes) * 1.5)
            ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
            ax.minorticks_off()
        ax.grid(True, alpha=0.3)

    def no_data(ax, what):
        ax.text(0.5, 0.5, f"no {what}", transform=ax.transAxes, ha="center", va="center", color="gray")

    # (1) throughput with the ideal linear-scaling line through the smallest batch size
    tp = [(float(bs), m) for bs, g in groups.items() if (m := _mean(r.get("samples_per_s") for r in g)) is not None]
    setup_x(ax_tp)
    ax_tp.set_title("throughput")
    ax_tp.set_ylabel("samples/s (mean over seeds)")
    if tp:
        ax_tp.plot([b for b, _ in tp], [t for _, t in tp], "o-", label="measured")
        b0, t0 = tp[0]
        # only over the measured range: extended to OOM batch sizes it would squash the measured curve
        ideal_x = [s for s in sizes if b0 <= s <= tp[-1][0]]
        ax_tp.plot(ideal_x, [t0 * s / b0 for s in ideal_x], "--", color="gray", label="linear scaling")
        ax_tp.set_ylim(bottom=0)
    else:
        no_data(ax_tp, "throughput")
    oom = sorted({float(r["batch_size"]) for r in rows if r.get("status") == "oom" and _num(r.get("batch_size"))})
    if oom:
        # OOM rows have no throughput: mark them at the bottom of the panel (x in data, y in axes coordinates)
        tr = ax_tp.get_xaxis_transform()
        ax_tp.plot(oom, [0.05] * len(oom), "x", color="red", markersize=10, mew=2, transform=tr, label="OOM")
        for b in oom:
            ax_tp.annotate("OOM", (b, 0.05), xycoords=tr, xytext=(0, 8), textcoords="offset points",
                           ha="center", color="red")
    if tp or oom:
        ax_tp.legend(loc="upper left", fontsize="small")

    # (2) accuracy: mean with the min-max spread over seeds
    setup_x(ax_acc)
    ax_acc.set_title("accuracy")
    ax_acc.set_ylabel("accuracy (mean, min-max over seeds)")
    drawn = False
    for key, label, fmt in (("best_val_accuracy", "best val", "o-"), ("test_accuracy", "test", "s--")):
        xs, ms, lo, hi = [], [], [], []
        for bs, g in groups.items():
            vals = [v for r in g if (v := _num(r.get(key))) is not None]
            if vals:
                m = sum(vals) / len(vals)
                xs.append(float(bs)), ms.append(m), lo.append(m - min(vals)), hi.append(max(vals) - m)
        if xs:
            ax_acc.errorbar(xs, ms, yerr=[lo, hi], fmt=fmt, capsize=3, label=label)
            drawn = True
    if drawn:
        ax_acc.legend(loc="lower left", fontsize="small")
    else:
        no_data(ax_acc, "accuracy")

    # (3) steps to target, log-log, against perfect scaling, with Shallue et al.'s three regimes
    setup_x(ax_steps)
    ax_steps.set_title("steps to target")
    ax_steps.set_ylabel("steps to target (mean over seeds)")
    points = _steps_curve(rows)
    missed = {float(bs): (sum(r.get("status") == "ok" and _num(r.get("steps_to_target")) is not None for r in g),
                          len(g))
              for bs, g in groups.items() if not _reached(g)}
    if points:
        ax_steps.set_yscale("log")
        bx, sy = [b for b, _ in points], [s for _, s in points]
        ax_steps.plot(bx, sy, "o-", label="measured")
        b0, s0 = points[0]
        ideal_x = [s for s in sizes if b0 <= s <= bx[-1]]
        ax_steps.plot(ideal_x, [s0 * b0 / s for s in ideal_x], "--", color="gray", label="perfect scaling")
        fit = fit_knee(rows)
        if fit is not None:
            s_min, b_crit = fit
            ax_steps.plot(ideal_x, [s_min * (1 + b_crit / s) for s in ideal_x], ":", color="black",
                          label=f"fit, B_crit={b_crit:.3g}")
        pred = predicted_knee(rows)
        if pred is not None and sizes and min(sizes) / 1.5 <= pred <= max(sizes) * 1.5:
            ax_steps.axvline(pred, color="purple", alpha=0.6, label=f"B_simple={pred:.3g}")
        last_perfect, flat_from = _regimes(points)
        lo_x, hi_x = ax_steps.get_xlim()
        if last_perfect is not None:
            # region boundaries sit half-way (geometrically) between measured batch sizes
            after = [b for b in bx if b > last_perfect]
            edge1 = math.sqrt(last_perfect * after[0]) if after else hi_x
            edge2 = hi_x if flat_from is None else max(edge1, flat_from)
            spans = [(lo_x, edge1, "perfect scaling", "tab:green"),
                     (edge1, edge2, "diminishing returns", "tab:orange"),
                     (edge2, hi_x, "maximal data parallelism", "tab:red")]
            for x1, x2, name, color in spans:
                if x2 > x1:
                    ax_steps.axvspan(x1, x2, color=color, alpha=0.08)
                    # vertical labels at each region's left edge: narrow regions cannot clip or overlap them
                    ax_steps.text(x1 * 1.04, 0.97, name, transform=ax_steps.get_xaxis_transform(), rotation=90,
                                  ha="left", va="top", fontsize="x-small", color=color)
        ax_steps.legend(loc="lower left", fontsize="small")
    else:
        no_data(ax_steps, "batch size reached the target")
    if missed:
        tr = ax_steps.get_xaxis_transform()
        ax_steps.plot(list(missed), [0.05] * len(missed), "x", color="gray", transform=tr)
        for b, (n_reached, n_seeds) in missed.items():
            label = "not reached" if n_reached == 0 else f"{n_reached}/{n_seeds} reached"
            ax_steps.annotate(label, (b, 0.05), xycoords=tr, xytext=(0, 8), textcoords="offset points",
                              ha="center", fontsize="x-small", color="gray")

    path = Path(path)
    with atomic_open(path, "wb") as f:  # same atomicity as the tables
        fig.savefig(f, format="png", dpi=110)


# --- report.md -----------------------------------------------------------------------------------------------

def _fmt(value, spec: str) -> str:
    x = _num(value)
    return "—" if x is None else format(x, spec)


def _distinct(group, key, spec: str) -> str:
    """The value shared by all seeds, or the distinct values joined by '/' (lr and batch layout are per batch)."""
    vals = sorted({x for r in group if (x := _num(r.get(key))) is not None})
    return "—" if not vals else "/".join(format(v, spec) for v in vals)


def _reach(target_metric: str) -> str:
    """How the metric reaches its target: a loss falls to it, an accuracy rises to it."""
    return "≤" if target_metric.endswith("loss") else "≥"


def write_report(rows: list[dict], sweep_dir, title: str, target: float, target_metric: str) -> str:
    """Write sweep_dir/report.md (per-batch table, findings, link to sweep.png) and return its text."""
    groups = _by_batch(rows)
    spot = sweet_spot(rows)
    lines = [f"# {title}", "",
             f"Target: {target_metric} {_reach(target_metric)} {target:g}. One row per global batch size, "
             "means over seeds; "
             f"steps/time to target average the seeds that reached it (shown as reached/seeds when not all did).",
             ""]
    header = ["batch size", "seeds", "lr", "per-rank batch", "accum", "samples/s", "step time ms",
              "steps to target", "time to target s", "best val acc", "test acc", "noise scale", "status"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---:" if h != "status" else ":---" for h in header) + "|")
    for bs, group in groups.items():
        reached = [r for r in group if r.get("status") == "ok" and _num(r.get("steps_to_target")) is not None]
        partial = "" if len(reached) == len(group) or not reached else f" ({len(reached)}/{len(group)})"
        is_spot = spot is not None and bs == spot["batch_size"]
        statuses = "/".join(sorted({str(r.get("status")) for r in group}))
        cells = [
            f"**{bs:g}**" if is_spot else f"{bs:g}",
            str(len(group)),
            _distinct(group, "lr", ".4g"),
            _distinct(group, "per_rank_batch_size", "g"),
            _distinct(group, "grad_accum_steps", "g"),
            _fmt(_mean(r.get("samples_per_s") for r in group), ",.0f"),
            _fmt(_mean(r.get("step_time_ms_median") for r in group), ".1f"),
            _fmt(_mean(r.get("steps_to_target") for r in reached), ".0f") + partial,
            _fmt(_mean(r.get("time_to_target_s") for r in reached), ".1f") + partial,
            _fmt(_mean(r.get("best_val_accuracy") for r in group), ".4f"),
            _fmt(_mean(r.get("test_accuracy") for r in group), ".4f"),
            _fmt(_mean(r.get("noise_scale") for r in group), ".4g"),
            statuses + (" ← sweet spot" if is_spot else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not groups:
        lines.append("| " + " | ".join(["—"] * len(header)) + " |")

    lines += ["", "## Findings", ""]
    if spot is not None:
        lines.append(f"- **Sweet spot:** batch size {spot['batch_size']:g} reaches {target_metric} {_reach(target_metric)} {target:g} "
                     f"in {spot['time_to_target_s']:.1f} s on average ({spot['seeds']} seed(s), "
                     f"{spot['steps_to_target']:.0f} steps).")
    else:
        lines.append(f"- **Sweet spot:** none — no batch size reached {target_metric} {_reach(target_metric)} {target:g} on every seed.")
    largest = largest_within_accuracy(rows)
    if largest is not None:
        accs = {bs: _mean(r.get("best_val_accuracy") for r in g) for bs, g in groups.items()}
        best_bs = max((bs for bs in accs if accs[bs] is not None), key=lambda bs: accs[bs])
        lines.append(f"- **Largest batch within 1 point of the best accuracy:** {largest:g} "
                     f"(best val accuracy {accs[largest]:.4f}; the best is {accs[best_bs]:.4f} at batch size "
                     f"{best_bs:g}).")
    else:
        lines.append("- **Largest batch within 1 point of the best accuracy:** none — no accuracy was measured.")
    pred, meas = predicted_knee(rows), measured_knee(rows)
    pred_txt = "n/a (no noise-scale estimate from a run that trained to the end)" if pred is None else f"{pred:.4g}"
    meas_txt = ("n/a (needs 3+ batch sizes that reached the target and a fit with S_min, B_crit > 0)"
                if meas is None else f"{meas:.4g}")
    lines.append(f"- **Critical batch size:** predicted {pred_txt} (gradient noise scale B_simple, median over "
                 f"runs that trained to the end; McCandlish et al. 2018); measured knee {meas_txt} (least-squares fit of "
                 f"steps = S_min·(1 + B_crit/B) to steps to target).")
    if pred is not None and meas is not None:
        lines.append(f"- **Measured / predicted:** {meas / pred:.2f}.")
    lines += ["", "![Batch-size sweep: throughput, accuracy, steps to target](sweep.png)", ""]
    text = "\n".join(lines)
    _write_atomic(Path(sweep_dir) / "report.md", text)
    return text
