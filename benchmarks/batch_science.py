"""Batch-size science on 2 CPU ranks: the tuned ground truth and the probe's prediction, per workload.

    python benchmarks/batch_science.py [--workloads mnist1d_cnn,teacher_student,mnist1d_mlp]
                                       [--work /tmp/batch-science] [--results results/batch-science]

For each workload: the tuned sweep (ddtrain-sweep experiment=<its config>, resumed when its directory
exists), then the probe, unchanged across workloads (sweep.mode=predict with 2 timing rounds of 5 steps,
compared with the tuned sweep through sweep.compare_to). For the teacher-student
workload, B_simple is also computed exactly where the probe's small run reached the target
(benchmarks/exact_noise.py, from that run's checkpoint).
The artefacts (sweep.json/csv, timing.json, report.md, sweep.png, prediction.json, prediction.png) are
copied to <results>/<workload>/ and the error table to <results>/summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKLOADS = {
    "mnist1d_cnn": "mnist1d_cnn_tuned_cpu",
    "teacher_student": "teacher_student_tuned_cpu",
    "mnist1d_mlp": "mnist1d_mlp_tuned_cpu",
}
# the same for every workload: 2 timing rounds of 5 steps after 2 warm-up steps
PROBE = ["sweep.mode=predict", "sweep.timing_rounds=2", "sweep.timing_steps=5", "sweep.warmup_steps=2"]
TEACHER = ["dataset=synthetic", "dataset.shape=[16]", "dataset.num_classes=8", "dataset.num_samples=20000",
           "dataset.num_test_samples=2000"]


def sweep(args: list[str], cache: Path) -> None:
    """ddtrain-sweep under mpirun -np 2 (stops the benchmark if it fails)."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [str(BIN / "mpirun"), "-np", "2", "--oversubscribe", "--bind-to", "none", str(BIN / "ddtrain-sweep"),
           f"dataset.cache_dir={cache}", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def exact_check(probe_dir: Path, prediction: dict) -> dict:
    """The probe's B_simple at the target against the exact one at its best scan run's checkpoint there."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from exact_noise import at_checkpoint

    from ddtrain.sweep import predict

    b0, s0, lr = prediction["probe_batch_size"], prediction["scan"]["steps_to_target"], prediction["scan"]["best_lr"]
    exact = at_checkpoint(probe_dir / f"probe_scan_bs{b0}_lr{lr:.5g}" / "checkpoints" / f"step_{s0:08d}.pt", TEACHER)
    fit = (prediction["noise"]["growth_fit"]["a"], prediction["noise"]["growth_fit"]["exponent"])
    last = prediction["noise"]["windows"][-1]
    out = {"step": s0, "exact": exact["b_simple"], "exact_loss": exact["loss"],
           "probe_at_target": prediction["noise"]["b_simple_at_target"],
           "probe_fit_at_exact_loss": predict.b_simple_at(fit, exact["loss"]),
           "probe_last_window": last["b_simple"], "probe_ema": prediction["noise"]["b_simple_at_target_ema"]}
    for key in ("probe_at_target", "probe_fit_at_exact_loss", "probe_last_window", "probe_ema"):
        out[key + "_error"] = None if not out[key] else out[key] / exact["b_simple"] - 1
    return out


def truth(tuned: Path) -> dict:
    """The tuned sweep's figures the README shows: per batch size, the knee, the sweet spot and the cost."""
    from ddtrain.sweep import report, timing, trials
    from ddtrain.sweep.table import by_batch

    rows, timed = report.read_rows(tuned), timing.read_timing(tuned)
    steps, times = report.steps_by_batch(rows), report.times(rows, timed)
    per_batch = []
    for b, group in by_batch(rows).items():
        best, rule = trials.best_trial(group), trials.rule_rows(group)
        s = steps.get(float(b))
        per_batch.append({
            "batch_size": b, "best_lr": best and best["lr"], "best_factor": best and best["lr_factor"],
            "trials": trials.trial_counts(group), "steps": s and [sum(s) / len(s), min(s), max(s)],
            "rule_lr": rule[0]["lr"] if rule else None,
            "rule_steps": rule[0]["steps_to_target"] if rule and trials.reached(rule[0]) else None,
            "rule_status": rule[0]["status"] if rule else None, "time_s": times.get(float(b))})
    spot = report.sweet_spot(rows, timed)
    return {"per_batch": per_batch, "knee": report.knee_interval(rows), "b_simple_at_target": report.noise_at_target(rows),
            "sweet_spot": spot and {"batch_size": spot["batch_size"], "tied": spot["tied"]},
            "cost": report.cost(rows, timed), "seeds": len({r["seed"] for r in rows})}


