"""The knee of steps to target against batch size: steps(B) = S_min (1 + B_crit / B), with an interval.

McCandlish et al. 2018 (eq. 2.11) and Shallue et al. 2019: with a tuned learning rate, steps to a
result fall as 1/B while B << B_crit (perfect scaling) and level off at S_min for B >> B_crit. The
model is linear in 1/B (steps = a + c / B, a = S_min, c = S_min B_crit), fitted by weighted least
squares on relative residuals, so batch sizes with few steps count as much as those with many.

The interval comes from a bootstrap over seeds: each replicate draws, per batch size, as many seeds
as were run (with replacement), averages them and refits. Pure functions of plain numbers.
"""

from __future__ import annotations

import math
import random
import statistics


def fit_knee(points) -> tuple[float, float] | None:
    """(S_min, B_crit) fitted to (batch size, steps) points; None for < 3 points or a curve the model cannot describe."""
    points = [(float(b), float(s)) for b, s in points if b > 0 and s > 0]
    if len(points) < 3:
        return None
    xs = [1.0 / b for b, _ in points]
    ys = [s for _, s in points]
    ws = [1.0 / (s * s) for s in ys]  # relative residuals: steps span orders of magnitude across a sweep
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


def model_steps(s_min: float, b_crit: float, batch_size: float) -> float:
    """Steps to target the knee model predicts at one batch size."""
    return s_min * (1.0 + b_crit / batch_size)


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile of a non-empty list."""
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def bootstrap_knee(steps_by_batch: dict, replicates: int = 2000, level: float = 0.9, seed: int = 0) -> dict | None:
    """The knee of the per-batch mean steps, with a bootstrap interval over seeds.

    steps_by_batch: {batch size: [steps to target of each seed]}. Returns s_min, b_crit (fit to the
    means), their lo/hi at the given level, the share of replicates the model could fit, and the
    number of seeds; None when the means cannot be fitted.
    """
    groups = {float(b): [float(s) for s in v] for b, v in steps_by_batch.items() if v}
    point = fit_knee((b, statistics.fmean(v)) for b, v in groups.items())
    if point is None:
        return None
    rng = random.Random(seed)
    fits = []
    for _ in range(replicates):
        draw = [(b, statistics.fmean(rng.choices(v, k=len(v)))) for b, v in groups.items()]
        fit = fit_knee(draw)
        if fit is not None:
            fits.append(fit)
    tail = (1.0 - level) / 2
    out = {"s_min": point[0], "b_crit": point[1], "level": level, "fitted_share": len(fits) / replicates,
           "seeds": max(len(v) for v in groups.values()), "batch_sizes": len(groups)}
    if fits and max(len(v) for v in groups.values()) > 1:
        for i, name in enumerate(("s_min", "b_crit")):
            values = [f[i] for f in fits]
            out[f"{name}_lo"], out[f"{name}_hi"] = _quantile(values, tail), _quantile(values, 1 - tail)
    else:  # one seed everywhere: resampling seeds shows nothing
        out.update(s_min_lo=None, s_min_hi=None, b_crit_lo=None, b_crit_hi=None)
    return out
