"""The probe's arithmetic: from one small-batch run and a few branches to steps, time and LR at every batch size.

McCandlish et al. 2018 (section 2.2, appendix D): a step at batch B makes the progress of
1 / (1 + B_noise / B) steps at infinite batch, where B_noise is the noise scale at that point of
training, and the best learning rate is eta_max / (1 + B_noise / B). Summed over a run whose noise
scale grows as the loss falls, steps to the target at batch B are

    S(B) = sum over the steps t of the small-batch (b0) run of  (1 + B_noise(t) / B) / (1 + B_noise(t) / b0)
         = S_min (1 + B_crit / B)

with S_min = sum 1 / (1 + B_noise / b0) and B_crit the S_min-weighted mean of B_noise. We measure
B_simple(t) = tr(Sigma) / |G|^2 along the run; McCandlish's B_noise also weighs the curvature and is
not B_simple, so B_noise = kappa B_simple, with kappa calibrated by a large batch trained from scratch
to the target (its steps against the same sum at that batch size). Pure functions of plain numbers.
"""

from __future__ import annotations

import math

KAPPA_RANGE = (1e-2, 1e2)


def noise_windows(records, window_steps: int) -> list[dict]:
    """Consecutive logged intervals pooled until they span window_steps: B_simple = sum tr(Sigma) / sum |G|^2.

    records: the training lines of metrics.jsonl with noise_grad_sq, noise_trace_sigma, noise_steps,
    loss and step. Pooling sums before dividing, as the estimator's EMAs do: one interval's |G|^2
    estimate is noisy and may be negative. Windows whose pooled |G|^2 or tr(Sigma) is <= 0 get
    b_simple None.
    """
    out, acc = [], None
    for r in records:
        n = r.get("noise_steps")
        if not n or r.get("noise_grad_sq") is None or r.get("loss") is None:
            continue
        if acc is None:
            acc = {"start": r["step"] - n, "steps": 0, "g": 0.0, "s": 0.0, "loss": 0.0}
        acc["steps"] += n
        acc["g"] += n * r["noise_grad_sq"]
        acc["s"] += n * r["noise_trace_sigma"]
        acc["loss"] += n * r["loss"]
        if acc["steps"] >= window_steps:
            out.append(_close(acc))
            acc = None
    if acc is not None and acc["steps"] > 0:
        out.append(_close(acc))
    return out


def _close(acc: dict) -> dict:
    ok = acc["g"] > 0 and acc["s"] > 0
    return {"start": acc["start"], "end": acc["start"] + acc["steps"], "loss": acc["loss"] / acc["steps"],
            "b_simple": acc["s"] / acc["g"] if ok else None}


def growth_fit(windows, skip_fraction: float = 0.2) -> tuple[float, float] | None:
    """(a, p) of log B_simple = a - p log(loss), least squares over the windows after the first skip_fraction.

    p says how fast the noise scale grows as the loss falls (McCandlish et al. 2018, fig. 5: B grows
    during training). None with fewer than 2 usable windows or no spread in loss.
    """
    if not windows:
        return None
    end = windows[-1]["end"]
    pts = [(math.log(w["loss"]), math.log(w["b_simple"])) for w in windows
           if w["b_simple"] and w["loss"] > 0 and w["end"] > skip_fraction * end]
    if len(pts) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx <= 0:
        return None
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    return my - slope * mx, -slope


def loss_at(windows, step: float) -> float | None:
    """The training loss at `step`, smoothed: a power law in steps fitted to the windows of the second half.

    One logged interval's loss is a few minibatches' mean, and a window's lags behind its last step;
    the fit through the late windows, read at the last step, is neither.
    """
    pts = [(math.log((w["start"] + w["end"]) / 2), math.log(w["loss"])) for w in windows
           if w["loss"] > 0 and w["end"] > step / 2 and w["start"] + w["end"] > 0]
    if len(pts) < 2:
        return windows[-1]["loss"] if windows else None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    slope = sum((x - mx) * (y - my) for x, y in pts) / sxx if sxx > 0 else 0.0
    return math.exp(my + slope * (math.log(step) - mx))


def b_simple_at(fit: tuple[float, float], loss: float) -> float:
    """B_simple the growth fit gives at a training loss."""
    a, p = fit
    return math.exp(a - p * math.log(loss))


def intervals(records, fit, upto: int, start: int = 0) -> list[tuple[int, float]]:
    """(steps, B_simple) of each logged interval's share of steps [start, upto), B_simple from the growth fit.

    The fit at the interval's training loss smooths the per-interval estimates, too noisy to use one by one.
    """
    out = []
    for r in records:
        n, end = r.get("noise_steps") or 0, r.get("step", 0)
        if not n or r.get("loss") is None or not r["loss"] > 0:
            continue
        lo, hi = max(end - n, start), min(end, upto)
        if hi > lo:
            out.append((hi - lo, b_simple_at(fit, r["loss"])))
    return out