def summary_row(name: str, tuned: Path, prediction: dict, exact: dict | None) -> dict:
    c = prediction["comparison"]
    return {"workload": name, "title": prediction["title"], "target": prediction["target"],
            "steps_median_abs_error": c["steps_median_abs_error"], "steps_compared": c["steps_compared"],
            "sweet_spot_predicted": c["sweet_spot_predicted"], "sweet_spot_measured": c["sweet_spot_measured"],
            "b_crit_predicted": c["b_crit_predicted"], "b_crit_measured": c["b_crit_measured"],
            "b_crit_measured_interval": c["b_crit_measured_interval"], "b_crit_ratio": c["b_crit_ratio"],
            "kappa": prediction["kappa"], "b_simple_at_target": prediction["noise"]["b_simple_at_target"],
            "growth_exponent": prediction["noise"]["growth_fit"]["exponent"],
            "probe_batch_size": prediction["probe_batch_size"], "anchors": prediction["anchors"],
            "rule_fails_agree": c["rule_fails_agree"], "rule_fails_compared": c["rule_fails_compared"],
            "per_batch": c["per_batch"], "cost_ratio": c["cost_ratio"], "probe_cost": prediction["cost"],
            "sweep_cost": c["measured_cost"], "truth": truth(tuned), "exact_b_simple": exact}


def markdown(rows: list[dict]) -> str:
    f = lambda x, s: "—" if x is None else format(x, s)  # noqa: E731
    lines = ["| workload | S(B) median abs error | sweet spot pred / meas | B_crit pred / meas (interval) | kappa "
             "| rule fails right | probe cost / sweep (samples, CPU rank-s, wall rank-s) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lo, hi = r["b_crit_measured_interval"] or (None, None)
        cr = r["cost_ratio"]
        err = r["steps_median_abs_error"]
        lines.append(f"| {r['workload']} | {f(err and 100 * err, '.0f')}% ({r['steps_compared']} batch sizes) | "
                     f"{r['sweet_spot_predicted']} / {f(r['sweet_spot_measured'], 'g')} | "
                     f"{r['b_crit_predicted']:.0f} / {f(r['b_crit_measured'], '.0f')} ({f(lo, '.0f')}–{f(hi, '.0f')}) | "
                     f"{r['kappa']:.2f} | {r['rule_fails_agree']}/{r['rule_fails_compared']} | "
                     f"{f(cr['samples'], '.1%')}, {f(cr['cpu_rank_s'], '.1%')}, {f(cr['wall_rank_s'], '.1%')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/batch-science"))
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "batch-science")
    parser.add_argument("--no-run", action="store_true", help="only copy the artefacts and write the summary")
    parser.add_argument("--probe-runs", type=int, default=1,
                        help="run the probe this many times (probe, probe-2, ...): its run-to-run spread")
    parser.add_argument("--reuse-probes", action="store_true", help="keep probe directories that have a prediction")
    args = parser.parse_args()
    cache = args.work / "cache"
    rows = []
    for name in args.workloads.split(","):
        tuned = args.work / name / "tuned"
        probes = [args.work / name / ("probe" if k == 0 else f"probe-{k + 1}") for k in range(args.probe_runs)]
        if not args.no_run:
            sweep([f"experiment={WORKLOADS[name]}", f"hydra.run.dir={tuned}"], cache)
        for probe in probes:
            if args.no_run or (args.reuse_probes and (probe / "prediction.json").is_file()):
                continue
            if probe.exists():
                shutil.rmtree(probe)  # the probe starts afresh (its cost is part of the figure)
            sweep([f"experiment={WORKLOADS[name]}", *PROBE, f"sweep.compare_to={tuned}", f"hydra.run.dir={probe}"],
                  cache)
        out = args.results / name
        out.mkdir(parents=True, exist_ok=True)
        for f in ("sweep.json", "sweep.csv", "timing.json", "report.md", "sweep.png"):
            shutil.copy(tuned / f, out / f)
        for k, probe in enumerate(probes):
            if not (probe / "prediction.json").is_file():
                continue
            suffix = "" if k == 0 else f"-{k + 1}"
            prediction = json.loads((probe / "prediction.json").read_text())
            exact = exact_check(probe, prediction) if name == "teacher_student" else None
            for f in ("prediction.json", "prediction.png"):
                shutil.copy(probe / f, out / f.replace(".", f"{suffix}.", 1))
            shutil.copy(probe / "report.md", out / f"prediction{suffix}.md")
            rows.append({**summary_row(name, tuned, prediction, exact), "probe_run": k + 1})
            print(markdown(rows[-1:]), flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.results / "summary.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
