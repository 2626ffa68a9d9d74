"""The tuned sweep (sweep.tune=true): a learning-rate search per batch size, then repeats of the best setting.

Every trial is a point of its own (a fresh model from the seed, its own run directory named by
ddtrain.sweep.trials.trial_name) that stops at the first evaluation reaching the target; evaluations
come every budget/sweep.tune_evals steps. The rule's trial runs first and unpruned (it is also the
linear-rule curve); every later trial stops once it has used the best trial's steps. Rows land in
sweep.json after every trial, so a rerun keeps the finished trials.
"""

from __future__ import annotations

import logging
import math

from ddtrain.sweep import trials
from ddtrain.sweep.points import budget_steps
from ddtrain.sweep.runner import point_line, run_point

log = logging.getLogger("ddtrain")


def warmup_grid(cfg) -> list:
    """None (the schedule's own warm-up) first, then the extra sweep.tune_warmup_epochs values."""
    own = float(cfg.schedule.warmup_epochs)
    return [None, *(float(w) for w in dict.fromkeys(cfg.sweep.tune_warmup_epochs) if float(w) != own)]


def planned_trials(cfg, batch_size: int, rule_lr: float) -> list[dict]:
    """The search trials of one batch size, in the order they run: the rule's value first, then outwards."""
    out = []
    for warmup in warmup_grid(cfg):
        for factor in trials.search_order(trials.lr_factors(cfg.sweep.tune_lrs, cfg.sweep.tune_lr_span)):
            is_rule = warmup is None and math.isclose(factor, 1.0)
            out.append({"lr_factor": factor, "warmup_epochs": warmup, "role": "rule" if is_rule else "search",
                        "lr": rule_lr * factor})
    return out


def beyond_edge(cfg, group) -> float | None:
    """The next learning-rate factor while the best trial (schedule's own warm-up) sits on the edge of those tried.

    One grid step further each time, at most sweep.tune_extend times (ddtrain.sweep.predict.next_lr:
    nothing reached and everything diverged goes lower, nothing reached and nothing diverged goes higher).
    """
    from ddtrain.sweep.predict import next_lr

    sc = cfg.sweep
    tried = {r["lr_factor"]: (r["steps_to_target"] if trials.reached(r) else
                              ("diverged" if r.get("status") == "diverged" else None))
             for r in group if r.get("role") in trials.SEARCH_ROLES and r.get("warmup_epochs") is None}
    if not tried:
        return None
    step = sc.tune_lr_span ** (1.0 / (sc.tune_lrs - 1)) if sc.tune_lrs > 1 else 2.0
    return next_lr(tried, spread=step, limit=sc.tune_lrs + sc.tune_extend)


def _run_trial(cfg, session, rows, write, batch_size, seed, plan, train_size, stop_after=0) -> dict:
    name = trials.trial_name(batch_size, seed, plan["lr"], plan["warmup_epochs"])
    row = run_point(cfg, batch_size, seed, session.run_dir, session, name=name, train_size=train_size,
                    lr_factor=plan["lr_factor"], warmup_epochs=plan["warmup_epochs"], tuned=True,
                    stop_after=stop_after)
    row.update(trial=name, role=plan["role"], lr_factor=plan["lr_factor"], warmup_epochs=plan["warmup_epochs"])
    if stop_after and row["status"] == "target_not_reached" and (row.get("steps") or 0) >= stop_after:
        row["status"] = "pruned"  # used the best trial's steps without reaching the target: not the minimum
    rows.append(row)
    write(rows)
    log.info("%s lr %.4g (x%.3g) %s", point_line(row), row["lr"] or 0.0, plan["lr_factor"], row["role"])
    return row


def run_tuned(cfg, session, rows: list[dict], train_size: int, write) -> list[dict]:
    """Run every missing trial of every batch size; write(rows) after each. Returns all rows."""
    from ddtrain.runtime.optim import scaled_lr

    sc = cfg.sweep
    seeds = list(dict.fromkeys(sc.seeds))
    done = {r.get("trial") for r in rows}
    for batch_size in dict.fromkeys(sc.batch_sizes):
        group = [r for r in rows if r["batch_size"] == batch_size]
        rule_lr = scaled_lr(cfg.train.lr, batch_size, cfg.train.base_batch_size, sc.lr_scaling)
        budget = budget_steps(sc.budget, batch_size, train_size, sc.min_steps)
        log.info("batch %d: learning rates %s, budget %d steps, evaluation every %d", batch_size,
                 ", ".join(f"{p['lr']:.3g}" for p in planned_trials(cfg, batch_size, rule_lr)[:sc.tune_lrs]),
                 budget, max(1, budget // sc.tune_evals))
        plans = planned_trials(cfg, batch_size, rule_lr)
        while plans:
            plan = plans.pop(0)
            if any(r.get("status") == "oom" for r in group):
                break  # a batch that does not fit, does not fit at any learning rate
            if trials.trial_name(batch_size, seeds[0], plan["lr"], plan["warmup_epochs"]) not in done:
                cap = 0 if plan["role"] == "rule" else (trials.prune_at(group) or 0)
                group.append(_run_trial(cfg, session, rows, write, batch_size, seeds[0], plan, train_size, cap))
            if not plans and (factor := beyond_edge(cfg, group)) is not None:
                plans.append({"lr_factor": factor, "warmup_epochs": None, "role": "search", "lr": rule_lr * factor})
        best = trials.best_trial(group)
        if best is None:
            log.warning("batch %d: no learning rate reached the target; nothing to repeat", batch_size)
            continue
        plan = {"lr_factor": best["lr_factor"], "warmup_epochs": best["warmup_epochs"], "role": "repeat",
                "lr": best["lr"]}
        for seed in seeds[1:]:
            if trials.trial_name(batch_size, seed, plan["lr"], plan["warmup_epochs"]) not in done:
                group.append(_run_trial(cfg, session, rows, write, batch_size, seed, plan, train_size))
    return rows
