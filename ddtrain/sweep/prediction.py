"""The probe's outputs: prediction.json (what it measured and predicts per batch size) and its report.md."""

from __future__ import annotations

import json
from pathlib import Path

from ddtrain.fileio import atomic_open
from ddtrain.sweep import predict, timing as timing_mod
from ddtrain.sweep.table import cost, write_text_atomic


def assemble(probe: dict, cfg, world_size: int, engine: str) -> dict:
    """prediction.json's content from Probe.run()'s measurements."""
    from ddtrain.models import model_name
    from ddtrain.runtime.optim import scaled_lr

    b0, scan, parts = probe["b0"], probe["scan"], probe["parts"]
    kappa, rms = probe["kappa"] if probe["kappa"] else (1.0, None)
    s_min, b_crit = predict.knee_from(parts, kappa, b0)
    reached = [(a["batch_size"], a["lr"]) for a in probe["anchors"] if a["lr"]]
    anchor = max(reached) if reached else None  # the largest batch trained from scratch, and its best LR
    per_batch, times = [], {}
    for b in probe["sizes"]:
        entry = probe["timing"]["batch_sizes"].get(str(b), {})
        if entry.get("status") == "oom":
            per_batch.append({"batch_size": b, "status": "oom"})
            continue
        steps = predict.predict_steps(parts, kappa, b0, b)
        lr = predict.lr_from_anchors(b0, scan["lr"], anchor, b_crit, b)
        rule_lr = scaled_lr(cfg.train.lr, b, cfg.train.base_batch_size, cfg.sweep.lr_scaling)
        t = timing_mod.step_time(entry)
        budget = probe["budgets"][b]
        item = {"batch_size": b, "status": "ok" if budget is None or steps <= budget else "over_budget",
                "steps_to_target": steps, "budget_steps": budget, "lr": lr, "rule_lr": rule_lr,
                "rule": predict.rule_outcome(rule_lr, lr, steps, budget),
                "step_time_s": list(t) if t else None, "time_to_target_s": None}
        if t and item["status"] == "ok":
            item["time_to_target_s"] = list(timing_mod.time_to_target((steps, steps, steps), t))
            times[b] = tuple(item["time_to_target_s"])
        per_batch.append(item)
    spot = timing_mod.fastest(times)
    return {
        "title": f"{model_name(cfg.model)} on {cfg.dataset.name}, {world_size} rank(s), engine {engine}",
        "target": cfg.sweep.target, "target_metric": cfg.sweep.target_metric, "world_size": world_size,
        "probe_batch_size": b0, "lr_scaling": cfg.sweep.lr_scaling,
        "scan": {"rule_lr": scan["rule_lr"], "best_lr": scan["lr"], "steps_to_target": probe["s0"],
                 "tried": _tried(scan)},
        "noise": {"windows": probe["windows"], "growth_fit": {"a": probe["fit"][0], "exponent": probe["fit"][1]},
                  "loss_at_target": probe["loss_at_target"], "b_simple_at_target": probe["b_simple_at_target"],
                  "b_simple_at_target_ema": probe["ema_at_target"]},
        "anchors": [{"batch_size": a["batch_size"], "best_lr": a["lr"], "steps_to_target": a["steps"],
                     "predicted_with_kappa": predict.predict_steps(parts, kappa, b0, a["batch_size"]),
                     "tried": _tried(a)} for a in probe["anchors"]],
        "kappa": kappa, "kappa_rms_log_error": rms, "kappa_calibrated": probe["kappa"] is not None,
        "s_min": s_min, "b_crit": b_crit, "per_batch": per_batch,
        "sweet_spot": None if spot is None else {"batch_size": spot["batch_size"], "time_to_target_s": list(spot["time"]),
                                                 "tied": spot["tied"]},
        "rule_fails": [e["batch_size"] for e in per_batch if e.get("rule", {}).get("fails")],
        "cost": cost(probe["rows"], probe["timing"], world_size), "max_samples": cfg.sweep.probe_max_samples,
    }


def _tried(search: dict) -> dict:
    return {f"{lr:.6g}": s for lr, s in search["tried"].items()}


