"""The probe (ddtrain-sweep sweep.mode=predict): a short measurement that predicts the sweep's answers.

On the real world size and engine, within sweep.probe_max_samples training samples:
1. times every candidate batch size (ddtrain.sweep.timing: t(B) with communication; out-of-memory points);
2. scans the learning rate at a small batch b0 (factors of 2 around the lr_scaling rule, pruned, to the
   target) and reads the best run's gradient noise scale along the way: how B_simple grows as the loss falls;
3. trains one (sweep.probe_anchors) large batch from scratch to the target, about 8 x B_simple at the
   target, with a small learning-rate search: its steps calibrate B_noise = kappa B_simple (ddtrain.sweep.predict)
   and its best learning rate caps the linear rule from b0's;
4. predicts steps to target S(B), time T(B) = S(B) t(B), the sweet spot, the learning rate per batch size
   and which batch sizes fail under the lr_scaling rule: prediction.json, prediction.png, report.md.
A first design calibrated kappa with short branches from a checkpoint of the small run instead; those
branches ran faster than large batches do from scratch (the small batch's weights and momentum are easier
to continue), and put B_crit at 2.3x the tuned knee on MNIST-1D (README). Every rank takes the same
decisions from agreed numbers (steps to target, statuses, rank 0's files).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ddtrain.sweep import predict
from ddtrain.sweep.points import budget_steps
from ddtrain.sweep.runner import point_line, run_point, train_size

log = logging.getLogger("ddtrain")
KAPPA_GUESS = 2.0  # for the anchors' first learning rate only; kappa itself is measured
ANCHOR_AT = 8.0  # the first anchor: about this multiple of B_simple at the target


class Budget:
    """Training samples the probe may still process (sweep.probe_max_samples; 0: no limit)."""

    def __init__(self, max_samples: float):
        self.max, self.spent = float(max_samples), 0

    def cap(self, batch_size: int, cap: int = 0) -> int | None:
        """The stop_after steps for a run: its own cap and what is left; None when nothing is left."""
        if not self.max:
            return cap
        left = int((self.max - self.spent) // batch_size)
        if left < 1:
            return None
        return min(cap, left) if cap else left


def read_records(run_dir: Path, engine) -> list[dict]:
    """The lines of a run's metrics.jsonl, read on rank 0 and broadcast (every rank decides alike)."""
    records = None
    if engine.is_main:
        records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return engine.broadcast_object(records)


