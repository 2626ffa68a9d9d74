"""The tuned sweep's bookkeeping, as pure functions of row dicts (Shallue et al. 2019, section 3.4).

Per batch size, a learning-rate search on the first seed: the trial at the lr_scaling rule's value
(role "rule") and the others (role "search"). Steps to target of a batch size is the minimum over its
trials of the first evaluation that reached the target; diverged trials and trials that never reach it
are recorded as such and cannot be the minimum. A trial is stopped once it has used as many steps as
the best trial so far without reaching the target ("pruned"): it cannot be the minimum either. The best
setting is then repeated on the other seeds (role "repeat"); the tuned curve averages those seeds.
"""

from __future__ import annotations

import math

SEARCH_ROLES = ("rule", "search")


def lr_factors(count: int, span: float) -> list[float]:
    """count learning-rate factors, log-spaced over span (max/min), centred on 1 (the rule's value)."""
    if count <= 1:
        return [1.0]
    return [span ** (i / (count - 1) - 0.5) for i in range(count)]


def search_order(factors) -> list[float]:
    """The rule's value first, then outwards: the early trials set the bar that prunes the later ones."""
    return sorted(factors, key=lambda f: (round(abs(math.log(f)), 9), f))


def trial_name(batch_size: int, seed: int, lr: float, warmup_epochs: float | None = None) -> str:
    """The trial's run directory, e.g. bs128_s0_lr0.2 or bs128_s0_lr0.2_w1 (with a warm-up grid)."""
    name = f"bs{batch_size}_s{seed}_lr{lr:.5g}"
    return name if warmup_epochs is None else f"{name}_w{warmup_epochs:g}"


def reached(row: dict) -> bool:
    """This trial reached the target (status ok with a steps-to-target)."""
    return row.get("status") == "ok" and row.get("steps_to_target") is not None


def _closeness(row: dict) -> tuple:
    """Tie-break between equal steps: the factor nearer the rule's value, then the smaller learning rate."""
    factor = row.get("lr_factor") or 1.0
    return abs(math.log(factor)), row.get("lr") or 0.0


def best_trial(rows) -> dict | None:
    """The search trial with the fewest steps to target (min over trials); None if none reached it."""
    found = [r for r in rows if r.get("role") in SEARCH_ROLES and reached(r)]
    return min(found, key=lambda r: (r["steps_to_target"], *_closeness(r))) if found else None


def prune_at(rows) -> int | None:
    """Steps after which a further trial of this batch size stops: the best steps to target so far."""
    best = best_trial(rows)
    return None if best is None else int(best["steps_to_target"])


def same_setting(a: dict, b: dict) -> bool:
    """Same learning rate and warm-up (what a repeat copies from the best trial)."""
    return math.isclose(a.get("lr") or 0.0, b.get("lr") or 0.0, rel_tol=1e-9) and \
        a.get("warmup_epochs") == b.get("warmup_epochs")


def by_batch(rows) -> dict:
    """{batch size: [rows]} in ascending batch size."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(row["batch_size"], []).append(row)
    return dict(sorted(groups.items()))


def tuned_rows(rows) -> list[dict]:
    """Per batch size, the best search trial and the repeats of its setting on the other seeds."""
    out = []
    for group in by_batch(rows).values():
        best = best_trial(group)
        if best is None:
            # no trial reached the target: the rule's trial stands for the batch size (as a miss)
            out += [r for r in group if r.get("role") == "rule"][:1]
            continue
        out.append(best)
        out += [r for r in group if r.get("role") == "repeat" and same_setting(r, best)]
    return out


def rule_rows(rows) -> list[dict]:
    """The trials at the lr_scaling rule's learning rate: the untuned (linear-rule) curve."""
    return [r for r in rows if r.get("role") == "rule"]


def trial_counts(rows) -> dict:
    """Search trials of one batch size by outcome: reached, diverged, not reached, pruned, oom."""
    counts = {"trials": 0, "reached": 0, "diverged": 0, "not_reached": 0, "pruned": 0, "oom": 0}
    for r in rows:
        if r.get("role") not in SEARCH_ROLES:
            continue
        counts["trials"] += 1
        status = r.get("status")
        key = {"ok": "reached", "diverged": "diverged", "pruned": "pruned", "oom": "oom"}.get(status, "not_reached")
        counts[key if status != "ok" or reached(r) else "not_reached"] += 1
    return counts


def steps_by_batch(rows) -> dict:
    """{batch size: [steps to target per seed]} of the tuned setting, for batch sizes where every seed reached it."""
    out = {}
    for b, group in by_batch(tuned_rows(rows)).items():
        if group and all(reached(r) for r in group):
            out[b] = [float(r["steps_to_target"]) for r in group]
    return out
