"""Framework-overhead benchmark: ddtrain-train against a minimal hand-written DDP loop (handloop.py).

For each case (MLP 784-1024-1024-10 and LeNet-5 1x28x28 on synthetic data, world sizes 1 and 2 on
gloo) both programs train the same model on the same data with the same global batch, warm-up
and number of timed steps. They run alternately in ABBA order (repeat 0: ddtrain, hand; repeat 1:
hand, ddtrain; ...), so slow drift of a shared machine hits both alike. The figures of merit are
the medians over repeats of two per-pair ratios (target >= 0.99 for both):

- wall: ddtrain samples/s / hand-loop samples/s over the steady-state window;
- cpu: hand-loop CPU time per steady-state step / ddtrain's (rank 0's process: user + sys, all
  threads). Other work on a shared machine stretches wall-clock time a lot and CPU time little,
  so this one shows the 1% that the wall-clock ratio cannot.

    python benchmarks/overhead.py                   # full: 3 repeats, ~6-8 minutes on 2 cores
    python benchmarks/overhead.py --quick           # 1 repeat, short runs: a smoke test
    python benchmarks/overhead.py --repeats 5 --out /tmp/overhead.json --cases mlp-1,lenet5-2

A run of every case at full length writes results/overhead-cpu.json, the README's recorded
figures (`make figures` turns it into the README's table); --quick, --cases, --steps-scale or
--hand-args write to outputs/benchmarks/ instead, unless --out says where.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE))
from recorded import default_out, written  # noqa: E402

# name -> (ddtrain overrides, handloop arguments); timed steps per world size (about 5-8 s each on 2 cores)
MODELS = {
    "mlp": (["model=mlp", "model.hidden_sizes=[1024,1024]", "dataset.shape=[784]"],
            ["--model", "mlp", "--hidden-sizes", "1024,1024", "--shape", "784"]),
    "lenet5": (["model=lenet5", "dataset.shape=[1,28,28]"],
               ["--model", "lenet5", "--shape", "1,28,28"]),
    # almost no work per step: the difference of the two programs' step times is ddtrain's own per-step cost
    "tiny": (["model=mlp", "model.hidden_sizes=[]", "dataset.shape=[8]"],
             ["--model", "mlp", "--hidden-sizes", "", "--shape", "8"]),
}
CASES = ("mlp", "lenet5")  # the table's rows; "tiny" only measures the per-step cost
STEPS = {("mlp", 1): 600, ("mlp", 2): 400, ("lenet5", 1): 500, ("lenet5", 2): 500, ("tiny", 1): 3000,
         ("tiny", 2): 3000}
GLOBAL_BATCH, WARMUP, NUM_SAMPLES, NUM_TEST, LR, SEED = 128, 30, 8192, 256, 0.05, 0  # LeNet does not learn at 0.2


def executable(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, program: list[str], python: bool) -> list[str]:
    """One process directly, or torchrun with `world` local ranks on a free port."""
    if world == 1:
        return ([sys.executable] if python else []) + program
    return [executable("torchrun"), "--nproc-per-node", str(world), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port())] + ([] if python else ["--no-python"]) + program


def env_for(world: int, threads: int | None = None) -> dict:
    """The same thread settings for both programs: each rank gets `threads` intra-op threads (default
    cores // world)."""
    env = dict(os.environ)
    cores = len(os.sched_getaffinity(0))
    threads = str(threads or max(1, cores // world))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONWARNINGS="ignore")
    env.pop("DDTRAIN_TRACEBACK", None)
    return env


def ddtrain_overrides(model: str, steps: int, warmup: int, run_dir: Path) -> list[str]:
    """ddtrain-train's overrides for one benchmark case: synthetic data, SGD, no evaluation or checkpoints."""
    return MODELS[model][0] + [
        "dataset=synthetic", f"dataset.num_samples={NUM_SAMPLES}", f"dataset.num_test_samples={NUM_TEST}",
        "dataset.val_fraction=0", f"train.global_batch_size={GLOBAL_BATCH}", f"train.base_batch_size={GLOBAL_BATCH}",
        f"train.lr={LR}", f"train.seed={SEED}", f"train.max_steps={warmup + steps}",
        f"train.throughput_warmup_steps={warmup}", "train.log_every=1000000000",
        "logging.progress=false", "logging.tensorboard=false", "checkpoint.every_steps=0", "checkpoint.resume=never",
        "optimizer=sgd", "optimizer.momentum=0.9", "optimizer.weight_decay=0", "schedule=constant",
        f"hydra.run.dir={run_dir}",
    ]


def run_ddtrain(model: str, world: int, steps: int, warmup: int, workdir: Path, tag: str,
                threads: int | None = None) -> dict:
    run_dir = workdir / f"ddtrain-{tag}"
    overrides = ddtrain_overrides(model, steps, warmup, run_dir)
    cmd = launch(world, [executable("ddtrain-train")] + overrides, python=False)
    _check(subprocess.run(cmd, env=env_for(world, threads), cwd=workdir, capture_output=True, text=True), cmd)
    summary = json.loads((run_dir / "summary.json").read_text())
    intervals = summary.get("steady_intervals")
    if intervals not in (None, 1):  # train.log_every is huge: warm-up end and last step are the only sync points
        print(f"warning: ddtrain timed {intervals} steady-state intervals instead of 1", file=sys.stderr)
    return {"samples_per_s": summary["samples_per_s"], "step_time_ms_median": summary["step_time_ms_median"],
            "cpu_ms_per_step": summary["cpu_ms_per_step"], "world_size": summary["world_size"],
            "final_loss": summary["final_train_loss"]}


def hand_args(model: str, steps: int, warmup: int, out: Path) -> list[str]:
    """handloop.py's arguments for one benchmark case (the same work as ddtrain_overrides)."""
    return MODELS[model][1] + [
        "--num-samples", str(NUM_SAMPLES), "--num-test-samples", str(NUM_TEST),
        "--global-batch-size", str(GLOBAL_BATCH), "--warmup-steps", str(warmup), "--steps", str(steps),
        "--lr", str(LR), "--seed", str(SEED), "--out", str(out)]


def run_hand(model: str, world: int, steps: int, warmup: int, workdir: Path, tag: str, extra=(),
             threads: int | None = None) -> dict:
    out = workdir / f"hand-{tag}.json"
    args = hand_args(model, steps, warmup, out) + list(extra)
    cmd = launch(world, [str(HERE / "handloop.py")] + args, python=True)
    _check(subprocess.run(cmd, env=env_for(world, threads), cwd=workdir, capture_output=True, text=True), cmd)
    r = json.loads(out.read_text())
    return {k: r[k] for k in ("samples_per_s", "step_time_ms_median", "cpu_ms_per_step", "world_size", "final_loss")}




def abba_pair(r: int, model: str, world: int, steps: int, warmup: int, workdir: Path, threads: int | None,
              hand_extra=()) -> tuple[tuple[str, str], dict]:
    """Repeat r of a case: both programs, ddtrain first on even repeats and the hand loop first on odd ones
    (ABBA); returns the order and {"ddtrain": ..., "hand": ...}."""
    order = ("ddtrain", "hand") if r % 2 == 0 else ("hand", "ddtrain")
    tag, got = f"{model}-{world}-{r}", {}
    for who in order:
        got[who] = (run_ddtrain(model, world, steps, warmup, workdir, tag, threads) if who == "ddtrain" else
                    run_hand(model, world, steps, warmup, workdir, tag, hand_extra, threads))
    return order, got


def extra_cost_ms(world: int, warmup: int, repeats: int, workdir: Path, threads: int | None) -> dict:
    """ddtrain's per-step cost beyond the hand loop's, in ms: on the tiny model (one 8x10 linear layer, so a
    step is mostly each program's own per-step work), the median over ABBA pairs of the difference of the
    two programs' median step times. A difference of times a few hundred microseconds long, which noise
    that stretches every step by a few percent moves by microseconds only."""
    diffs = []
    for r in range(repeats):
        _, got = abba_pair(r, "tiny", world, STEPS["tiny", world], warmup, workdir, threads)
        diffs.append(got["ddtrain"]["step_time_ms_median"] - got["hand"]["step_time_ms_median"])
        print(f"  tiny   world {world} repeat {r}: step ms ddtrain {got['ddtrain']['step_time_ms_median']:.3f} "
              f"hand {got['hand']['step_time_ms_median']:.3f}", flush=True)
    return {"extra_ms_per_step": statistics.median(diffs), "extra_ms_min": min(diffs), "extra_ms_max": max(diffs)}


def _check(proc: subprocess.CompletedProcess, cmd: list[str]) -> None:
    if proc.returncode != 0:
        sys.stderr.write(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}\n")
        sys.exit(1)


def main() -> None:
    p = argparse.ArgumentParser(description="ddtrain vs a hand-written DDP loop: throughput ratio")
    p.add_argument("--quick", action="store_true", help="1 repeat and a quarter of the steps (smoke test)")
    p.add_argument("--repeats", type=int, default=None, help="ABBA repeats per case (default 3; 1 with --quick)")
    p.add_argument("--cases", default="", help="comma-separated subset, e.g. mlp-1,lenet5-2")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiply every case's timed steps")
    p.add_argument("--hand-args", default="",
                   help="extra handloop.py flags, e.g. --hand-args='--bucket-view --gather getitem'")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per rank for both programs (default: cores // world size); 1 keeps "
                        "OpenMP's spin-waiting out of the CPU-time figure")
    p.add_argument("--out", type=Path, help="where the table goes as JSON (default: results/overhead-cpu.json for "
                   "every case at full length, else outputs/benchmarks/overhead-cpu.json)")
    a = p.parse_args()
    repeats = a.repeats or (1 if a.quick else 3)
    scale = a.steps_scale * (0.25 if a.quick else 1.0)
    warmup = 10 if a.quick else WARMUP
    wanted = set(filter(None, a.cases.split(",")))
    cases = [(m, w) for m in CASES for w in (1, 2) if not wanted or f"{m}-{w}" in wanted]

    cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} on {cores} core(s) before starting: other work competes for "
              "the cores and the ratios will be noisy", flush=True)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ddtrain-overhead-") as tmp:
        workdir = Path(tmp)
        for model, world in cases:
            steps = max(20, round(STEPS[(model, world)] * scale))
            pairs = []
            for r in range(repeats):
                order, got = abba_pair(r, model, world, steps, warmup, workdir, a.threads, a.hand_args.split())
                ratio = got["ddtrain"]["samples_per_s"] / got["hand"]["samples_per_s"]
                step_ratio = got["hand"]["step_time_ms_median"] / got["ddtrain"]["step_time_ms_median"]
                cpu_ratio = got["hand"]["cpu_ms_per_step"] / got["ddtrain"]["cpu_ms_per_step"]
                pairs.append({"order": list(order), "ddtrain": got["ddtrain"], "hand": got["hand"], "ratio": ratio,
                              "step_ratio": step_ratio, "cpu_ratio": cpu_ratio, "load_average": os.getloadavg()[0]})
                print(f"  {model:6s} world {world} repeat {r} ({order[0]} first): ddtrain "
                      f"{got['ddtrain']['samples_per_s']:8.0f}  hand {got['hand']['samples_per_s']:8.0f}  "
                      f"ratio {ratio:.3f}  step-median ratio {step_ratio:.3f}  cpu ratio {cpu_ratio:.3f}  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
            ratios = [pp["ratio"] for pp in pairs]
            rows.append({
                "case": model, "world_size": world, "global_batch_size": GLOBAL_BATCH, "warmup_steps": warmup,
                "steps": steps, "repeats": repeats,
                "ddtrain_samples_per_s": statistics.median(pp["ddtrain"]["samples_per_s"] for pp in pairs),
                "hand_samples_per_s": statistics.median(pp["hand"]["samples_per_s"] for pp in pairs),
                "ddtrain_step_ms_median": statistics.median(pp["ddtrain"]["step_time_ms_median"] for pp in pairs),
                "hand_step_ms_median": statistics.median(pp["hand"]["step_time_ms_median"] for pp in pairs),
                "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                "step_ratio": statistics.median(pp["step_ratio"] for pp in pairs),
                "ddtrain_cpu_ms_per_step": statistics.median(pp["ddtrain"]["cpu_ms_per_step"] for pp in pairs),
                "hand_cpu_ms_per_step": statistics.median(pp["hand"]["cpu_ms_per_step"] for pp in pairs),
                "cpu_ratio": statistics.median(pp["cpu_ratio"] for pp in pairs),
                "cpu_ratio_min": min(pp["cpu_ratio"] for pp in pairs),
                "cpu_ratio_max": max(pp["cpu_ratio"] for pp in pairs),
                "pairs": pairs,
            })
        # at least 5 pairs: a tiny step is short, and at 2 ranks mostly gloo's latency, which varies
        extra = {w: extra_cost_ms(w, warmup, max(repeats, 5), workdir, a.threads)
                 for w in sorted({w for _, w in cases})}
        for row in rows:
            row.update(extra[row["world_size"]])
            # the hand loop's step with ddtrain's own per-step cost added
            row["cost_ratio"] = row["hand_step_ms_median"] / (row["hand_step_ms_median"]
                                                               + max(0.0, row["extra_ms_per_step"]))

    header = (f"{'case':8s} {'world':>5s} {'ddtrain/s':>10s} {'hand/s':>10s} {'ratio':>6s} {'spread':>13s} "
              f"{'step ms dd/hand':>16s} {'step ratio':>10s} {'cpu ms dd/hand':>15s} {'cpu ratio':>9s} {'spread':>13s} "
              f"{'extra ms':>8s} {'cost ratio':>10s}")
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['case']:8s} {row['world_size']:5d} {row['ddtrain_samples_per_s']:10.0f} "
              f"{row['hand_samples_per_s']:10.0f} {row['ratio']:6.3f} "
              f"{row['ratio_min']:6.3f}-{row['ratio_max']:.3f} "
              f"{row['ddtrain_step_ms_median']:8.2f}/{row['hand_step_ms_median']:<7.2f} {row['step_ratio']:10.3f} "
              f"{row['ddtrain_cpu_ms_per_step']:7.2f}/{row['hand_cpu_ms_per_step']:<7.2f} {row['cpu_ratio']:9.3f} "
              f"{row['cpu_ratio_min']:6.3f}-{row['cpu_ratio_max']:.3f} {row['extra_ms_per_step']:8.3f} "
              f"{row['cost_ratio']:10.4f}")
    worst = min(row["ratio"] for row in rows)
    worst_cpu = min(row["cpu_ratio"] for row in rows)
    worst_cost = min(row["cost_ratio"] for row in rows)
    print(f"worst median ratio {worst:.3f}, worst median CPU-time ratio {worst_cpu:.3f}, worst per-step-cost ratio "
          f"{worst_cost:.4f} (target >= 0.99); "
          f"{time.perf_counter() - t0:.0f} s in all; load average now {os.getloadavg()[0]:.2f}")
    result = {"target": 0.99, "worst_ratio": worst, "worst_cpu_ratio": worst_cpu, "worst_cost_ratio": worst_cost,
              "cpu_count": cores,
              "load_average_at_start": load,
              "hand_args": a.hand_args, "threads_per_rank": a.threads or "cores // world size",
              "rows": rows}
    out = a.out or default_out("overhead-cpu.json", recorded=not (a.quick or a.cases or a.hand_args
                                                                    or a.steps_scale != 1.0))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(written(out))


if __name__ == "__main__":
    main()