class Probe:
    """One probe: its runs, its budget and what it has measured so far."""

    def __init__(self, cfg, session):
        self.cfg, self.session, self.sc = cfg, session, cfg.sweep
        self.out = session.run_dir
        self.engine = session.engine
        self.rows: list[dict] = []
        self.budget = Budget(self.sc.probe_max_samples)
        self.n_train = train_size(cfg)
        self.seed = int(self.sc.seeds[0])

    def trial(self, name: str, batch_size: int, cap: int = 0, **kw) -> dict | None:
        """One run of the probe (skipped when the budget is spent); its row, status pruned when stopped by cap."""
        stop = self.budget.cap(batch_size, cap)
        if stop is None:
            log.warning("probe: budget of %.0f samples spent; %s not run", self.budget.max, name)
            return None
        row = run_point(self.cfg, batch_size, self.seed, self.out, self.session, name=name, train_size=self.n_train,
                        tuned=True, stop_after=stop or 0, **kw)
        if stop and row["status"] == "target_not_reached" and (row.get("steps") or 0) >= stop:
            row["status"] = "pruned"
        row["trial"] = name
        self.rows.append(row)
        self.budget.spent += row["samples"]
        log.info("probe: %s %s", name, point_line(row))
        return row

    def search(self, first: list[float], run_one) -> dict:
        """A pruned learning-rate search: first these, then outwards while the best is at an edge."""
        tried, best_steps = {}, 0
        queue = list(first)
        while queue:
            lr = queue.pop(0)
            row = run_one(lr, best_steps)
            if row is None:
                break
            ok = row["status"] == "ok" and row.get("steps_to_target") is not None
            tried[lr] = row["steps_to_target"] if ok else ("diverged" if row["status"] == "diverged" else None)
            if ok and (not best_steps or row["steps_to_target"] < best_steps):
                best_steps = int(row["steps_to_target"])
            if not queue and (nxt := predict.next_lr(tried)) is not None:
                queue.append(nxt)
        good = {lr: s for lr, s in tried.items() if isinstance(s, (int, float))}
        best = min(good, key=lambda lr: (good[lr], lr)) if good else None
        return {"tried": tried, "lr": best, "steps": good.get(best)}

    def scan(self, b0: int) -> dict:
        """Step 2: the learning-rate search at b0, each run to the target (or pruned)."""
        from ddtrain.runtime.optim import scaled_lr

        rule = scaled_lr(self.cfg.train.lr, b0, self.cfg.train.base_batch_size, self.sc.lr_scaling)

        def keep_last_step(point):  # a checkpoint where the run stops: at the target for the runs that reach it
            point.checkpoint.every_steps, point.checkpoint.keep_last = 10**9, 1

        def one(lr, cap):
            return self.trial(f"probe_scan_bs{b0}_lr{lr:.5g}", b0, cap, lr_factor=lr / rule, edit=keep_last_step)

        return {**self.search(predict.lr_plan(rule), one), "rule_lr": rule}

    def anchor(self, batch_size: int, first: list[float], cap: int) -> dict:
        """Step 3: one batch size from scratch to the target at constant learning rates (a small pruned search)."""
        def one(lr, prune):
            def edit(point):
                tc = point.train
                tc.lr, tc.lr_scaling, tc.base_batch_size = lr, "none", batch_size
                tc.max_steps, tc.noise_scale = cap, False
                tc.eval_every = max(1, cap // self.sc.tune_evals)

            return self.trial(f"probe_anchor_bs{batch_size}_lr{lr:.5g}", batch_size, prune or cap, edit=edit)

        return {"batch_size": batch_size, **self.search(first, one)}

    def run(self) -> dict:
        """All five steps; returns what prediction.assemble needs."""
        from ddtrain.errors import UserError
        from ddtrain.sweep.report import reach
        from ddtrain.sweep.timing import run_timing

        sc = self.sc
        sizes = sorted(dict.fromkeys(int(b) for b in sc.batch_sizes))
        b0 = int(sc.probe_batch_size or (sizes[1] if len(sizes) > 1 else sizes[0]))
        timing = run_timing(self.cfg, self.session, sizes, max(1, sc.timing_rounds), sc.timing_steps,
                            sc.warmup_steps, self.out)
        self.budget.spent += sum(e["samples"] for e in timing["batch_sizes"].values())
        scan = self.scan(b0)
        if scan["lr"] is None:
            raise UserError(f"the probe's runs at batch {b0} did not reach {sc.target_metric} {reach(sc.target_metric)} "
                            f"{sc.target:g} "
                            f"within sweep.budget={sc.budget} (or sweep.probe_max_samples); give them more, "
                            "lower sweep.target or choose another sweep.probe_batch_size")
        s0 = int(scan["steps"])
        records = read_records(self.out / f"probe_scan_bs{b0}_lr{scan['lr']:.5g}", self.engine)
        windows = predict.noise_windows(records, max(1, s0 // 10))
        fit = predict.growth_fit(windows)
        if fit is None:
            raise UserError("the probe measured no usable gradient noise scale (it needs the engine to show each "
                            "rank's gradient: dist.engine=ddp without compression or mpi, or one rank with accumulation)")
        loss_at_target = predict.loss_at(windows, s0)
        b_target = predict.b_simple_at(fit, loss_at_target)
        parts = predict.intervals(records, fit, s0)
        fitting = [b for b in sizes if b > b0 and timing["batch_sizes"].get(str(b), {}).get("status") == "ok"]
        anchors = []
        for b in anchor_sizes(fitting, b_target, sc.probe_anchors):
            # first guess: McCandlish's best learning rate with B_noise = KAPPA_GUESS x B_simple
            guess = predict.best_lr(scan["lr"], b0, predict.knee_from(parts, KAPPA_GUESS, b0)[1], b)
            cap = budget_steps(sc.budget, b, self.n_train, sc.min_steps)
            anchors.append(self.anchor(b, predict.lr_plan(guess), cap))
        kappa = predict.fit_kappa(parts, b0, {a["batch_size"]: a["steps"] for a in anchors if a["steps"]})
        budgets = {b: budget_steps(sc.budget, b, self.n_train, sc.min_steps) for b in sizes}
        return {"b0": b0, "sizes": sizes, "timing": timing, "scan": scan, "s0": s0, "windows": windows, "fit": fit,
                "loss_at_target": loss_at_target, "b_simple_at_target": b_target, "parts": parts,
                "anchors": anchors, "kappa": kappa, "budgets": budgets, "rows": self.rows,
                "ema_at_target": _ema_at_target(self.rows, scan["lr"], b0)}


def _ema_at_target(rows, lr: float, b0: int) -> float | None:
    """The summary's noise_scale_at_target of the best scan run (the trainer's own moving average there)."""
    for r in rows:
        if r["trial"] == f"probe_scan_bs{b0}_lr{lr:.5g}":
            return r.get("noise_scale_at_target")
    return None


def anchor_sizes(candidates: list[int], b_simple: float, count: int) -> list[int]:
    """Up to `count` distinct candidates nearest (in log) to 8, 2, 1/2, ... times B_simple at the target.

    The first anchor sits well past the knee, where steps approach S_min, so it pins the flat end of
    the curve that the small run (the steep end) cannot show.
    """
    picks: list[int] = []
    for k in range(count):
        left = [b for b in candidates if b not in picks]
        if not left:
            break
        aim = ANCHOR_AT / 4.0 ** k * b_simple
        picks.append(min(left, key=lambda b: (abs(math.log(b / aim)), -b)))
    return picks


def run_prediction(cfg, session) -> dict:
    """sweep.mode=predict: run the probe, write prediction.json, prediction.png and report.md; returns the prediction.

    With sweep.compare_to the measured sweep is overlaid and the errors are part of the report (and of
    prediction.json under "comparison").
    """
    from ddtrain.sweep import compare, prediction
    from ddtrain.sweep.predict_plot import plot_prediction

    d = session.engine
    result = Probe(cfg, session).run()
    p = prediction.assemble(result, cfg, d.world_size, d.name)
    if d.is_main:
        comparison = compare.compare(p, cfg.sweep.compare_to) if cfg.sweep.compare_to else None
        if comparison:
            p["comparison"] = comparison
        prediction.write_json(p, session.run_dir)
        plot_prediction(p, session.run_dir / "prediction.png", comparison)
        prediction.write_report(p, session.run_dir, compare.report_lines(comparison) if comparison else None)
        log.info("prediction written to %s (prediction.json, prediction.png, report.md)", session.run_dir)
    return p