def write_json(prediction: dict, out_dir) -> None:
    """prediction.json, atomically."""
    with atomic_open(Path(out_dir) / "prediction.json", "w") as f:
        json.dump(prediction, f, indent=2)
        f.write("\n")


def _f(x, spec=".3g") -> str:
    return "—" if x is None else format(x, spec)


def report_lines(p: dict) -> list[str]:
    """The probe's paragraph and table for report.md."""
    from ddtrain.sweep.report import cost_line, reach

    n = p["noise"]
    spot = p["sweet_spot"]
    lines = [f"# Probe prediction: {p['title']}", "",
             f"Target: {p['target_metric']} {reach(p['target_metric'])} {p['target']:g}. The probe timed every batch size, "
             "searched the "
             f"learning rate at batch {p['probe_batch_size']} (best {p['scan']['best_lr']:.4g}, rule "
             f"{p['scan']['rule_lr']:.4g}; {p['scan']['steps_to_target']} steps to the target), measured the gradient "
             f"noise scale along that run — B_simple grows as loss^-{n['growth_fit']['exponent']:.2f} and is "
             f"{n['b_simple_at_target']:.4g} at the target (the trainer's moving average there: "
             f"{_f(n['b_simple_at_target_ema'], '.4g')}) — and trained "
             + (", ".join(f"batch {a['batch_size']} from scratch ({_f(a['steps_to_target'], '.0f')} steps to the "
                          f"target, lr {_f(a['best_lr'], '.3g')})" for a in p["anchors"]) or "no large batch")
             + ": "
             + (f"B_noise = {p['kappa']:.2f} × B_simple makes the noise-scale sum meet "
                + ("it" if len(p["anchors"]) == 1 else f"them (rms log error {_f(p['kappa_rms_log_error'], '.2f')})")
                if p["kappa_calibrated"] else "it did not reach the target, so B_noise = B_simple is assumed (uncalibrated)")
             + f". So B_crit = {p['b_crit']:.4g} and S_min = {p['s_min']:.0f} steps.", "",
             "| batch size | predicted steps | step time ms | time to target s | predicted lr | rule's lr | under the rule |",
             "|---:|---:|---:|---:|---:|---:|:---|"]
    for e in p["per_batch"]:
        if e["status"] == "oom":
            lines.append(f"| {e['batch_size']} | — | — | — | — | — | out of memory |")
            continue
        t, tt = e["step_time_s"], e["time_to_target_s"]
        rule = e["rule"]
        fate = ("fails: " + rule["why"]) if rule["fails"] else f"{_f(rule['steps'], '.0f')} steps (×{rule['ratio']:.2f} the best lr)"
        mark = "**" if spot and e["batch_size"] == spot["batch_size"] else ""
        lines.append(f"| {mark}{e['batch_size']}{mark} | {e['steps_to_target']:.0f}"
                     + (" (over budget)" if e["status"] == "over_budget" else "")
                     + f" | {_f(t and 1000 * t[0], '.2f')} | "
                     + (f"{tt[0]:.2f} ({tt[1]:.2f}–{tt[2]:.2f})" if tt else "—")
                     + f" | {e['lr']:.3g} | {e['rule_lr']:.3g} | {fate} |")
    lines += ["", "- **Predicted sweet spot:** " + (f"batch size {spot['batch_size']} "
              f"({spot['time_to_target_s'][0]:.2f} s, {spot['time_to_target_s'][1]:.2f}–{spot['time_to_target_s'][2]:.2f})"
              + (f"; cannot be told apart from {', '.join(map(str, spot['tied']))}" if spot["tied"] else "")
              if spot else "none"),
              f"- **Predicted to fail under the lr_scaling rule:** {', '.join(map(str, p['rule_fails'])) or 'none'}.",
              f"- **Cost of the probe:** {cost_line(p['cost'])}"
              + (f" (budget {p['max_samples']:,.0f} samples)." if p["max_samples"] else "."), "",
              "![Probe prediction](prediction.png)", ""]
    return lines


def write_report(p: dict, out_dir, comparison: list[str] | None = None) -> str:
    """report.md of a probe: its paragraph, and the comparison with a measured sweep when there is one."""
    text = "\n".join(report_lines(p) + (comparison or []))
    write_text_atomic(Path(out_dir) / "report.md", text)
    return text