def knee_from(parts, kappa: float, b0: float) -> tuple[float, float]:
    """(S_min, B_crit) of the sum over (steps, B_simple) parts taken at batch b0."""
    weights = [(n / (1.0 + kappa * bs / b0), kappa * bs) for n, bs in parts]
    s_min = sum(w for w, _ in weights)
    return s_min, (sum(w * bn for w, bn in weights) / s_min if s_min > 0 else 0.0)


def predict_steps(parts, kappa: float, b0: float, batch_size: float) -> float:
    """Steps at batch_size to cover what the b0 run covered in these parts (McCandlish's sum, module doc)."""
    return sum(n * (1.0 + kappa * bs / batch_size) / (1.0 + kappa * bs / b0) for n, bs in parts)


def fit_kappa(segment, b0: float, measured: dict) -> tuple[float, float] | None:
    """kappa = B_noise / B_simple that makes the segment's predicted steps match the branches.

    segment: (steps, B_simple) parts of the small run (all of it, or a stretch); measured: {batch size:
    steps to cover the same progress at that batch}. Least squares on log steps
    over a log grid of kappa, refined by golden section. Returns (kappa, rms log error) or None.
    """
    data = [(float(b), float(s)) for b, s in measured.items() if s and s > 0 and b > b0]
    if not data or not segment:
        return None

    def loss(log_k: float) -> float:
        k = math.exp(log_k)
        return sum((math.log(predict_steps(segment, k, b0, b)) - math.log(s)) ** 2 for b, s in data)

    lo, hi = (math.log(v) for v in KAPPA_RANGE)
    grid = [lo + (hi - lo) * i / 400 for i in range(401)]
    best = min(grid, key=loss)
    a, b = max(lo, best - (hi - lo) / 400), min(hi, best + (hi - lo) / 400)
    g = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        c, d = b - g * (b - a), a + g * (b - a)
        if loss(c) < loss(d):
            b = d
        else:
            a = c
    k = (a + b) / 2
    return math.exp(k), math.sqrt(loss(k) / len(data))


def best_lr(lr0: float, b0: float, b_crit: float, batch_size: float) -> float:
    """The learning rate for batch_size, from the best one at b0: eta_max / (1 + B_crit / B) (McCandlish eq. 2.6)."""
    return lr0 * (1.0 + b_crit / b0) / (1.0 + b_crit / batch_size)


def lr_from_anchors(b0: float, lr0: float, anchor: tuple[float, float] | None, b_crit: float,
                    batch_size: float) -> float:
    """The learning rate to use at batch_size: linear from b0's best until it meets the large anchor's best.

    anchor: (batch size, best learning rate) of a large batch, or None; without it McCandlish's
    eta_max / (1 + B_crit / B) through b0's best. The tuned learning rates of the three workloads in
    the README rise linearly and then level off more abruptly than McCandlish's form bends.
    """
    if anchor is None:
        return best_lr(lr0, b0, b_crit, batch_size)
    return min(lr0 * batch_size / b0, anchor[1])


def rule_outcome(rule_lr: float, lr: float, steps: float, budget: float | None) -> dict:
    """What the lr_scaling rule's learning rate does at one batch size, against the predicted best.

    On the quadratic model behind the best LR (McCandlish eq. 2.5), a step at r times the best
    learning rate makes 2r - r^2 of the best step's progress: r >= 2 makes none (the run diverges or
    stalls), otherwise the steps grow by 1 / (2r - r^2) and may exceed the budget.
    """
    r = rule_lr / lr
    gain = 2 * r - r * r
    if gain <= 0:
        return {"ratio": r, "steps": None, "fails": True, "why": f"rule's LR is {r:.1f}x the best: diverges"}
    rule_steps = steps / gain
    if budget is not None and rule_steps > budget:
        return {"ratio": r, "steps": rule_steps, "fails": True,
                "why": f"rule's LR is {r:.2f}x the best: needs {rule_steps:.0f} steps, more than the budget {budget:.0f}"}
    return {"ratio": r, "steps": rule_steps, "fails": False, "why": ""}


def lr_plan(center: float, spread: float = 2.0) -> list[float]:
    """The first learning rates to try around a guess: the guess, then spread below and above."""
    return [center, center / spread, center * spread]


def next_lr(tried: dict, spread: float = 2.0, limit: int = 5) -> float | None:
    """One more learning rate while the best is at an edge of those tried; None when bracketed or at the limit.

    tried: {lr: steps to target, "diverged", or None (missed or pruned)}.
    """
    if len(tried) >= limit:
        return None
    good = {lr: s for lr, s in tried.items() if isinstance(s, (int, float))}
    if not good:
        if not any(s == "diverged" for s in tried.values()):
            return max(tried) * spread  # everything too slow: go higher
        return min(tried) / spread  # some blew up, the rest missed (often unstable without a NaN): go lower
    best = min(good, key=lambda lr: (good[lr], lr))
    if best == min(tried):
        return best / spread
    if best == max(tried):
        return best * spread
    return None
