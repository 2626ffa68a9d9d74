"""The README's batch-size science tables, from results/batch-science/summary.json (benchmarks/batch_science.py).

Pure formatters, as in figure_tables.py: loaded JSON in, markdown out. The summary holds one entry
per workload: the tuned ground truth ("truth"), the probe against it ("per_batch", errors, costs).
"""

from __future__ import annotations

from figure_tables import markdown_table

NAMES = {"mnist1d_cnn": "MNIST-1D CNN", "teacher_student": "teacher-student (softmax regression)",
         "mnist1d_mlp": "MNIST-1D MLP (not used to design the probe)"}


def _f(x, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _workload(summary: list[dict], name: str) -> dict:
    """A workload's first probe run (later runs repeat the probe on the same tuned sweep)."""
    return next(w for w in summary if w["workload"] == name and w.get("probe_run", 1) == 1)


def tuned_truth(summary: list[dict], name: str = "mnist1d_cnn") -> str:
    """The tuned ground truth of one workload: best LR, trials, steps to target over seeds, the rule's steps, time."""
    t = _workload(summary, name)["truth"]
    spot = (t["sweet_spot"] or {}).get("batch_size")
    body = []
    for e in t["per_batch"]:
        c, s, time = e["trials"], e["steps"], e["time_s"]
        rule = _f(e["rule_steps"], ".0f") if e["rule_steps"] is not None else e["rule_status"].replace("_", " ")
        body.append([f"**{e['batch_size']}** (sweet spot)" if e["batch_size"] == spot else str(e["batch_size"]),
                     f"{e['best_lr']:.3g} (×{e['best_factor']:.2f})" if e["best_lr"] else "—",
                     f"{c['reached']} / {c['diverged']} / {c['not_reached']} / {c['pruned']}",
                     f"{s[0]:.0f} ({s[1]:.0f}–{s[2]:.0f})" if s else "not reached",
                     f"{_f(e['rule_lr'], '.3g')}: {rule}",
                     f"{time[0]:.2f} ({time[1]:.2f}–{time[2]:.2f})" if time else "—"])
    return markdown_table(["batch", "best lr (× rule's)", "trials reached / diverged / missed / pruned",
                           f"steps to target, mean (min–max) of {t['seeds']} seeds", "rule's lr: steps",
                           "time to target s (interval)"], "rrrrrr", body)


def probe_against_truth(summary: list[dict], name: str = "mnist1d_cnn") -> str:
    """The probe's predictions per batch size against the tuned sweep's measurements, for one workload."""
    w = _workload(summary, name)
    body = [[str(r["batch_size"]), _f(r["steps_predicted"], ".0f"), _f(r["steps_measured"], ".0f"),
             _f(r["steps_error"] and 100 * r["steps_error"], "+.0f") + "%" if r["steps_error"] is not None else "—",
             _f(r["lr_predicted"], ".3g"), _f(r["lr_measured"], ".3g"),
             f"{'yes' if r['rule_fails_predicted'] else 'no'} / {'yes' if r['rule_fails_measured'] else 'no'}"]
            for r in w["per_batch"]]
    return markdown_table(["batch", "steps predicted", "steps measured (tuned)", "error", "lr predicted",
                           "best lr measured", "fails under the rule: predicted / measured"], "rrrrrrr", body)


def summary_table(summary: list[dict]) -> str:
    """One line per workload: the errors the issue sets targets for, and what the probe cost."""
    body = []
    for w in summary:
        lo, hi = w["b_crit_measured_interval"] or (None, None)
        cr, err = w["cost_ratio"], w["steps_median_abs_error"]
        run = w.get("probe_run", 1)
        body.append([NAMES.get(w["workload"], w["workload"]) + (f", probe run {run}" if run > 1 else ""),
                     f"{100 * err:.0f}% ({w['steps_compared']})" if err is not None else "—",
                     f"{w['sweet_spot_predicted']} / {_f(w['sweet_spot_measured'], 'g')}",
                     f"{w['b_crit_predicted']:.0f} / {_f(w['b_crit_measured'], '.0f')} ({_f(lo, '.0f')}–{_f(hi, '.0f')})",
                     _f(w["b_crit_ratio"], ".2f"), f"{w['kappa']:.2f}",
                     f"{w['rule_fails_agree']} of {w['rule_fails_compared']}",
                     " / ".join(_f(cr[k] and 100 * cr[k], ".1f") + "%" for k in ("samples", "cpu_rank_s", "wall_rank_s"))])
    return markdown_table(["workload", "S(B) median abs error (batch sizes)", "sweet spot predicted / measured",
                           "B_crit predicted / tuned knee (90% interval)", "ratio", "kappa = B_noise / B_simple",
                           "rule failures predicted right", "probe / tuned sweep cost: samples / CPU / wall"],
                          "lrrrrrrr", body)


def quotes(summary: list[dict]) -> list[str]:
    """Phrases of the prose around these tables: the knee, the ratios, costs and the exact noise-scale check."""
    cnn = _workload(summary, "mnist1d_cnn")
    k = cnn["truth"]["knee"]
    out = [f"B_crit = **{k['b_crit']:.0f}** ({k['b_crit_lo']:.0f}–{k['b_crit_hi']:.0f})",
           f"S_min = {k['s_min']:.0f}",
           f"{cnn['truth']['cost']['samples'] / 1e6:.1f} million training samples",
           f"{cnn['truth']['cost']['cpu_rank_s']:.0f} CPU rank-seconds"]
    ts = _workload(summary, "teacher_student")
    if ts.get("exact_b_simple"):
        e = ts["exact_b_simple"]
        out += [f"exactly {e['exact']:.0f}", f"the probe's {e['probe_at_target']:.0f}",
                f"{abs(100 * e['probe_at_target_error']):.1f}% {'low' if e['probe_at_target_error'] < 0 else 'high'}",
                f"says {e['probe_ema']:.0f} there", f"alone says {e['probe_last_window']:.0f}",
                f"B_crit {ts['b_crit_predicted']:.0f} against a knee of {ts['b_crit_measured']:.0f}"]
    return out
