"""prediction.png: the noise scale's growth, and predicted steps, time and learning rate (measured overlaid)."""

from __future__ import annotations

from pathlib import Path

from ddtrain.fileio import atomic_open
from ddtrain.sweep import predict


def _setup_x(ax, sizes):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("global batch size")
    ax.set_xticks(sizes, [f"{s:g}" for s in sizes])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def plot_prediction(p: dict, path, comparison: dict | None = None) -> None:
    """Write prediction.png for a prediction dict (prediction.assemble) and, optionally, its comparison."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(21, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax_n, ax_s, ax_t, ax_lr = fig.subplots(1, 4)
    fig.suptitle(f"Probe prediction: {p['title']}" + (" — measured overlaid" if comparison else ""))
    ok = [e for e in p["per_batch"] if e["status"] != "oom"]
    sizes = [e["batch_size"] for e in p["per_batch"]]
    measured = {r["batch_size"]: r for r in (comparison or {}).get("per_batch", [])}

    # (1) B_simple against the training loss: the growth the prediction integrates over
    n = p["noise"]
    pts = [(w["loss"], w["b_simple"]) for w in n["windows"] if w["b_simple"] and w["loss"] > 0]
    ax_n.set_xscale("log"), ax_n.set_yscale("log")
    ax_n.set_title(f"noise scale at batch {p['probe_batch_size']}")
    ax_n.set_xlabel("training loss"), ax_n.set_ylabel("B_simple (pooled windows)")
    if pts:
        ax_n.plot(*zip(*pts), "o", label="measured")
        losses = sorted({x for x, _ in pts} | {n["loss_at_target"]})
        fit = (n["growth_fit"]["a"], n["growth_fit"]["exponent"])
        ax_n.plot(losses, [predict.b_simple_at(fit, x) for x in losses], "-", color="black",
                  label=f"fit ∝ loss^-{fit[1]:.2f}")
        ax_n.plot([n["loss_at_target"]], [n["b_simple_at_target"]], "*", color="gold", markersize=14, mec="black",
                  label=f"at target {n['b_simple_at_target']:.3g}")
        ax_n.invert_xaxis()  # training goes left to right
        ax_n.legend(fontsize="small")
    ax_n.grid(True, alpha=0.3)

    # (2) steps to target
    _setup_x(ax_s, sizes)
    ax_s.set_yscale("log")
    ax_s.set_title(f"steps to target (B_crit {p['b_crit']:.3g}, kappa {p['kappa']:.2f})")
    ax_s.plot([e["batch_size"] for e in ok], [e["steps_to_target"] for e in ok], "-", color="tab:blue", label="predicted")
    rule = [(e["batch_size"], e["rule"]["steps"]) for e in ok if not e["rule"]["fails"] and e["rule"]["steps"]]
    if rule:
        ax_s.plot(*zip(*rule), ":", color="tab:orange", label="predicted under the rule")
    fails = [e["batch_size"] for e in ok if e["rule"]["fails"]]
    if fails:
        tr = ax_s.get_xaxis_transform()
        ax_s.plot(fails, [0.05] * len(fails), "x", color="tab:orange", transform=tr, label="rule predicted to fail")
    meas = [(b, r["steps_measured"]) for b, r in sorted(measured.items()) if r["steps_measured"]]
    if meas:
        ax_s.plot(*zip(*meas), "o", color="black", label="measured (tuned)")
    ax_s.legend(fontsize="x-small")

    # (3) time to target
    _setup_x(ax_t, sizes)
    ax_t.set_yscale("log")
    ax_t.set_title("time to target = steps × step time")
    timed = [(e["batch_size"], e["time_to_target_s"]) for e in ok if e["time_to_target_s"]]
    if timed:
        ax_t.errorbar([b for b, _ in timed], [t[0] for _, t in timed], fmt="-", capsize=3, label="predicted",
                      yerr=[[t[0] - t[1] for _, t in timed], [t[2] - t[0] for _, t in timed]])
    if p.get("sweet_spot"):
        s = p["sweet_spot"]
        ax_t.plot([s["batch_size"]], [s["time_to_target_s"][0]], "*", color="gold", markersize=15, mec="black",
                  label=f"predicted sweet spot {s['batch_size']}")
    meas_t = [(b, r["time_measured_s"]) for b, r in sorted(measured.items()) if r["time_measured_s"]]
    if meas_t:
        ax_t.plot(*zip(*meas_t), "o", color="black", label="measured")
    ax_t.legend(fontsize="x-small")

    # (4) learning rate
    _setup_x(ax_lr, sizes)
    ax_lr.set_yscale("log")
    ax_lr.set_title("learning rate")
    ax_lr.plot([e["batch_size"] for e in ok], [e["lr"] for e in ok], "-", label="predicted best")
    ax_lr.plot([e["batch_size"] for e in ok], [e["rule_lr"] for e in ok], "--", color="gray", label="lr_scaling rule")
    meas_lr = [(b, r["lr_measured"]) for b, r in sorted(measured.items()) if r["lr_measured"]]
    if meas_lr:
        ax_lr.plot(*zip(*meas_lr), "o", color="black", label="measured best (tuned)")
    ax_lr.legend(fontsize="x-small")
    with atomic_open(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=100)
